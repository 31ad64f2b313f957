"""What runs on a dask worker: build the cell once, simulate, return compact results.

A task simulates a list of simulations and returns one result dict per simulation, in the
order of its `simulation_indices` (see `result_dict`). On the CPU engines a task is one
simulation: a 6-s simulation takes 20-65 s of one core (bench/simulation_speed.py), so
per-simulation tasks keep every worker busy until the last minute whatever the worker count,
and a lost worker costs one simulation, not a shard. An engine that simulates many cells at
once (a GPU) gives a task many indices; the driver (simulation.parallel) does not care.

What travels. A worker returns its input raster bit-packed (np.packbits: 1278 x 6000 bits =
0.96 MB instead of 7.7 MB of bools) with the 1-ms traces. (Packing and unpacking a 6-s raster
took 8 ms here; regenerating it on the client from the seed instead took 0.6 s and would
need the segment table there too.)

Tasks are pickled by reference (`simulation.tasks.run_task`), so every worker needs this
project installed (docs/cluster.md).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .config import SimulationConfig

# Every task key starts with this word: dask groups tasks by it, and a group much larger
# than the cluster is queued on the scheduler and handed out one task per free thread.
TASK_PREFIX = "l5pc_simulation"


@dataclass(frozen=True)
class Task:
    """One unit of work for a worker: `function(*args)` returns one result dict per simulation index."""

    simulation_indices: tuple[int, ...]
    function: Callable[..., list[dict]]
    args: tuple

    def key(self, token: str) -> str:
        """The dask key, `l5pc_simulation-<first index>-<token>`, unique per run (token)."""
        return f"{TASK_PREFIX}-{self.simulation_indices[0]}-{token}"


def run_task(task: Task) -> list[dict]:
    """The one function the driver maps over its tasks (dask's client.map takes one function)."""
    results = task.function(*task.args)
    if len(results) != len(task.simulation_indices):
        raise RuntimeError(f"{task.function.__name__} returned {len(results)} results for "
                           f"{len(task.simulation_indices)} simulations")
    return results


def result_dict(simulation_index: int, result, cpu_seconds: float, packed_inputs: np.ndarray | None) -> dict[str, Any]:
    """One simulation's result as it travels back to the client (run.SimulationResult plus its index)."""
    return {
        "simulation_index": int(simulation_index),
        "packed_input_spikes": packed_inputs,  # None when the client has the inputs (resimulate)
        "soma_voltage": result.soma_voltage,
        "nexus_voltage": result.nexus_voltage,
        "output_spike_times": result.output_spike_times,
        "output_spikes": result.output_spikes,
        "segment_voltages": result.segment_voltages,
        "cpu_seconds": cpu_seconds,
    }


# --------------------------------------------------------------------------- set-up tasks

def check_worker(morphology: str) -> str | None:
    """Run on every worker before submitting: None, or why this worker cannot simulate."""
    if not Path(morphology).is_file():
        return f"cannot read the morphology {morphology} (workers need the same path, e.g. a shared file system)"
    return None


def describe_cell(config: SimulationConfig, morphology: str) -> dict[str, np.ndarray]:
    """Build the worker's simulator (errors surface once, here) and return its segment table."""
    from .dataset import SEGMENT_FIELDS
    from .run import get_simulator

    segments = get_simulator(config, morphology).segments
    return {name: np.asarray(getattr(segments, name)) for name in SEGMENT_FIELDS}


# --------------------------------------------------------------------------- simulation tasks (CPU engines)

def simulate_seeded(config: SimulationConfig, morphology: str, simulation_indices: tuple[int, ...]) -> list[dict]:
    """Draw simulation i's inputs from (master seed, i), simulate, return compact results, for each i."""
    from .inputs import generate_input_spikes, simulation_rng
    from .run import get_simulator

    simulator = get_simulator(config, morphology)  # built once per worker process
    segments = simulator.segments
    results = []
    for i in simulation_indices:
        rng = simulation_rng(config.dataset.seed, i)
        input_spikes = generate_input_spikes(config.inputs, segments.length_um, segments.is_basal, rng)
        started = time.process_time()
        result = simulator.run(input_spikes)
        results.append(result_dict(i, result, time.process_time() - started, np.packbits(input_spikes, axis=-1)))
    return results


def simulate_given(config: SimulationConfig, morphology: str, rows: tuple[int, ...],
                   packed_inputs: list[np.ndarray], duration_ms: int) -> list[dict]:
    """Simulate given (bit-packed) input rasters, one per row."""
    from .run import get_simulator

    simulator = get_simulator(config, morphology)
    results = []
    for row, packed in zip(rows, packed_inputs):
        input_spikes = np.unpackbits(packed, axis=-1, count=duration_ms).astype(bool)
        started = time.process_time()
        result = simulator.run(input_spikes)
        results.append(result_dict(row, result, time.process_time() - started, None))
    return results
