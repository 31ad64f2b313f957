"""One NeuronIO simulation (simulation/run.py): shapes, the spike rule, solvers and input checks."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from common.spikes import spike_raster
from simulation.config import InputConfig, RecordingConfig, SimulationConfig, SolverConfig
from simulation.errors import InputShapeError
from simulation.run import SimulationResult, check_input_spikes, detect_spikes, get_simulator

N_SEGMENTS = 639
N_INPUTS = 2 * N_SEGMENTS
FIXED = SimulationConfig(solver=SolverConfig(method="fixed", dt_ms=0.025))
CVODE = SimulationConfig(solver=SolverConfig(method="cvode"))


@pytest.fixture
def simulator(morphology_path):
    return get_simulator(FIXED, morphology_path)


def poisson_input(duration_ms: int, excitatory_hz: float, inhibitory_hz: float, seed: int) -> np.ndarray:
    """Independent Poisson trains in 1-ms bins, at most one spike per bin (a stand-in for spec 5)."""
    rng = np.random.default_rng(seed)
    rates = np.repeat([excitatory_hz, inhibitory_hz], N_SEGMENTS)[:, None] / 1000.0
    return rng.random((N_INPUTS, duration_ms)) < rates


def neuronio_input(simulator, duration_ms: int, seed: int) -> np.ndarray:
    from simulation.inputs import generate_input_spikes, simulation_rng

    table = simulator.segments
    return generate_input_spikes(InputConfig(duration_ms=duration_ms), table.length_um, table.is_basal,
                                 simulation_rng(seed, 0))


# --------------------------------------------------------------------------- pure functions

def test_detect_spikes_is_the_neuronio_rule():
    t = np.arange(10) * 0.125
    v = np.array([-70, -20, -70, -10, -10, -70, -30, 0, -40, 5], dtype=float)
    # index 1: strict maximum above -25 -> spike; 3-4: flat top, not strict -> none;
    # index 6: below threshold; index 7: spike; index 9: last sample -> never
    assert np.array_equal(detect_spikes(v, t, -25.0), t[[1, 7]])
    assert np.array_equal(detect_spikes(v, t, -35.0), t[[1, 7]])  # -30 at index 6 is no maximum
    assert detect_spikes(v, t, 10.0).size == 0
    assert detect_spikes(np.array([0.0, 1.0]), np.array([0.0, 0.125]), -25.0).size == 0
    assert detect_spikes(v, t).dtype == np.float64
    with pytest.raises(ValueError):
        detect_spikes(v, t[:-1], -25.0)


def test_input_checks():
    good = np.zeros((N_INPUTS, 5), dtype=np.int8)
    good[3, 2] = 1
    assert check_input_spikes(good, N_INPUTS).dtype == bool
    for bad in (np.zeros((N_INPUTS - 1, 5), bool), np.zeros(N_INPUTS, bool), np.zeros((N_INPUTS, 0), bool),
                np.zeros((5, N_INPUTS), bool)):
        with pytest.raises(InputShapeError, match=r"shape .*expected \(1278, T\)"):
            check_input_spikes(bad, N_INPUTS)
    with pytest.raises(InputShapeError, match="0 and 1"):
        check_input_spikes(good * 2, N_INPUTS)
    with pytest.raises(InputShapeError, match="dtype"):
        check_input_spikes(np.full((N_INPUTS, 3), "1"), N_INPUTS)


# --------------------------------------------------------------------------- simulations

def test_run_returns_the_contract(simulator):
    input_spikes = neuronio_input(simulator, 300, seed=11)
    result = simulator.run(input_spikes)
    assert isinstance(result, SimulationResult)
    assert result.soma_voltage.shape == (300,) and result.soma_voltage.dtype == np.float32
    assert result.nexus_voltage.shape == (300,) and result.nexus_voltage.dtype == np.float32
    assert result.output_spike_times.dtype == np.float64
    assert result.output_spikes.shape == (300,) and result.output_spikes.dtype == bool
    assert result.segment_voltages is None
    assert result.soma_voltage[0] == pytest.approx(-76.0) and result.nexus_voltage[0] == pytest.approx(-76.0)
    assert np.isfinite(result.soma_voltage).all() and np.isfinite(result.nexus_voltage).all()
    assert simulator.segments.n_segments == N_SEGMENTS and simulator.n_inputs == N_INPUTS
    with pytest.raises(InputShapeError, match=r"\(1277, 300\)"):
        simulator.run(input_spikes[:-1])


def test_spikes_raster_and_segment_voltages(morphology_path):
    config = dataclasses.replace(FIXED, recording=RecordingConfig(segment_voltages=True))
    simulator = get_simulator(config, morphology_path)
    input_spikes = poisson_input(400, excitatory_hz=12.0, inhibitory_hz=4.0, seed=1)
    result = simulator.run(input_spikes)
    times = result.output_spike_times
    assert len(times) >= 2  # this drive makes the cell fire
    assert np.all(np.diff(times) > 0) and np.allclose(times * 8, np.round(times * 8))  # 0.125-ms grid
    assert np.array_equal(result.output_spikes, spike_raster(times, 400))
    assert result.output_spikes.sum() == len({int(t - 0.5) for t in times})
    assert result.soma_voltage.max() < 60 and result.soma_voltage.min() > -100

    voltages = result.segment_voltages
    assert voltages.shape == (N_SEGMENTS, 400) and voltages.dtype == np.float32
    assert np.all(voltages[:, 0] == np.float32(-76.0))
    # the nexus site apic[50](0.9) is the node of apic[50]'s third segment: same samples
    table = simulator.segments
    nexus_row = np.flatnonzero(table.section == "apic[50]")[2]
    assert np.allclose(voltages[nexus_row], result.nexus_voltage, atol=1e-3)


def test_input_at_time_zero_is_delivered(simulator):
    """Spec 0: an input in bin 0 acts like any other (the NaN silencing of the original is not reproduced)."""
    quiet = np.zeros((N_INPUTS, 20), dtype=bool)
    kicked = quiet.copy()
    kicked[:N_SEGMENTS:5, 0] = True  # excitation on every fifth segment at t = 0
    baseline, response = simulator.run(quiet), simulator.run(kicked)
    assert baseline.soma_voltage[0] == response.soma_voltage[0]
    assert (response.soma_voltage[1:6] - baseline.soma_voltage[1:6]).max() > 1.0  # mV


def test_cvode_and_fixed_step_agree(morphology_path):
    input_spikes = poisson_input(300, excitatory_hz=5.0, inhibitory_hz=4.0, seed=2)
    fixed = get_simulator(FIXED, morphology_path).run(input_spikes)
    cvode = get_simulator(CVODE, morphology_path).run(input_spikes)
    difference = np.abs(fixed.soma_voltage - cvode.soma_voltage)
    assert np.median(difference) < 0.01 and difference.max() < 0.1  # mV; measured 0.002 and 0.012
    assert np.abs(fixed.nexus_voltage - cvode.nexus_voltage).max() < 0.2


def test_simulator_is_cached_per_cell(morphology_path):
    first = get_simulator(FIXED, morphology_path)
    assert get_simulator(CVODE, morphology_path) is first  # the solver is read at each run
    assert first.config.solver.method == "cvode"
    assert get_simulator(FIXED, morphology_path) is first


@pytest.mark.slow
def test_six_seconds_of_neuronio_input_cvode_versus_fixed(morphology_path):
    """A full NeuronIO-length simulation: both solvers give the same statistics (minutes)."""
    simulator = get_simulator(CVODE, morphology_path)
    input_spikes = neuronio_input(simulator, 6000, seed=7)
    cvode = simulator.run(input_spikes)
    fixed = get_simulator(FIXED, morphology_path).run(input_spikes)
    assert abs(len(cvode.output_spike_times) - len(fixed.output_spike_times)) <= 2
    assert abs(cvode.soma_voltage.mean() - fixed.soma_voltage.mean()) < 0.2
    clipped = [np.minimum(r.soma_voltage, -55.0) for r in (cvode, fixed)]  # the surrogates' target (spec 7.2)
    assert np.sqrt(np.mean((clipped[0] - clipped[1]) ** 2)) < 1.0


@pytest.mark.slow
def test_coreneuron_matches_neuron_fixed_step(morphology_path):
    """CoreNEURON's CPU engine (fixed dt) in a fresh process: it needs the -coreneuron mechanism build."""
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    completed = subprocess.run([sys.executable, __file__, "coreneuron", str(morphology_path)], env=env,
                               capture_output=True, text=True, timeout=1200)
    assert completed.returncode == 0, completed.stderr[-3000:]
    values = json.loads(completed.stdout.strip().splitlines()[-1])
    assert values["max_soma_difference_mV"] < 0.01
    assert values["coreneuron_spikes"] == values["neuron_spikes"] and len(values["neuron_spikes"]) >= 2


def _compare_coreneuron(morphology: Path) -> dict:
    coreneuron = SimulationConfig(solver=SolverConfig(method="coreneuron", dt_ms=0.025))
    input_spikes = poisson_input(400, excitatory_hz=12.0, inhibitory_hz=4.0, seed=1)
    on_coreneuron = get_simulator(coreneuron, morphology).run(input_spikes)
    simulator = get_simulator(coreneuron, morphology)
    simulator.config = FIXED  # same cell, plain NEURON
    on_neuron = simulator.run(input_spikes)
    return {
        "max_soma_difference_mV": float(np.abs(on_coreneuron.soma_voltage - on_neuron.soma_voltage).max()),
        "coreneuron_spikes": on_coreneuron.output_spike_times.tolist(),
        "neuron_spikes": on_neuron.output_spike_times.tolist(),
    }


def test_a_step_stalled_longer_than_neurons_limit_does_not_abort_the_run(morphology_path):
    """NEURON aborts a psolve whose simulated time has not advanced for pc.timeout() s of wall time
    (20 s by default): the workers of a long CVode run on an overloaded machine died with "nrn_timeout
    t=1990". The simulator raises the limit to STALLED_STEP_TIMEOUT_S. Cheaply, in a fresh process:
    NEURON's limit is cut to 1 s before the simulator is built, and a step is stalled for 2.5 s (an
    event at t = 5 ms whose Python callback sleeps). The run under the simulator's setting finishes;
    the same stall with the limit set back to 1 s kills the process, so the stall is one NEURON
    aborts on and the simulator's setting is what saves the run."""
    from simulation.run import STALLED_STEP_TIMEOUT_S

    assert STALLED_STEP_TIMEOUT_S >= 300
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]), NEURON_MODULE_OPTIONS="-nogui")
    completed = subprocess.run([sys.executable, __file__, "stall", str(morphology_path)], env=env,
                               capture_output=True, text=True, timeout=300)
    printed = completed.stdout + completed.stderr
    assert "with the simulator's limit: finished" in completed.stdout, printed[-3000:]
    assert "nrn_timeout t=5" in printed and "with a 1 s limit: finished" not in printed, printed[-3000:]
    assert completed.returncode != 0


def _stall_twice(morphology: Path) -> None:
    """Two runs with a 2.5-s stall at t = 5 ms: the simulator's limit, then NEURON's limit cut to 1 s."""
    import time

    from neuron import h

    pc = h.ParallelContext()
    pc.timeout(1)  # as if NEURON's default were 1 s: the simulator must raise it
    simulator = get_simulator(FIXED, morphology)
    stall = h.FInitializeHandler(1, lambda: h.CVode().event(5.0, lambda: time.sleep(2.5)))  # noqa: F841
    silent = np.zeros((N_INPUTS, 20), dtype=bool)
    simulator.run(silent)
    print("run with the simulator's limit: finished", flush=True)
    pc.timeout(1)
    simulator.run(silent)  # NEURON kills the process here
    print("run with a 1 s limit: finished", flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "coreneuron":
        print(json.dumps(_compare_coreneuron(Path(sys.argv[2]))))
    elif sys.argv[1] == "stall":
        _stall_twice(Path(sys.argv[2]))
