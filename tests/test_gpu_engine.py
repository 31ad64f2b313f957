"""The GPU engine's numerics against NEURON, through its CPU twin (simulation/gpu/).

The twin is the engine's own C source compiled by g++: what it computes, the CUDA kernel
computes (tests/test_gpu_engine_cuda.py checks that on a GPU machine). Here it is checked
against NEURON itself:
  - every mechanism's steady states, time constants and currents at many voltages and Ca
    concentrations, read from single NEURON compartments;
  - the exported cell (one source of truth: NEURON's own discretisation);
  - NEURON's fixed step, backward Euler and Crank-Nicolson, on 500 ms of NeuronIO input:
    soma, nexus and all 639 dendritic voltages within 1e-3 mV, the same spikes.
"""

from __future__ import annotations

import ctypes
import dataclasses
import shutil
import subprocess

import numpy as np
import pytest

from simulation.config import InputConfig, RecordingConfig, SimulationConfig, SolverConfig
from simulation.gpu.backends import build_cpu_library
from simulation.gpu.engine import EventList, GPUEngine
from simulation.gpu.export import CHANNELS, export_cell
from simulation.inputs import generate_input_spikes, simulation_rng

VOLTAGES = np.concatenate([np.linspace(-120.0, 60.0, 181) + 0.123, [-38.0, -66.0, -32.0, -60.0, -17.0, -64.4, -27.0, -154.9, -60.0]])
CALCIUM_MM = np.geomspace(1e-9, 1e-1, 41)
GATES = {"NaTa_t": "mh", "NaTs2_t": "mh", "Nap_Et2": "mh", "K_Pst": "mh", "K_Tst": "mh", "Ca_HVA": "mh",
         "Ca_LVAst": "mh", "SKv3_1": "m", "Im": "m", "Ih": "m"}
ION = {"NaTa_t": "na", "NaTs2_t": "na", "Nap_Et2": "na", "K_Pst": "k", "K_Tst": "k", "SKv3_1": "k", "Im": "k",
       "SK_E2": "k", "Ca_HVA": "ca", "Ca_LVAst": "ca"}
GBAR = 0.01


# --------------------------------------------------------------------------------------
# the CPU twin's probe functions


@pytest.fixture(scope="module")
def twin():
    library = ctypes.CDLL(str(build_cpu_library("float64")))
    d = ctypes.c_double
    library.cpu_mechanism_rates.argtypes = [ctypes.c_char_p, d, d, d, d, ctypes.POINTER(d)]
    library.cpu_channel_conductance.argtypes = [ctypes.c_char_p, d, d, d]
    library.cpu_channel_conductance.restype = d
    library.cpu_ampanmda_current.argtypes = [d] * 8
    library.cpu_ampanmda_current.restype = d
    library.cpu_gabaa_current.argtypes = [d] * 5
    library.cpu_gabaa_current.restype = d
    library.cpu_nernst_ca.argtypes = [d] * 3
    library.cpu_nernst_ca.restype = d
    library.cpu_cadynamics_step.argtypes = [d] * 8
    library.cpu_cadynamics_step.restype = d
    return library


def twin_rates(twin, channel, v, cai=5e-5, vhalf=-154.9, vshift=0.0):
    out = (ctypes.c_double * 4)()
    assert twin.cpu_mechanism_rates(channel.encode(), v, cai, vhalf, vshift, out) == 0
    return list(out)


@pytest.fixture
def solver_globals(h):
    """Fixed step at NEURON's defaults; restored afterwards for the other tests of the process."""
    cvode = h.CVode()
    saved = (h.celsius, h.dt, cvode.active(), h.cai0_ca_ion, h.cao0_ca_ion, h.secondorder)
    h.celsius, h.cai0_ca_ion, h.cao0_ca_ion, h.secondorder = 6.3, 5e-5, 2.0, 0
    cvode.active(0)
    yield h
    h.celsius, h.dt, active, h.cai0_ca_ion, h.cao0_ca_ion, h.secondorder = saved
    cvode.active(active)


def single_compartment(h, mechanisms):
    section = h.Section(name="test_gpu_engine_compartment")
    section.L = section.diam = 20
    for mechanism in mechanisms:
        section.insert(mechanism)
    return section


# --------------------------------------------------------------------------------------
# mechanisms


@pytest.mark.parametrize("channel", sorted(GATES))
def test_gates_match_neuron(channel, twin, solver_globals):
    """x_inf and tau_x of every gate, at 190 voltages including the removable singularities."""
    h = solver_globals
    section = single_compartment(h, [channel])
    seg = section(0.5)
    worst = 0.0
    for v in VOLTAGES:
        h.finitialize(float(v))  # INITIAL calls rates(v): the RANGE variables hold its results
        ours = twin_rates(twin, channel, float(v))
        for k, gate in enumerate(GATES[channel]):
            for value, theirs in ((ours[2 * k], getattr(seg, f"{gate}_inf_{channel}")),
                                  (ours[2 * k + 1], getattr(seg, f"tau_{gate}_{channel}"))):
                worst = max(worst, abs(value - theirs) / max(abs(theirs), 1e-300))
    assert worst < 1e-12, f"{channel}: largest relative difference {worst:.3g}"


def test_sk_e2_matches_neuron_at_many_calcium_concentrations(twin, solver_globals):
    h = solver_globals
    section = single_compartment(h, ["SK_E2"])
    seg = section(0.5)
    for cai in CALCIUM_MM:
        seg.cai = float(cai)  # nothing writes cai here, so finitialize keeps it; INITIAL calls rates(cai)
        h.finitialize(-70.0)
        z_inf, tau_z, _, _ = twin_rates(twin, "SK_E2", -70.0, cai=float(cai))
        assert seg.ca_ion.cai == pytest.approx(cai, rel=1e-12)
        assert z_inf == pytest.approx(seg.z_inf_SK_E2, rel=1e-12, abs=1e-300)
        assert tau_z == seg.tau_z_SK_E2


@pytest.mark.parametrize("channel", sorted(ION))
def test_channel_currents_match_neuron(channel, twin, solver_globals):
    """i = g(gates) (v - E) with NEURON's gates, at many voltages (and Ca concentrations for eca)."""
    h = solver_globals
    ion = ION[channel]
    mechanisms = [channel] + (["CaDynamics_E2"] if ion == "ca" or channel == "SK_E2" else [])
    section = single_compartment(h, mechanisms)
    seg = section(0.5)
    setattr(seg, f"gbar_{channel}", GBAR)
    if ion == "na":
        section.ena = 50.0
    if ion == "k":
        section.ek = -85.0
    ktf = 1000.0 * h.R * (h.celsius + 273.15) / h.FARADAY
    for v in VOLTAGES[::5]:
        for cai in (CALCIUM_MM[::8] if ion == "ca" or channel == "SK_E2" else [5e-5]):
            h.cai0_ca_ion = float(cai)
            h.finitialize(float(v))
            h.fcurrent()  # NEURON's currents at v with the gates of finitialize
            gates = [getattr(seg, f"{g}_{channel}") for g in ("z" if channel == "SK_E2" else GATES[channel])]
            conductance = twin.cpu_channel_conductance(channel.encode(), GBAR, gates[0], gates[1] if len(gates) > 1 else 0.0)
            if ion == "ca":
                reversal = twin.cpu_nernst_ca(float(cai), seg.cao, ktf)
                assert reversal == pytest.approx(seg.eca, rel=1e-12)
            else:
                reversal = getattr(seg, f"e{ion}")
            expected = getattr(seg, f"i{ion}")
            assert conductance * (v - reversal) == pytest.approx(expected, rel=1e-12, abs=1e-18)


def test_ih_current_matches_neuron(twin, solver_globals):
    h = solver_globals
    section = single_compartment(h, ["Ih"])
    seg = section(0.5)
    seg.gbar_Ih = GBAR
    for v in VOLTAGES[::3]:
        h.finitialize(float(v))
        h.fcurrent()
        conductance = twin.cpu_channel_conductance(b"Ih", GBAR, seg.m_Ih, 0.0)
        assert conductance * (v - seg.ehcn_Ih) == pytest.approx(seg.ihcn_Ih, rel=1e-12, abs=1e-18)


def test_calcium_pool_step_matches_neuron(twin, solver_globals):
    """One fixed step of CaDynamics_E2 at several voltages and Ca concentrations."""
    h = solver_globals
    section = single_compartment(h, ["Ca_HVA", "Ca_LVAst", "CaDynamics_E2"])
    seg = section(0.5)
    seg.gbar_Ca_HVA, seg.gbar_Ca_LVAst = 0.01, 0.05
    seg.gamma_CaDynamics_E2, seg.decay_CaDynamics_E2 = 0.000509, 294.679571
    h.dt = 0.025
    clamp = h.SEClamp(seg)
    clamp.rs, clamp.dur1 = 1e-6, 1e9
    for v in (-80.0, -40.0, -10.0, 20.0):
        for cai in (1e-5, 5e-5, 1e-3):
            clamp.amp1 = v
            h.cai0_ca_ion = cai
            h.finitialize(v)
            h.fadvance()  # currents at v and cai(0), then cai(dt) by cnexp
            ica = seg.ica  # the Ca current of the step (the clamp holds v, the gates barely move in one step)
            step = twin.cpu_cadynamics_step(cai, ica, seg.gamma_CaDynamics_E2, seg.decay_CaDynamics_E2,
                                            seg.depth_CaDynamics_E2, seg.minCai_CaDynamics_E2, h.FARADAY, h.dt)
            assert step == pytest.approx(seg.cai, rel=1e-6)
    del clamp


def test_synapse_currents_match_neuron(twin, h):
    """AmpaNmda (with its Mg block) and GabaA currents for given states, at many voltages."""
    section = single_compartment(h, [])
    excitatory, inhibitory = h.AmpaNmda(section(0.5)), h.GabaA(section(0.5))
    h.finitialize(-70.0)
    states = dict(A_AMPA=0.3, B_AMPA=0.9, A_NMDA=0.2, B_NMDA=1.1)
    for name, value in states.items():
        setattr(excitatory, name, value)
    inhibitory.A, inhibitory.B = 0.4, 1.3
    for v in VOLTAGES[::4]:
        section(0.5).v = float(v)
        h.fcurrent()
        ours = twin.cpu_ampanmda_current(float(v), states["A_AMPA"], states["B_AMPA"], states["A_NMDA"], states["B_NMDA"],
                                         excitatory.gmax, excitatory.e, excitatory.mg)
        assert ours == pytest.approx(excitatory.i, rel=1e-12, abs=1e-18)
        ours = twin.cpu_gabaa_current(float(v), inhibitory.A, inhibitory.B, inhibitory.gmax, inhibitory.e)
        assert ours == pytest.approx(inhibitory.i, rel=1e-12, abs=1e-18)


# --------------------------------------------------------------------------------------
# the exported cell


@pytest.fixture(scope="module")
def simulator(morphology_path):
    from simulation.run import L5PCSimulator

    config = SimulationConfig(solver=SolverConfig(method="fixed", dt_ms=0.025), inputs=InputConfig(duration_ms=500))
    return L5PCSimulator(config, morphology_path)


@pytest.fixture(scope="module")
def exported(simulator):
    return export_cell(simulator)


def test_export_is_neurons_discretisation(exported, simulator):
    cell = exported
    n_sections = len(simulator.cell.all_sections)
    n_segments = sum(sec.nseg for sec in simulator.cell.all_sections)
    assert cell.n_nodes == 1 + n_segments + n_sections  # root + segment centres + section ends
    assert cell.parent[0] == -1 and np.all(cell.parent[1:] < np.arange(1, cell.n_nodes))
    membrane = cell.cm > 0
    assert membrane.sum() == n_segments
    assert np.all(cell.area_um2[~membrane] == 100.0)  # NEURON's zero-area nodes
    # areas are NEURON's own (3-D point integration), not cylinders recomputed here
    total = sum(seg.area() for sec in simulator.cell.all_sections for seg in sec)
    assert cell.area_um2[membrane].sum() == pytest.approx(total, rel=1e-12)
    # the synapses sit on the 639 dendritic segment nodes, in SegmentTable order
    assert np.array_equal(cell.excitatory_node, cell.segment_nodes)
    assert np.array_equal(cell.inhibitory_node, cell.segment_nodes)
    assert cell.n_inputs == 2 * len(simulator.segments)
    assert cell.node_name[cell.nexus_node].startswith("apic[50]")
    # every channel the biophysics inserts is exported with its density
    assert cell.inserted["NaTs2_t"][cell.soma_node] and not cell.inserted["NaTa_t"][cell.soma_node]
    assert cell.parameters["NaTs2_t"]["gbar"][cell.soma_node] == pytest.approx(0.998912)
    assert set(cell.inserted) == set(CHANNELS)


# --------------------------------------------------------------------------------------
# the time step against NEURON's fixed step


def driving_inputs(simulator, duration_ms=500, seed=11):
    """NeuronIO inputs, with excitation raised so that 500 ms hold several output spikes."""
    config = dataclasses.replace(InputConfig(duration_ms=duration_ms), excitation_per_100ms=(600.0, 800.0),
                                 inhibition_minus_excitation_per_100ms=(-600.0, -300.0))
    segments = simulator.segments
    return generate_input_spikes(config, segments.length_um, segments.is_basal, simulation_rng(seed, 0))


@pytest.mark.parametrize("scheme", ["backward-euler", "crank-nicolson"])
def test_twin_reproduces_neuron_fixed_step(scheme, simulator, exported):
    """500 ms of NeuronIO input, fp64, dt 0.025: every recorded voltage within 1e-3 mV of NEURON."""
    solver = SolverConfig(method="fixed", dt_ms=0.025, scheme=scheme)
    recording = RecordingConfig(segment_voltages=True)
    simulator.config = dataclasses.replace(simulator.config, solver=solver, recording=recording)
    inputs = driving_inputs(simulator)
    reference = simulator.run(inputs)
    engine = GPUEngine(exported, dataclasses.replace(solver, method="gpu"), recording, backend="cpu")
    ours = engine.run(inputs[np.newaxis])[0]

    assert len(reference.output_spike_times) >= 3, "the test input should make the cell fire"
    assert np.max(np.abs(ours.soma_voltage - reference.soma_voltage)) < 1e-3
    assert np.max(np.abs(ours.nexus_voltage - reference.nexus_voltage)) < 1e-3
    assert np.max(np.abs(ours.segment_voltages - reference.segment_voltages)) < 1e-3
    assert np.array_equal(ours.output_spike_times, reference.output_spike_times)
    assert np.array_equal(ours.output_spikes, reference.output_spikes)


def test_batch_cells_are_independent_and_deterministic(simulator, exported):
    """A cell's result does not depend on its batch, its place in it, or the thread count."""
    rasters = np.stack([driving_inputs(simulator, 120, seed) for seed in (1, 2, 3)])
    solver = SolverConfig(method="gpu", dt_ms=0.025)
    alone = GPUEngine(exported, solver, RecordingConfig(), backend="cpu").run(rasters[1:2])[0]
    engine = GPUEngine(exported, solver, RecordingConfig(), backend="cpu", cpu_threads=2)
    together = engine.run(rasters[::-1].copy())  # seed 2 in the middle, 3 cells on 2 threads
    assert np.array_equal(together[1].soma_voltage, alone.soma_voltage)
    assert np.array_equal(together[1].output_spike_times, alone.output_spike_times)
    assert not np.array_equal(together[0].soma_voltage, together[2].soma_voltage)


def test_float32_stays_close_to_float64(simulator, exported):
    inputs = driving_inputs(simulator, 300)
    runs = {precision: GPUEngine(exported, SolverConfig(method="gpu", gpu_precision=precision), RecordingConfig(),
                                 backend="cpu").run(inputs[np.newaxis])[0]
            for precision in ("float64", "float32")}
    difference = np.abs(runs["float32"].soma_voltage - runs["float64"].soma_voltage)
    assert np.median(difference) < 1e-3
    assert len(runs["float32"].output_spike_times) == len(runs["float64"].output_spike_times)
    assert np.max(np.abs(runs["float32"].output_spike_times - runs["float64"].output_spike_times), initial=0) <= 0.125


def test_event_lists_round_trip():
    rng = np.random.default_rng(0)
    raster = rng.random((1278, 300)) < 0.01
    events = EventList.from_raster(raster)
    assert events.duration_ms == 300 and len(events.rows) == raster.sum()
    assert np.array_equal(events.to_raster(1278), raster)
    # within a ms, rows ascend; across ms, time ascends
    ms = np.repeat(np.arange(300), np.diff(events.offsets))
    assert np.all(np.diff(ms) >= 0)
    assert np.array_equal(np.lexsort((events.rows, ms)), np.arange(len(ms)))
    # the first ms of a run, as a shorter event list
    assert np.array_equal(events.head(40).to_raster(1278), raster[:, :40])
    assert events.head(1000).duration_ms == 300


def test_launch_shapes_are_checked_and_named():
    from simulation.gpu.backends import DEFAULT_LAUNCH, LaunchConfig

    shape = LaunchConfig.parse("4x64/4")
    assert (shape.cells_per_block, shape.node_groups, shape.blocks_per_multiprocessor) == (4, 64, 4)
    assert shape.threads_per_block == 256 and shape.warps == 8 and shape.label == "4x64/4"
    for default in DEFAULT_LAUNCH.values():
        assert LaunchConfig.parse(default.label) == default
    for bad in ("3x32/2", "8x6/2", "8x256/1", "8x32", "eight"):
        with pytest.raises(ValueError):
            LaunchConfig.parse(bad)


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="needs nvcc (the CUDA toolkit), not a GPU")
@pytest.mark.parametrize("shape,shared", [("8x32/2", True), ("4x64/4", True), ("8x32/2", False)])
def test_kernel_compiles_for_launch_shapes(exported, tmp_path, shape, shared):
    """The CUDA source compiles for sm_90 at each launch shape, without a GPU (the kernel runs in test_gpu_engine_cuda.py)."""
    from simulation.gpu.backends import LaunchConfig
    from simulation.gpu.engine import NodeLayout, depth_first
    from simulation.gpu.layout import source

    launch = LaunchConfig.parse(shape)
    code = source("float32", NodeLayout.of(depth_first(exported)).class_masks, nodes_in_shared_memory=shared,
                  cells_per_block=launch.cells_per_block, threads_per_block=launch.threads_per_block,
                  blocks_per_multiprocessor=launch.blocks_per_multiprocessor)
    (tmp_path / "engine.cu").write_text(code)
    result = subprocess.run(["nvcc", "-std=c++17", "-arch=sm_90", "-cubin", "-o", str(tmp_path / "engine.cubin"),
                             str(tmp_path / "engine.cu")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
