"""The L5PC against the facts of L5PC_MODEL_SPEC.md: geometry (1.1-1.3), channel placement (3.2, 3.3),
resting state (1.7), input resistance, repetitive firing and Hay et al.'s BAC firing.

The physiology runs on the process's one simulator (`get_simulator`), whose synapses stay silent;
a cell with blocked channels or with other biophysics is built in a subprocess (this file run as
a script), because a NEURON process keeps every section it ever made.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from simulation.cell import L5PCCell, distributed_value, load_biophysics
from simulation.config import SimulationConfig, SolverConfig
from simulation.errors import ConfigError, MorphologyError

PROJECT_ROOT = Path(__file__).resolve().parents[1]
# variable step: the quiet stretches of these current-clamp runs cost next to nothing
CVODE_CONFIG = SimulationConfig(solver=SolverConfig(method="cvode"))


@pytest.fixture
def simulator(morphology_path):
    from simulation.run import get_simulator

    return get_simulator(CVODE_CONFIG, morphology_path)


@pytest.fixture
def cell(simulator) -> L5PCCell:
    return simulator.cell


def silent_input(simulator, duration_ms: int) -> np.ndarray:
    return np.zeros((simulator.n_inputs, duration_ms), dtype=bool)


def run_in_subprocess(*args: str) -> dict:
    """Run this file as a script in a fresh NEURON process; it prints one JSON line last."""
    env = dict(os.environ, PYTHONPATH=str(PROJECT_ROOT))
    completed = subprocess.run([sys.executable, __file__, *args], cwd=PROJECT_ROOT, env=env,
                               capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr[-3000:]
    return json.loads(completed.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- geometry (spec 1.1-1.3)

def test_segment_table_follows_neuronio_order(cell):
    table = cell.segments
    assert table.n_segments == 639
    assert table.is_basal.sum() == 262 and (~table.is_basal).sum() == 377
    assert np.array_equal(table.index, np.arange(639))
    assert table.is_basal[:262].all() and not table.is_basal[262:].any()
    assert table.section[0] == "dend[0]" and table.section[261] == "dend[83]"
    assert table.section[262] == "apic[0]" and table.section[638] == "apic[108]"
    # ELM's sub-groups (spec 4.1): 366 starts apic[36], 558 ends apic[78], 559 starts apic[79]
    assert table.section[366] == "apic[36]" and table.section[365] != "apic[36]"
    assert table.section[558] == "apic[78]" and table.section[559] == "apic[79]"
    # within a section, centres (2k - 1) / (2 nseg) in increasing x
    for name in ("dend[0]", "apic[0]", "apic[50]"):
        x = table.x[table.section == name]
        nseg = len(x)
        assert np.allclose(x, (2 * np.arange(1, nseg + 1) - 1) / (2 * nseg))
    segments = cell.dendritic_segments()
    assert len(segments) == 639
    assert all(cell.section_name(seg.sec) == name and abs(seg.x - x) < 1e-12
               for seg, name, x in zip(segments, table.section, table.x))


def test_geometry_matches_the_spec(cell):
    from neuron import h

    table = cell.segments
    assert len(cell.soma) == 1 and len(cell.basal) == 84 and len(cell.apical) == 109 and len(cell.axon) == 2
    assert sum(sec.L for sec in cell.basal) == pytest.approx(5133.49, abs=0.01)
    assert sum(sec.L for sec in cell.apical) == pytest.approx(7440.91, abs=0.01)
    assert cell.longest_apical_path_um == pytest.approx(1300.53, abs=0.01)
    assert cell.soma[0].L == pytest.approx(23.169, abs=1e-3) and cell.soma_area_um2 == pytest.approx(1131.4, abs=0.1)
    apic0 = cell.section("apic[0]")
    assert apic0.L == pytest.approx(46.14, abs=0.01) and apic0.nseg == 3
    assert apic0(0.5).diam == pytest.approx(4.09, abs=0.01)
    assert table.length_um.min() == pytest.approx(1.746, abs=1e-3)
    assert table.length_um.max() == pytest.approx(39.911, abs=1e-3)
    assert table.length_um.mean() == pytest.approx(19.678, abs=1e-3)
    histogram = collections.Counter(sec.nseg for sec in cell.all_sections)
    assert dict(histogram) == {1: 95, 3: 37, 5: 29, 7: 19, 9: 11, 11: 3, 13: 2}
    # axon: two 30 x 1 um stubs, soma(0.5) -> axon[0] -> axon[1] (spec 1.3)
    for stub in cell.axon:
        assert (stub.L, stub.diam, stub.nseg) == (30.0, 1.0, 1)
    assert cell.axon[0].parentseg().sec == cell.soma[0] and cell.axon[0].parentseg().x == 0.5
    assert cell.axon[1].parentseg().sec == cell.axon[0] and cell.axon[1].parentseg().x == 1.0
    assert len(list(h.allsec())) >= 196
    # distances from soma(0.5): the nexus node apic[50](5/6) is at 678.4 um (spec 6.2)
    nexus = cell.nexus_segment()
    assert cell.section_name(nexus.sec) == "apic[50]" and nexus.node_index() == list(nexus.sec)[2].node_index()
    assert h.distance(cell.soma[0](0.5), nexus) == pytest.approx(678.4, abs=0.05)
    assert table.distance_um[table.section == "apic[0]"][0] == pytest.approx(46.14 / 6, abs=0.01)


def test_bad_names_and_files_are_user_errors(tmp_path):
    with pytest.raises(ConfigError, match="biophys"):
        L5PCCell(tmp_path / "whatever.asc", biophysics="biophys99")
    with pytest.raises(MorphologyError, match="not found"):
        L5PCCell(tmp_path / "missing.asc")
    not_a_morphology = tmp_path / "cell.txt"
    not_a_morphology.write_text("hello")
    with pytest.raises(MorphologyError):
        L5PCCell(not_a_morphology)


# --------------------------------------------------------------------------- channel placement (spec 3)

IH_REFERENCE = [  # d (um), biophys5b, biophys3 (spec 3.2 table)
    (0.0, 1.2174e-4, 2.4348e-4),
    (200.0, 2.7698e-4, 5.5396e-4),
    (400.0, 5.4770e-4, 1.0954e-3),
    (600.0, 1.0198e-3, 2.0396e-3),
    (800.0, 1.8430e-3, 3.6861e-3),
    (845.35, 2.1024e-3, 4.2048e-3),
    (1300.53, 2.1024e-3, 1.5350e-2),
]


@pytest.mark.parametrize("distance, neuronio, hay2011", IH_REFERENCE)
def test_apical_ih_gradient_reference_values(distance, neuronio, hay2011):
    longest = 1300.5335
    for name, expected in (("neuronio", neuronio), ("hay2011", hay2011)):
        rule = next(r for r in load_biophysics(name)["distribution"] if r["parameter"] == "gbar_Ih")
        assert distributed_value(rule, distance, longest) == pytest.approx(expected, rel=2e-4)


def test_apical_ih_in_the_cell_follows_the_distance_rule(cell):
    from neuron import h

    origin = cell.soma[0](0.5)
    plateau, values = 0, []
    for sec in cell.apical:
        segments = list(sec)
        for k, seg in enumerate(segments):
            # the last segment of a section takes the value at the distal end x = 1 (spec 3.2)
            distance = h.distance(origin, sec(1.0) if k == len(segments) - 1 else seg)
            expected = 1e-4 * (-0.8696 + 2.0870 * np.exp(3.6161 * min(distance / 1300.5335, 0.65)))
            assert seg.gbar_Ih == pytest.approx(expected, abs=1e-10)
            plateau += distance >= 0.65 * 1300.5335
            values.append(seg.gbar_Ih)
    assert plateau == 152
    assert max(values) == pytest.approx(2.1024e-3, rel=1e-4)
    assert all(seg.gbar_Ih == 5e-5 for sec in cell.basal for seg in sec)
    assert cell.soma[0](0.5).gbar_Ih == 7.5e-5


def test_calcium_hot_zone_has_29_segments(cell):
    hot = collections.Counter()
    for sec in cell.apical:
        for seg in sec:
            assert seg.gbar_Ca_LVAst in (0.2271264, 0.002271264)
            assert seg.gbar_Ca_HVA == 0.000701
            if seg.gbar_Ca_LVAst == 0.2271264:
                hot[cell.section_name(sec)] += 1
    assert sum(hot.values()) == 29
    assert hot == {"apic[37]": 9, "apic[50]": 1, "apic[51]": 10, "apic[60]": 9}
    # apic[50]: only its last segment, whose centre (678.4 um) is outside but whose end is inside
    apic50 = list(cell.section("apic[50]"))
    assert [seg.gbar_Ca_LVAst for seg in apic50] == [0.002271264, 0.002271264, 0.2271264]


def test_regional_parameters_and_reversals(cell):
    soma, axon, basal, apical = cell.soma[0](0.5), cell.axon[0](0.5), cell.basal[0](0.5), cell.apical[10](0.5)
    assert (soma.cm, basal.cm, apical.cm, axon.cm) == (1.0, 2.0, 2.0, 1.0)
    assert (soma.g_pas, axon.g_pas, basal.g_pas, apical.g_pas) == (3e-5, 3e-5, 6e-5, 6e-5)
    assert all(seg.e_pas == -90.0 for seg in (soma, axon, basal, apical))
    assert all(sec.Ra == 100.0 for sec in cell.all_sections)
    for seg in (soma, axon, apical):
        assert (seg.ek, seg.ena) == (-85.0, 50.0)
    assert soma.gbar_NaTs2_t == 0.998912 and axon.gbar_NaTa_t == 3.89618 and apical.gbar_NaTs2_t == 0.021489
    assert soma.ehcn_Ih == -45.0
    basal_mechanisms = {mech.name() for mech in basal}
    assert basal_mechanisms == {"pas", "Ih"}  # no Na, K or Ca in basal dendrites (spec 1.5)


# --------------------------------------------------------------------------- physiology

def test_resting_state(simulator):
    """From v_init = -76 mV, no input: soma ~ -81.1 mV and nexus ~ -75.8 mV after ~100 ms (spec 1.7)."""
    result = simulator.run(silent_input(simulator, 300))
    assert result.soma_voltage[0] == pytest.approx(-76.0, abs=1e-3)
    assert result.soma_voltage[100:300].mean() == pytest.approx(-81.1, abs=0.2)
    assert result.nexus_voltage[100:300].mean() == pytest.approx(-75.8, abs=0.2)
    assert np.ptp(result.soma_voltage[200:300]) < 0.2
    assert len(result.output_spike_times) == 0


def _soma_step_spikes(simulator, amplitude_nA: float, delay_ms=100.0, duration_ms=500.0, total_ms=700):
    from neuron import h

    clamp = h.IClamp(simulator.cell.soma[0](0.5))
    clamp.delay, clamp.dur, clamp.amp = delay_ms, duration_ms, amplitude_nA
    result = simulator.run(silent_input(simulator, total_ms))
    return result.output_spike_times


def test_repetitive_firing_rate_rises_with_current(simulator):
    spikes = {amp: _soma_step_spikes(simulator, amp) for amp in (0.3, 0.6, 1.0, 1.5)}
    counts = [len(times) for times in spikes.values()]
    assert counts[0] == 0  # below rheobase
    assert counts[1] >= 3  # repetitive firing, not a single onset spike
    assert counts[1] < counts[2] < counts[3]  # measured 0, 6, 10, 12 spikes in 500 ms
    for times in spikes.values():
        assert ((times > 100) & (times < 600)).all()  # no firing outside the step


def test_active_input_resistance_is_plausible(simulator):
    """Steady response to a -20 pA step from rest: Ih makes it lower than the passive cell's."""
    from neuron import h

    soma = simulator.cell.soma[0](0.5)
    clamp = h.IClamp(soma)
    clamp.delay, clamp.dur, clamp.amp = 1000.0, 1e9, -0.02
    result = simulator.run(silent_input(simulator, 3500))
    rest, stepped = result.soma_voltage[900:1000].mean(), result.soma_voltage[3400:3500].mean()
    input_resistance = (stepped - rest) / clamp.amp
    assert np.ptp(result.soma_voltage[3300:3500]) < 0.05  # settled
    assert 30.0 < input_resistance < 60.0  # MOhm; measured 44.1


def test_passive_input_resistance_three_ways(morphology_path):
    """All channels blocked (pas only): current step == NEURON's Impedance == our own DC network solve.

    The independent value is a numpy solve of the compartmental network at DC (node conductances
    g_pas * area, axial conductances 1 / ri between each node and its parent), assembled here,
    not by NEURON. It must also exceed the isopotential bound 1 / sum(g_pas * area).
    """
    values = run_in_subprocess("passive", str(morphology_path))
    assert values["step"] == pytest.approx(values["network"], rel=1e-4)
    assert values["impedance"] == pytest.approx(values["network"], rel=1e-6)
    assert values["isopotential_bound"] < values["network"] < 1.6 * values["isopotential_bound"]
    assert 60.0 < values["network"] < 90.0  # MOhm; 72.1 for cell1 with biophys5b's g_pas


def _apical_site_at(cell, distance_um: float):
    """Hay's choice: among apical points at this path distance from soma(0.5), the thickest."""
    from neuron import h

    origin = cell.soma[0](0.5)
    candidates = []
    for sec in cell.apical:
        start, end = h.distance(origin, sec(0)), h.distance(origin, sec(1))
        if start <= distance_um < end:
            x = (distance_um - start) / (end - start)
            candidates.append((sec(x).diam, sec, x))
    _, sec, x = max(candidates, key=lambda c: c[0])
    return sec(x)


def _epsp_like_current(onset_ms, tau_rise=0.5, tau_decay=5.0, peak_nA=0.5, dt=0.1, span_ms=60.0):
    """Hay et al.'s epsp.mod waveform, a double exponential peaking at `peak_nA` (inward).

    Sampled every `dt` from the onset for `span_ms` only (zero before, and from the end on),
    so that the variable-step solver need not stop at thousands of breakpoints.
    """
    s = np.arange(0.0, span_ms + dt / 2, dt)
    t_peak = tau_rise * tau_decay * np.log(tau_decay / tau_rise) / (tau_decay - tau_rise)
    norm = 1.0 / (np.exp(-t_peak / tau_decay) - np.exp(-t_peak / tau_rise))
    current = peak_nA * norm * (np.exp(-s / tau_decay) - np.exp(-s / tau_rise))
    current[-1] = 0.0
    return np.concatenate([[0.0], onset_ms + s]), np.concatenate([[0.0], current])


def _bac_trial(simulator, soma_pulse: bool, dendritic_epsp: bool, total_ms=400, pulse_onset_ms=295.0,
               pulse_nA=1.9, pulse_ms=5.0):
    from neuron import h

    cell = simulator.cell
    stimuli = []
    if soma_pulse:  # 1.9 nA x 5 ms at the soma (Hay et al. 2011, Fig. 3)
        pulse = h.IClamp(cell.soma[0](0.5))
        pulse.delay, pulse.dur, pulse.amp = pulse_onset_ms, pulse_ms, pulse_nA
        stimuli.append(pulse)
    if dendritic_epsp:  # EPSP-like current at ~620 um, 5 ms after the pulse onset
        clamp = h.IClamp(_apical_site_at(cell, 620.0))
        clamp.delay, clamp.dur = 0.0, 1e9
        t, current = _epsp_like_current(pulse_onset_ms + 5.0)
        times, amplitudes = h.Vector(t), h.Vector(current)
        amplitudes.play(clamp._ref_amp, times, True)
        stimuli += [clamp, times, amplitudes]
    result = simulator.run(silent_input(simulator, total_ms))
    if dendritic_epsp:
        amplitudes.play_remove()
    nexus_plateau_ms = int(np.count_nonzero(result.nexus_voltage[290:] > -40.0))  # 1-ms samples
    return len(result.output_spike_times[result.output_spike_times > 290]), nexus_plateau_ms


def test_bac_firing_neuronio(simulator):
    """Backpropagating AP + distal EPSP -> dendritic Ca spike and an extra somatic spike; neither alone does it.

    Hay et al.'s protocol with the somatic pulse shortened from 5 to 4 ms: in biophys5b the 5-ms
    pulse alone sits at the Ca-spike threshold (a nexus plateau under CVODE and at dt <= 0.01 ms,
    none at dt = 0.025 ms), while 4 ms gives the same answer under every solver tried.
    """
    soma_spikes, soma_plateau = _bac_trial(simulator, soma_pulse=True, dendritic_epsp=False, pulse_ms=4.0)
    epsp_spikes, epsp_plateau = _bac_trial(simulator, soma_pulse=False, dendritic_epsp=True)
    bac_spikes, bac_plateau = _bac_trial(simulator, soma_pulse=True, dendritic_epsp=True, pulse_ms=4.0)
    assert soma_spikes >= 1 and epsp_spikes == 0
    assert soma_plateau <= 2 and epsp_plateau == 0  # no Ca spike from either alone
    assert bac_plateau >= 15  # a prolonged nexus plateau above -40 mV (measured 26 ms)
    assert bac_spikes > soma_spikes


def test_hay2011_biophysics_fires_and_shows_bac_firing(morphology_path):
    """biophys3 in a fresh process: repetitive firing, and Hay et al.'s exact BAC protocol (1.9 nA x 5 ms)."""
    values = run_in_subprocess("hay2011", str(morphology_path))
    assert values["rest_mV"] < -70.0
    assert values["step_spikes"][0] == 0 and values["step_spikes"][1] >= 3
    assert values["step_spikes"][1] < values["step_spikes"][2]
    (soma_spikes, soma_plateau), (epsp_spikes, epsp_plateau), (bac_spikes, bac_plateau) = values["bac"]
    assert soma_spikes == 1 and soma_plateau == 0  # one AP, no Ca spike
    assert epsp_spikes == 0 and epsp_plateau == 0
    assert bac_spikes >= 3 and bac_plateau >= 20  # burst + Ca plateau (measured 3 spikes, 33 ms)


# --------------------------------------------------------------------------- subprocess side

def _block_channels(cell) -> None:
    for sec in cell.all_sections:
        for seg in sec:
            for mechanism in seg:
                if hasattr(mechanism, "gbar"):
                    mechanism.gbar = 0.0


def _network_input_resistance(cell) -> float:
    """Input resistance (MOhm) at soma(0.5) from a DC solve of the compartmental network.

    Nodes: each segment centre, the distal end (x = 1) of every section and the soma's 0 end.
    Each node connects to its parent node through 1 / ri (ri in MOhm: node to parent node) and
    to ground through g_pas * area. A section's first node hangs on the node of the parent
    location it connects to: the parent's end node for x = 1, a centre node otherwise.
    """
    soma = cell.soma[0]
    node = {}
    for sec in cell.all_sections:
        for seg in sec:
            node[(sec, seg.x)] = len(node)
        node[(sec, 1.0)] = len(node)
    node[(soma, 0.0)] = len(node)

    def node_at(sec, x):
        if x == 1.0 or (sec == soma and x == 0.0):
            return node[(sec, x)]
        if x == 0.0:
            parent = sec.parentseg()
            return node_at(parent.sec, parent.x)
        return node[(sec, sec(x).x)]

    conductance = np.zeros((len(node), len(node)))

    def connect(i, j, g):
        conductance[i, i] += g
        conductance[j, j] += g
        conductance[i, j] -= g
        conductance[j, i] -= g

    for sec in cell.all_sections:
        segments = list(sec)
        for k, seg in enumerate(segments):
            i = node[(sec, seg.x)]
            conductance[i, i] += seg.g_pas * seg.area() * 1e-2  # S/cm2 * um2 -> uS
            if k > 0:
                parent = node[(sec, segments[k - 1].x)]
            elif sec == soma:
                parent = node[(soma, 0.0)]
            else:
                parent = node_at(sec.parentseg().sec, sec.parentseg().x)
            connect(i, parent, 1.0 / seg.ri())  # uS
        connect(node[(sec, 1.0)], node[(sec, segments[-1].x)], 1.0 / sec(1.0).ri())
    current = np.zeros(len(node))
    current[node[(soma, 0.5)]] = 1.0  # nA
    return float(np.linalg.solve(conductance, current)[node[(soma, 0.5)]])  # mV / nA = MOhm


def _passive_measurements(morphology: Path) -> dict:
    from neuron import h

    cell = L5PCCell(morphology)
    _block_channels(cell)
    soma = cell.soma[0](0.5)
    h.cvode.active(1)
    h.cvode.atol(1e-6)
    h.finitialize(-90.0)  # with pas alone the cell rests at e_pas everywhere
    impedance = h.Impedance()
    impedance.loc(0.5, sec=soma.sec)
    impedance.compute(0.0)  # DC; the plain (non-extended) form is exact for a passive cell
    clamp = h.IClamp(soma)
    clamp.delay, clamp.dur, clamp.amp = 0.0, 1e9, -0.01
    h.finitialize(-90.0)
    h.continuerun(700.0)  # > 20 membrane time constants (cm / g_pas = 33 ms)
    total_conductance_uS = sum(seg.g_pas * seg.area() * 1e-2 for sec in cell.all_sections for seg in sec)
    return {
        "step": (soma.v + 90.0) / clamp.amp,
        "impedance": impedance.input(0.5, sec=soma.sec),
        "network": _network_input_resistance(cell),
        "isopotential_bound": 1.0 / total_conductance_uS,
    }


def _hay2011_measurements(morphology: Path) -> dict:
    from simulation.config import CellConfig
    from simulation.run import get_simulator

    config = dataclasses.replace(CVODE_CONFIG, cell=CellConfig(biophysics="hay2011", v_init_mV=-80.0))  # Hay's v_init
    simulator = get_simulator(config, morphology)
    rest = float(simulator.run(silent_input(simulator, 300)).soma_voltage[-1])
    step_spikes = []
    for amplitude in (0.3, 0.6, 1.2):
        step_spikes.append(len(_soma_step_spikes(simulator, amplitude)))
    bac = [_bac_trial(simulator, soma_pulse=True, dendritic_epsp=False),
           _bac_trial(simulator, soma_pulse=False, dendritic_epsp=True),
           _bac_trial(simulator, soma_pulse=True, dendritic_epsp=True)]
    return {"rest_mV": rest, "step_spikes": step_spikes, "bac": bac}


if __name__ == "__main__":
    what, morphology = sys.argv[1], Path(sys.argv[2])
    measure = {"passive": _passive_measurements, "hay2011": _hay2011_measurements}[what]
    print(json.dumps(measure(morphology)))
