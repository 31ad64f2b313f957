"""AmpaNmda and GabaA point processes against the spec (sections 4.2-4.4).

Each synapse sits on a leak-free compartment held by a single-electrode voltage clamp
with a tiny series resistance, so conductances can be checked at a known voltage.
"""

from __future__ import annotations

import numpy as np
import pytest


AMPA = dict(tau_r_AMPA=0.3, tau_d_AMPA=3.0, tau_r_NMDA=2.0, tau_d_NMDA=70.0, gmax=0.0004, e=0.0, mg=1.0)
GABA = dict(tau_r=0.2, tau_d=8.0, gmax=0.001, e=-80.0)


def peak_time(tau_r, tau_d):
    return tau_r * tau_d / (tau_d - tau_r) * np.log(tau_d / tau_r)


def peak_factor(tau_r, tau_d):
    t_peak = peak_time(tau_r, tau_d)
    return 1 / (np.exp(-t_peak / tau_d) - np.exp(-t_peak / tau_r))


def mg_block(v, mg=1.0):
    return 1 / (1 + np.exp(-0.08 * v) * mg / 3.57)


@pytest.fixture
def clamped(h):
    """A function making (section, clamp) held at `voltage` mV; restores solver settings after."""
    cvode = h.CVode()
    # an earlier in-process simulation may have left Crank-Nicolson on (h.secondorder = 2),
    # which rings against a clamp with a 1e-4 MOhm series resistance: use backward Euler
    saved = (h.dt, cvode.active(), cvode.atol(), h.secondorder)
    h.secondorder = 0
    made = []

    def make(voltage):
        section = h.Section(name=f"test_synapses_{len(made)}")
        section.L = section.diam = 10
        clamp = h.SEClamp(section(0.5))
        clamp.rs, clamp.dur1, clamp.amp1 = 1e-4, 1e9, voltage
        made.append((section, clamp))
        return section, clamp

    yield make
    made.clear()  # drop the sections: later tests see none of them
    h.dt, active, atol, h.secondorder = saved
    cvode.active(active)
    cvode.atol(atol)


def run(h, solver, tstop, events, netcon, record):
    """Run with events (ms) queued after INITIAL, as the simulator does (spec 4.5)."""
    cvode = h.CVode()
    cvode.active(solver == "cvode")
    if solver == "cvode":
        cvode.atol(1e-8)
    else:
        h.dt = 0.005
    handler = h.FInitializeHandler(1, lambda: [netcon.event(t) for t in events])
    # sample every 5 us with either solver (CVode then interpolates to the sample times)
    t = h.Vector().record(h._ref_t, 0.005)
    traces = {name: h.Vector().record(ref, 0.005) for name, ref in record.items()}
    h.finitialize(-70)
    h.continuerun(tstop)
    del handler
    t = np.array(t)
    if solver == "fixed":
        # the fixed step evaluates BREAKPOINT (g, i) before advancing the states and records
        # the result at the end of the step: assigned variables lag the time vector by dt
        t = t - h.dt
    return t, {name: np.array(trace) for name, trace in traces.items()}


def make_synapse(h, kind, seg, **params):
    synapse = getattr(h, kind)(seg)
    for name, value in params.items():
        setattr(synapse, name, value)
    netcon = h.NetCon(None, synapse)
    netcon.weight[0], netcon.delay = 1.0, 0.0
    return synapse, netcon


def test_peak_factors_match_spec(h, clamped):
    section, _ = clamped(-70)
    ampa_nmda, _ = make_synapse(h, "AmpaNmda", section(0.5), **AMPA)
    gaba, _ = make_synapse(h, "GabaA", section(0.5), **GABA)
    h.finitialize(-70)
    np.testing.assert_allclose(ampa_nmda.factor_AMPA, 1.435055, atol=1e-6)
    np.testing.assert_allclose(ampa_nmda.factor_NMDA, 1.142886, atol=1e-6)
    np.testing.assert_allclose(gaba.factor, 1.127389, atol=1e-6)
    np.testing.assert_allclose(peak_time(0.3, 3.0), 0.767528, atol=1e-6)


@pytest.mark.parametrize("solver", ["fixed", "cvode"])
def test_gaba_a_unit_event_peaks_at_gmax(h, clamped, solver):
    section, _ = clamped(-50)
    gaba, netcon = make_synapse(h, "GabaA", section(0.5), **GABA)
    t, trace = run(h, solver, 30, [1.0], netcon, {"g": gaba._ref_g, "i": gaba._ref_i, "v": section(0.5)._ref_v})
    peak = trace["g"].argmax()
    np.testing.assert_allclose(trace["g"][peak], GABA["gmax"], rtol=2e-4)
    np.testing.assert_allclose(t[peak] - 1.0, peak_time(0.2, 8.0), atol=0.05)
    # i = g (v - e): outward at -50 mV for e = -80 mV
    np.testing.assert_allclose(trace["i"], trace["g"] * (trace["v"] - GABA["e"]), rtol=1e-6, atol=1e-15)
    assert trace["i"][peak] > 0
    # shape: g(t) = gmax f (exp(-t/tau_d) - exp(-t/tau_r)) after the event
    after = t > 1.0
    s = t[after] - 1.0
    expected = GABA["gmax"] * peak_factor(0.2, 8.0) * (np.exp(-s / 8.0) - np.exp(-s / 0.2))
    np.testing.assert_allclose(trace["g"][after], expected, atol=2e-3 * GABA["gmax"])


@pytest.mark.parametrize("solver", ["fixed", "cvode"])
def test_ampa_and_unblocked_nmda_unit_event_peak_at_gmax(h, clamped, solver):
    section, _ = clamped(-70)
    synapse, netcon = make_synapse(h, "AmpaNmda", section(0.5), **{**AMPA, "mg": 0.0})  # no Mg: B_Mg = 1
    t, trace = run(h, solver, 60, [1.0], netcon, {"ampa": synapse._ref_g_AMPA, "nmda": synapse._ref_g_NMDA})
    for component, (tau_r, tau_d) in {"ampa": (0.3, 3.0), "nmda": (2.0, 70.0)}.items():
        peak = trace[component].argmax()
        np.testing.assert_allclose(trace[component][peak], AMPA["gmax"], rtol=2e-4, err_msg=component)
        np.testing.assert_allclose(t[peak] - 1.0, peak_time(tau_r, tau_d), atol=0.05, err_msg=component)


MG_BLOCK_PUBLISHED = [(-80.0, 0.0059, 4), (-70.0, 0.0130, 4), (-60.0, 0.0285, 4), (-40.0, 0.127, 3), (-20.0, 0.419, 3), (0.0, 0.781, 3)]


@pytest.mark.parametrize("voltage,published,decimals", MG_BLOCK_PUBLISHED)
def test_nmda_mg_block(h, clamped, voltage, published, decimals):
    """B_Mg(v) = 1/(1 + exp(-0.08 v) [Mg]/3.57); the NMDA conductance is scaled by it (spec 4.2)."""
    within_rounding = 0.5 * 10.0**-decimals
    np.testing.assert_allclose(mg_block(voltage), published, atol=within_rounding)
    section, _ = clamped(voltage)
    synapse, netcon = make_synapse(h, "AmpaNmda", section(0.5), **AMPA)
    t, trace = run(
        h, "fixed", 12, [1.0], netcon,
        {"block": synapse._ref_mg_block, "v": section(0.5)._ref_v},
    )
    late = t > 2.0
    np.testing.assert_allclose(trace["v"][late], voltage, atol=1e-3)  # the clamp holds
    np.testing.assert_allclose(trace["block"][late], mg_block(trace["v"][late]), rtol=1e-6)
    np.testing.assert_allclose(trace["block"][-1], published, atol=within_rounding)
    # conductances and current from the states at the end of the run (NMDA still open)
    h.fcurrent()
    v = section(0.5).v
    assert synapse.B_NMDA - synapse.A_NMDA > 0.5
    np.testing.assert_allclose(synapse.g_NMDA, AMPA["gmax"] * (synapse.B_NMDA - synapse.A_NMDA) * mg_block(v), rtol=1e-9)
    np.testing.assert_allclose(synapse.g_AMPA, AMPA["gmax"] * (synapse.B_AMPA - synapse.A_AMPA), rtol=1e-9)
    np.testing.assert_allclose(synapse.i, (synapse.g_AMPA + synapse.g_NMDA) * (v - AMPA["e"]), rtol=1e-9)
    assert synapse.i < 0 or voltage == 0.0  # inward below the 0 mV reversal


@pytest.mark.parametrize("solver", ["fixed", "cvode"])
@pytest.mark.parametrize("kind", ["AmpaNmda", "GabaA"])
def test_event_at_t0_releases_and_every_event_releases(h, clamped, solver, kind):
    """Deterministic release (spec 0, 4.4): an event at t = 0 releases, and so does every later one,
    with no depression or facilitation."""
    section, _ = clamped(-70)
    params, ref = (AMPA, "_ref_g_AMPA") if kind == "AmpaNmda" else (GABA, "_ref_g")
    synapse, netcon = make_synapse(h, kind, section(0.5), **params)
    events = [0.0, 30.0, 31.0, 90.0]
    t, trace = run(h, solver, 120, events, netcon, {"g": getattr(synapse, ref)})
    g = trace["g"]
    assert g[t <= 2.0].max() == pytest.approx(params["gmax"], rel=1e-3)  # the t = 0 event
    assert g[(t > 88.0) & (t < 92.0)].max() == pytest.approx(params["gmax"], rel=2e-3)
    # the whole trace is the sum of identical full-size responses, one per event
    tau_r, tau_d = (0.3, 3.0) if kind == "AmpaNmda" else (0.2, 8.0)
    expected = np.zeros_like(t)
    for event in events:
        s = np.clip(t - event, 0.0, None)
        expected += params["gmax"] * peak_factor(tau_r, tau_d) * (np.exp(-s / tau_d) - np.exp(-s / tau_r))
    np.testing.assert_allclose(g, expected, atol=1e-3 * params["gmax"])


def test_weight_scales_linearly(h, clamped):
    section, _ = clamped(-70)
    synapse, netcon = make_synapse(h, "GabaA", section(0.5), **GABA)
    netcon.weight[0] = 2.5
    _, trace = run(h, "fixed", 20, [1.0], netcon, {"g": synapse._ref_g})
    np.testing.assert_allclose(trace["g"].max(), 2.5 * GABA["gmax"], rtol=2e-4)


def test_default_parameters_are_neuronio_values(h, clamped):
    section, _ = clamped(-70)
    ampa_nmda, gaba = h.AmpaNmda(section(0.5)), h.GabaA(section(0.5))
    for name, value in AMPA.items():
        assert getattr(ampa_nmda, name) == value, name
    for name, value in GABA.items():
        assert getattr(gaba, name) == value, name
