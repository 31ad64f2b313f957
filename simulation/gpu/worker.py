"""What a GPU worker runs: one task simulates a whole batch of simulations on its worker's GPU.

A GPU worker is a dask worker with the resource GPU=1 that sees one device (the local cluster
pins each worker with CUDA_VISIBLE_DEVICES, see simulation.cluster). It builds the NEURON cell
once, exports it to the engine once, and then, per task:

    draw every simulation's inputs from (master seed, i) on a pool of CPU threads
    -> one engine run for the whole batch -> one result dict per simulation (tasks.result_dict)

so the GPU integrates thousands of cells at once while the dask loop writes shards as usual.
The master seeds of one batch may differ: the test splits of several datasets share a batch
(parallel.generate_datasets), since a batch of 768 cells takes little longer than one of 128.
Drawing a 6-s raster takes about half a second of a core (two FFT smoothings, four random
matrices), minutes for a batch of thousands, so while the GPU integrates one batch the pool
already draws the batch the driver expects this worker to take next (`prefetch`). The draws
are pure functions of (master seed, i): a prefetch that goes unused is only wasted CPU time.
A worker's first task starts its draws before it exports the cell and compiles the kernel
(NVRTC), so the two overlap.
A simulation's result does not depend on its batch (tests/test_gpu_engine_cuda.py), so a
dataset is the same whatever the number of GPUs or the batch size.
"""

from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np

from common.machine import available_cores

from ..config import SimulationConfig

_cached: tuple[tuple, object] | None = None
_draw_pool: ThreadPoolExecutor | None = None
# inputs being drawn ahead for the next task: (the inputs table, master seed, simulation index) -> its draw
_prefetched: dict[tuple, Future] = {}


def get_engine(config: SimulationConfig, morphology: str | Path):
    """This process's engine for `config`, built on first use (the cell from NEURON, then exported)."""
    global _cached
    from ..run import get_simulator
    from .engine import GPUEngine
    from .export import export_cell

    key = (config.cell, config.synapses, config.solver, config.recording, str(Path(morphology).resolve()))
    if _cached is None or _cached[0] != key:
        _cached = None
        simulator = get_simulator(config, morphology)
        engine = GPUEngine(export_cell(simulator), config.solver, config.recording,
                           backend=config.solver.gpu_backend, cpu_threads=available_cores())  # the CPU twin's threads
        _cached = (key, engine)
    return _cached[1]


def _results(engine, indices, events, packed_inputs) -> list[dict]:
    from ..tasks import result_dict

    started = time.perf_counter()
    outputs = engine.run(events)
    seconds = (time.perf_counter() - started) / len(indices)  # device time, shared evenly
    return [result_dict(i, out, seconds, packed) for i, out, packed in zip(indices, outputs, packed_inputs)]


def _pool() -> ThreadPoolExecutor:
    global _draw_pool
    if _draw_pool is None:  # numpy's generators, FFTs and matrix products release the GIL
        _draw_pool = ThreadPoolExecutor(available_cores(), thread_name_prefix="draw-inputs")
    return _draw_pool


def simulate_seeded_batch(config: SimulationConfig, morphology: str, simulations: tuple[tuple[int, int], ...],
                          prefetch: tuple[tuple[int, int], ...] = ()) -> list[dict]:
    """Draw the inputs of every simulation (master seed, i) from SeedSequence([seed, i]), simulate them all at once.

    The inputs of `prefetch` (the batch this worker is expected to take next) are drawn on the
    CPU threads while the GPU integrates this batch. `config` gives the cell and the input
    statistics; its own [dataset] seed is not read.
    """
    from ..inputs import generate_input_spikes, simulation_rng
    from ..run import get_simulator
    from .engine import EventList

    segments = get_simulator(config, morphology).segments
    statistics = repr(config.inputs)

    def draw(seed, i):
        raster = generate_input_spikes(config.inputs, segments.length_um, segments.is_basal, simulation_rng(seed, i))
        return EventList.from_raster(raster), np.packbits(raster, axis=-1)

    ahead = dict(_prefetched)
    _prefetched.clear()
    futures = [ahead.pop((statistics, seed, i), None) or _pool().submit(draw, seed, i) for seed, i in simulations]
    for unused in ahead.values():  # drawn for a batch another worker took
        unused.cancel()
    # the first task of a worker exports the cell and compiles the kernel while the pool draws
    engine = get_engine(config, morphology)
    drawn = [future.result() for future in futures]
    for seed, i in prefetch:
        _prefetched[(statistics, seed, i)] = _pool().submit(draw, seed, i)
    return _results(engine, [i for _, i in simulations], [d[0] for d in drawn], [d[1] for d in drawn])


def simulate_given_batch(config: SimulationConfig, morphology: str, rows: tuple[int, ...],
                         packed_inputs: list[np.ndarray], duration_ms: int) -> list[dict]:
    """Simulate given (bit-packed) input rasters, all at once."""
    from .engine import EventList

    engine = get_engine(config, morphology)
    events = [EventList.from_raster(np.unpackbits(p, axis=-1, count=duration_ms).astype(bool)) for p in packed_inputs]
    return _results(engine, rows, events, [None] * len(rows))
