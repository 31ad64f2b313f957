"""The CUDA kernel against its CPU twin (run on a GPU machine: `python -m pytest -m gpu`).

The twin is checked against NEURON in tests/test_gpu_engine.py; here the kernel, the same
source compiled by NVRTC, must compute what the twin computes, with its node arrays in shared
or in device memory, and a cell's result must not depend on the batch it ran in (so a dataset
is the same whatever GPUs made it).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from simulation.config import InputConfig, RecordingConfig, SimulationConfig, SolverConfig
from simulation.gpu.backends import LaunchConfig
from simulation.gpu.engine import GPUEngine
from simulation.gpu.export import export_cell
from simulation.inputs import generate_input_spikes, simulation_rng

cupy = pytest.importorskip("cupy")
pytestmark = pytest.mark.gpu
if not cupy.is_available():
    pytest.skip("no CUDA device", allow_module_level=True)


@pytest.fixture(scope="module")
def exported(morphology_path):
    from simulation.run import L5PCSimulator

    config = SimulationConfig(solver=SolverConfig(method="fixed", dt_ms=0.025), inputs=InputConfig(duration_ms=300))
    simulator = L5PCSimulator(config, morphology_path)
    return simulator.segments, export_cell(simulator)


def rasters(segments, n, duration_ms=300, seed=3):
    config = dataclasses.replace(InputConfig(duration_ms=duration_ms), excitation_per_100ms=(300.0, 800.0))
    return np.stack([generate_input_spikes(config, segments.length_um, segments.is_basal, simulation_rng(seed, i))
                     for i in range(n)])


@pytest.mark.parametrize("node_arrays", ["shared", "global"])
@pytest.mark.parametrize("scheme", ["backward-euler", "crank-nicolson"])
def test_kernel_matches_twin_float64(scheme, node_arrays, exported):
    segments, cell = exported
    inputs = rasters(segments, 40)  # padded to 64 cells on the GPU
    solver = SolverConfig(method="gpu", dt_ms=0.025, scheme=scheme)
    recording = RecordingConfig(segment_voltages=True)
    gpu = GPUEngine(cell, solver, recording, backend="cuda", node_arrays=node_arrays).run(inputs, chunk_ms=70)
    cpu = GPUEngine(cell, solver, recording, backend="cpu", cpu_threads=4).run(inputs)
    assert sum(len(r.output_spike_times) for r in cpu) >= 20
    for ours, twin in zip(gpu, cpu):
        assert np.max(np.abs(ours.soma_voltage - twin.soma_voltage)) < 1e-3
        assert np.max(np.abs(ours.segment_voltages - twin.segment_voltages)) < 1e-3
        assert np.array_equal(ours.output_spike_times, twin.output_spike_times)


@pytest.mark.parametrize("node_arrays", ["shared", "global"])
def test_kernel_matches_twin_float32(node_arrays, exported):
    segments, cell = exported
    inputs = rasters(segments, 32, seed=4)
    solver = SolverConfig(method="gpu", dt_ms=0.025, gpu_precision="float32")
    gpu = GPUEngine(cell, solver, RecordingConfig(), backend="cuda", node_arrays=node_arrays).run(inputs)
    cpu = GPUEngine(cell, solver, RecordingConfig(), backend="cpu", cpu_threads=4).run(inputs)
    difference = np.concatenate([np.abs(a.soma_voltage - b.soma_voltage) for a, b in zip(gpu, cpu)])
    assert np.median(difference) < 1e-3
    assert [len(a.output_spike_times) for a in gpu] == [len(b.output_spike_times) for b in cpu]


@pytest.mark.parametrize("precision,math", [("float64", "exact"), ("float32", "exact"), ("float32", "fast")])
def test_results_do_not_depend_on_the_batch(precision, math, exported):
    """Bit for bit: alone, in another position, in a larger batch, in another chunking."""
    segments, cell = exported
    inputs = rasters(segments, 70, duration_ms=120, seed=5)
    solver = SolverConfig(method="gpu", dt_ms=0.025, gpu_precision=precision, gpu_math=math)
    engine = GPUEngine(cell, solver, RecordingConfig(), backend="cuda", node_arrays="shared")
    everything = engine.run(inputs, chunk_ms=120)
    alone = engine.run(inputs[[37]], chunk_ms=50)[0]
    again = engine.run(inputs[::-1].copy(), chunk_ms=45)
    for result in (alone, again[70 - 1 - 37]):
        assert np.array_equal(result.soma_voltage, everything[37].soma_voltage)
        assert np.array_equal(result.output_spike_times, everything[37].output_spike_times)


@pytest.mark.parametrize("shape", ["8x32/2", "4x64/4", "2x64/8"])
def test_launch_shape_changes_speed_not_results(shape, exported):
    """Every launch shape computes the same cells bit for bit (the benchmark picks the fastest)."""
    segments, cell = exported
    inputs = rasters(segments, 24, duration_ms=150, seed=6)
    solver = SolverConfig(method="gpu", dt_ms=0.025, gpu_precision="float32")
    reference = GPUEngine(cell, solver, RecordingConfig(), backend="cuda").run(inputs)
    other = GPUEngine(cell, solver, RecordingConfig(), backend="cuda", launch=LaunchConfig.parse(shape)).run(inputs)
    for a, b in zip(reference, other):
        assert np.array_equal(a.soma_voltage, b.soma_voltage)
        assert np.array_equal(a.output_spike_times, b.output_spike_times)


def test_fast_math_stays_close_to_exact(exported):
    """gpu_math = "fast" (hardware exp, log and division) against the exact kernel: the same cells
    within float32's own noise; its fidelity to CVode is measured by bench/gpu_simulation.py."""
    segments, cell = exported
    inputs = rasters(segments, 32, duration_ms=600, seed=7)
    runs = {math: GPUEngine(cell, SolverConfig(method="gpu", dt_ms=0.025, gpu_precision="float32", gpu_math=math),
                            RecordingConfig(), backend="cuda").run(inputs) for math in ("exact", "fast")}
    difference = np.concatenate([np.abs(a.soma_voltage - b.soma_voltage) for a, b in zip(runs["exact"], runs["fast"])])
    assert np.max(difference) > 0 and np.median(difference) < 1e-3  # not the same program, but the same cells
    same = [np.array_equal(a.output_spike_times, b.output_spike_times) for a, b in zip(runs["exact"], runs["fast"])]
    assert sum(len(a.output_spike_times) for a in runs["exact"]) >= 20 and np.mean(same) >= 0.9
