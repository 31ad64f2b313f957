"""The 12 membrane mechanisms against the spec's formulas (section 2), and the build cache.

Reference values are computed here with numpy straight from the spec's alpha/beta and
sigmoid expressions (in their original algebraic form, with the spec's analytic limits at
the removable singularities), independently of the .mod code. NEURON values come from a
single compartment: h.finitialize(v) runs each INITIAL block, which calls the rates
procedure and fills the RANGE variables m_inf, tau_m, h_inf, tau_h (z_inf, tau_z).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

from simulation import mechanisms as mech
from simulation.paths import PROJECT_ROOT

QT = 2.3 ** ((34 - 21) / 10)  # spec 2: constant, independent of celsius
VOLTAGES = [-90.0, -70.0, -50.0, -30.0, -10.0, 10.0]
FARADAY = 96485.33212  # C/mol
GAS_CONSTANT = 8.314462618  # J/(mol K)


# --------------------------------------------------------------------------------------
# reference formulas (spec section 2), vectorised over v in mV


def ratio(numerator, denominator, limit):
    """numerator / denominator, or the spec's analytic limit where both vanish."""
    numerator, denominator = np.asarray(numerator, float), np.asarray(denominator, float)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator == 0, limit, numerator / denominator)


def from_rates(alpha, beta, qt=1.0):
    return alpha / (alpha + beta), 1 / ((alpha + beta) * qt)


def transient_sodium(v, shift):
    """NaTa_t (shift 0) and NaTs2_t (shift 6 mV), spec 2.1-2.2."""
    x, y = v + 38 - shift, v + 66 - shift
    alpha_m = ratio(0.182 * x, 1 - np.exp(-x / 6), 1.092)
    beta_m = ratio(0.124 * x, np.exp(x / 6) - 1, 0.744)
    alpha_h = ratio(0.015 * y, np.exp(y / 6) - 1, 0.09)
    beta_h = ratio(0.015 * y, 1 - np.exp(-y / 6), 0.09)
    return {"m": from_rates(alpha_m, beta_m, QT), "h": from_rates(alpha_h, beta_h, QT)}


def nap_et2(v):
    x = v + 38
    alpha_m = ratio(0.182 * x, 1 - np.exp(-x / 6), 1.092)
    beta_m = ratio(0.124 * x, np.exp(x / 6) - 1, 0.744)
    alpha_h = ratio(-2.88e-6 * (v + 17), 1 - np.exp((v + 17) / 4.63), 2.88e-6 * 4.63)
    beta_h = ratio(6.94e-6 * (v + 64.4), 1 - np.exp(-(v + 64.4) / 2.63), 6.94e-6 * 2.63)
    return {
        "m": (1 / (1 + np.exp(-(v + 52.6) / 4.6)), 6 / ((alpha_m + beta_m) * QT)),
        "h": (1 / (1 + np.exp((v + 48.8) / 10)), 1 / ((alpha_h + beta_h) * QT)),
    }


def k_pst(v):
    vs = v + 10
    tau_m = np.where(vs < -50, 1.25 + 175.03 * np.exp(0.026 * vs), 1.25 + 13 * np.exp(-0.026 * vs)) / QT
    tau_h = (360 + (1010 + 24 * (vs + 55)) * np.exp(-(((vs + 75) / 48) ** 2))) / QT
    return {
        "m": (1 / (1 + np.exp(-(vs + 1) / 12)), tau_m),
        "h": (1 / (1 + np.exp((vs + 54) / 11)), tau_h),
    }


def k_tst(v):
    vs = v + 10
    return {
        "m": (1 / (1 + np.exp(-vs / 19)), (0.34 + 0.92 * np.exp(-(((vs + 71) / 59) ** 2))) / QT),
        "h": (1 / (1 + np.exp((vs + 66) / 10)), (8 + 49 * np.exp(-(((vs + 73) / 23) ** 2))) / QT),
    }


def skv3_1(v):
    return {"m": (1 / (1 + np.exp((v - 18.7) / -9.7)), 0.2 * 20 / (1 + np.exp((v + 46.56) / -44.14)))}


def im(v):
    alpha = 3.3e-3 * np.exp(2.5 * 0.04 * (v + 35))
    beta = 3.3e-3 * np.exp(-2.5 * 0.04 * (v + 35))
    return {"m": from_rates(alpha, beta, QT)}


def ih(v):
    u = v - (-154.9 + 0.0)  # vhalf + vshift
    alpha = ratio(6.43e-3 * u, np.exp(u / 11.9) - 1, 0.076517)
    beta = 0.193 * np.exp((v - 0.0) / 33.1)
    return {"m": from_rates(alpha, beta)}


def ca_hva(v):
    alpha_m = ratio(0.055 * (-27 - v), np.exp((-27 - v) / 3.8) - 1, 0.209)
    beta_m = 0.94 * np.exp((-75 - v) / 17)
    alpha_h = 0.000457 * np.exp((-13 - v) / 50)
    beta_h = 0.0065 / (np.exp((-v - 15) / 28) + 1)
    return {"m": from_rates(alpha_m, beta_m), "h": from_rates(alpha_h, beta_h)}


def ca_lvast(v):
    vs = v + 10
    return {
        "m": (1 / (1 + np.exp((vs + 30) / -6)), (5 + 20 / (1 + np.exp((vs + 25) / 5))) / QT),
        "h": (1 / (1 + np.exp((vs + 80) / 6.4)), (20 + 50 / (1 + np.exp((vs + 40) / 7))) / QT),
    }


def sk_e2_z_inf(cai):
    c = np.where(cai < 1e-7, cai + 1e-7, cai)
    return 1 / (1 + (0.00043 / c) ** 4.8)


def nernst_eca(cai, cao=2.0, celsius=6.3):
    return 1e3 * GAS_CONSTANT * (celsius + 273.15) / (2 * FARADAY) * np.log(cao / cai)


# channel -> (reference gates, special voltages: singularities / branch points, ion, exponents)
CHANNELS = {
    "NaTa_t": (lambda v: transient_sodium(v, 0.0), [-38.0, -66.0], "na", {"m": 3, "h": 1}),
    "NaTs2_t": (lambda v: transient_sodium(v, 6.0), [-32.0, -60.0], "na", {"m": 3, "h": 1}),
    "Nap_Et2": (nap_et2, [-38.0, -17.0, -64.4], "na", {"m": 3, "h": 1}),
    "K_Pst": (k_pst, [-60.0], "k", {"m": 2, "h": 1}),
    "K_Tst": (k_tst, [], "k", {"m": 4, "h": 1}),
    "SKv3_1": (skv3_1, [], "k", {"m": 1}),
    "Im": (im, [], "k", {"m": 1}),
    "Ih": (ih, [-154.9], "hcn", {"m": 1}),
    "Ca_HVA": (ca_hva, [-27.0], "ca", {"m": 2, "h": 1}),
    "Ca_LVAst": (ca_lvast, [], "ca", {"m": 2, "h": 1}),
}
VOLTAGE_GATED = list(CHANNELS)
ALL_MECHANISMS = VOLTAGE_GATED + ["SK_E2", "CaDynamics_E2"]


# --------------------------------------------------------------------------------------
# NEURON fixtures


@pytest.fixture
def neuron_globals(h):
    """Restore the NEURON globals a test changes, for the other tests in this process."""
    cvode = h.CVode()
    saved = (h.celsius, h.dt, cvode.active(), cvode.atol(), h.cai0_ca_ion, h.cao0_ca_ion, h.secondorder)
    h.celsius, h.cai0_ca_ion, h.cao0_ca_ion, h.secondorder = 6.3, 5e-5, 2.0, 0
    cvode.active(0)
    yield h
    h.celsius, h.dt, active, atol, h.cai0_ca_ion, h.cao0_ca_ion, h.secondorder = saved
    cvode.active(active)
    cvode.atol(atol)


def compartment(h, name, mechanisms, gbar=0.0):
    """A 20 x 20 um compartment with the given mechanisms and no passive leak."""
    section = h.Section(name=name)
    section.L = section.diam = 20
    for mechanism in mechanisms:
        section.insert(mechanism)
        if hasattr(section(0.5), f"gbar_{mechanism}"):
            setattr(section(0.5), f"gbar_{mechanism}", gbar)
    if any(m in mechanisms for m in ("NaTa_t", "NaTs2_t", "Nap_Et2")):
        section.ena = 50
    if any(m in mechanisms for m in ("K_Pst", "K_Tst", "SKv3_1", "Im", "SK_E2")):
        section.ek = -85
    return section


@pytest.fixture(scope="module")
def probe(h):
    """One compartment with every mechanism at gbar = 0: the gates run, no current flows,
    so a voltage set by hand stays put (an ideal voltage clamp)."""
    section = compartment(h, "test_channels_probe", ALL_MECHANISMS)
    yield section
    del section  # the only reference: the section is deleted, other tests never see it


def gate_values(h, section, channel, gate, voltage):
    """(x_inf, tau_x) read from NEURON after initialising the whole cell at `voltage`."""
    h.finitialize(voltage)
    seg = section(0.5)
    return getattr(seg, f"{gate}_inf_{channel}"), getattr(seg, f"tau_{gate}_{channel}")


# --------------------------------------------------------------------------------------
# steady states and time constants


@pytest.mark.parametrize("channel", VOLTAGE_GATED)
def test_steady_states_and_time_constants(channel, probe, neuron_globals):
    h = neuron_globals
    reference, special_voltages, _, exponents = CHANNELS[channel]
    for voltage in VOLTAGES + special_voltages:
        expected = reference(np.float64(voltage))
        for gate in exponents:
            x_inf, tau = gate_values(h, probe, channel, gate, voltage)
            expected_inf, expected_tau = expected[gate]
            assert np.isfinite(x_inf) and np.isfinite(tau), (channel, gate, voltage)
            np.testing.assert_allclose(x_inf, expected_inf, rtol=1e-9, err_msg=f"{channel} {gate}_inf at {voltage} mV")
            np.testing.assert_allclose(tau, expected_tau, rtol=1e-9, err_msg=f"{channel} tau_{gate} at {voltage} mV")


@pytest.mark.parametrize(
    "channel,singular_voltage",
    [(c, v) for c, (_, specials, _, _) in CHANNELS.items() for v in specials if c != "K_Pst"],
)
def test_continuous_through_removable_singularity(channel, singular_voltage, probe, neuron_globals):
    """Near the singular voltage the gates agree with both the direct formula and the limit."""
    h = neuron_globals
    reference, _, _, exponents = CHANNELS[channel]
    # 1e-7 and 2e-6 mV fall inside the series branch of the mod's linexp (|x/k| < 1e-6) for every k
    for offset in (-1e-3, -2e-6, -1e-7, 1e-7, 2e-6, 1e-3):
        voltage = singular_voltage + offset
        expected = reference(np.float64(voltage))
        at_limit = reference(np.float64(singular_voltage))
        for gate in exponents:
            x_inf, tau = gate_values(h, probe, channel, gate, voltage)
            # the direct formula loses < 1e-8 to cancellation at 1e-7 mV from the singularity
            np.testing.assert_allclose([x_inf, tau], expected[gate], rtol=2e-8)
            np.testing.assert_allclose([x_inf, tau], at_limit[gate], rtol=1e-3)


def test_k_pst_tau_m_branches(probe, neuron_globals):
    """tau_m switches formula at v' = v + 10 = -50 mV; the upper branch holds at the split."""
    h = neuron_globals
    for voltage, formula in [(-60.0, "upper"), (-60.001, "lower"), (-59.999, "upper")]:
        vs = voltage + 10
        expected = (1.25 + 13 * np.exp(-0.026 * vs)) / QT if formula == "upper" else (1.25 + 175.03 * np.exp(0.026 * vs)) / QT
        _, tau = gate_values(h, probe, "K_Pst", "m", voltage)
        np.testing.assert_allclose(tau, expected, rtol=1e-12)


def test_temperature_factor_is_constant(probe, neuron_globals):
    """qt is fixed at 2.3^1.3: celsius (which only sets eca) leaves the kinetics alone (spec 1.6)."""
    h = neuron_globals
    taus = {}
    for celsius in (6.3, 34.0):
        h.celsius = celsius
        taus[celsius] = gate_values(h, probe, "NaTa_t", "m", -40.0)[1]
    assert taus[6.3] == taus[34.0]
    np.testing.assert_allclose(taus[6.3], transient_sodium(np.float64(-40.0), 0.0)["m"][1], rtol=1e-9)


def test_sk_e2_calcium_dependence(probe, neuron_globals):
    """z_inf is the Hill function of cai (Kd 0.43 uM, n 4.8), shifted by 1e-7 mM below 1e-7; tau_z = 1 ms."""
    h = neuron_globals
    for cai in [0.0, 1e-8, 9.99e-8, 1e-7, 5e-5, 1e-4, 4.3e-4, 1e-3, 1e-2]:
        h.cai0_ca_ion = cai
        h.finitialize(-70)
        seg = probe(0.5)
        assert seg.cai == cai
        np.testing.assert_allclose(seg.z_inf_SK_E2, sk_e2_z_inf(np.float64(cai)), rtol=1e-9, atol=1e-300)
        assert seg.tau_z_SK_E2 == 1.0
        assert seg.z_SK_E2 == seg.z_inf_SK_E2
    np.testing.assert_allclose(sk_e2_z_inf(np.float64(4.3e-4)), 0.5)


# --------------------------------------------------------------------------------------
# currents: i = gbar * gates * (v - E)


@pytest.mark.parametrize("channel", VOLTAGE_GATED + ["SK_E2"])
def test_current_density(channel, h, neuron_globals):
    gbar, voltage = 0.01, -20.0
    section = compartment(h, f"test_channels_current_{channel}", [channel], gbar=gbar)
    try:
        h.finitialize(voltage)
        seg = section(0.5)
        if channel == "SK_E2":
            conductance = gbar * sk_e2_z_inf(np.float64(h.cai0_ca_ion))
            ion = "k"
        else:
            reference, _, ion, exponents = CHANNELS[channel]
            gates = reference(np.float64(voltage))
            conductance = gbar * np.prod([gates[g][0] ** p for g, p in exponents.items()])
        reversal = seg.ehcn_Ih if ion == "hcn" else getattr(seg, f"e{ion}")
        current = seg.ihcn_Ih if channel == "Ih" else getattr(seg, f"i{ion}")
        np.testing.assert_allclose(getattr(seg, f"g_{channel}"), conductance, rtol=1e-9)
        np.testing.assert_allclose(current, conductance * (voltage - reversal), rtol=1e-9)
        assert current != 0
    finally:
        del section


def test_naming_contract(probe):
    seg = probe(0.5)
    for channel in VOLTAGE_GATED + ["SK_E2"]:
        assert hasattr(seg, f"gbar_{channel}"), channel
    assert seg.ehcn_Ih == -45.0
    assert (seg.gamma_CaDynamics_E2, seg.decay_CaDynamics_E2) == (0.05, 80.0)
    assert (seg.depth_CaDynamics_E2, seg.minCai_CaDynamics_E2) == (0.1, 1e-4)


# --------------------------------------------------------------------------------------
# dynamics: after an ideal voltage step the gate relaxes with the predicted time constant

STEPS = [  # (channel, gate, holding mV, step mV): one case per kind of gate
    ("NaTa_t", "m", -80.0, -30.0),  # alpha/beta with qt, fast
    ("NaTs2_t", "h", -80.0, -30.0),  # alpha/beta with qt, inactivation
    ("Nap_Et2", "m", -80.0, -40.0),  # sigmoid steady state, alpha/beta tau
    ("K_Pst", "m", -80.0, -20.0),  # sigmoid, two-branch tau, v + 10 shift
    ("K_Tst", "h", -80.0, -30.0),  # sigmoid with Gaussian tau
    ("SKv3_1", "m", -80.0, 0.0),  # no qt
    ("Im", "m", -80.0, -30.0),  # exponential alpha/beta
    ("Ih", "m", -60.0, -100.0),  # activation by hyperpolarisation, no qt
    ("Ca_HVA", "h", -80.0, -10.0),  # alpha/beta without qt
    ("Ca_LVAst", "h", -90.0, -50.0),  # sigmoid tau
]


@pytest.mark.parametrize("channel,gate,holding,step", STEPS)
@pytest.mark.parametrize("solver", ["fixed", "cvode"])
def test_gate_relaxes_after_voltage_step(channel, gate, holding, step, solver, probe, neuron_globals):
    h = neuron_globals
    reference = CHANNELS[channel][0]
    x_start = reference(np.float64(holding))[gate][0]
    x_inf, tau = reference(np.float64(step))[gate]
    cvode = h.CVode()
    h.dt = 0.025
    if solver == "cvode":
        cvode.active(1)
        cvode.atol(1e-10)
    h.finitialize(holding)
    for seg in probe:
        seg.v = step  # no membrane current (gbar = 0), so v stays at the step
    if solver == "cvode":
        cvode.re_init()
    state = getattr(probe(0.5), f"_ref_{gate}_{channel}")
    for fraction in (0.1, 0.5, 1.0, 2.0):
        t = min(round(fraction * tau / h.dt) * h.dt, 40.0)
        if t == 0:
            continue
        if solver == "cvode":
            cvode.solve(t)
        else:
            while h.t < t - h.dt / 2:
                h.fadvance()
        expected = x_inf + (x_start - x_inf) * np.exp(-h.t / tau)
        assert abs(state[0] - expected) < 1e-6 * max(1.0, abs(x_start - x_inf)) + 1e-9, (h.t, state[0], expected)
    assert abs(probe(0.5).v - step) < 1e-9


def test_sk_e2_relaxes_with_1_ms(h, neuron_globals):
    """A calcium step (cai held by hand, no Ca pool in this compartment) drives z with tau 1 ms."""
    section = compartment(h, "test_channels_sk", ["SK_E2"])
    try:
        h.dt = 0.025
        h.finitialize(-70)
        z_start = section(0.5).z_SK_E2
        section(0.5).cai = 5e-4
        z_inf = sk_e2_z_inf(np.float64(5e-4))
        while h.t < 2.0 - h.dt / 2:
            h.fadvance()
            expected = z_inf + (z_start - z_inf) * np.exp(-h.t / 1.0)
            assert abs(section(0.5).z_SK_E2 - expected) < 1e-9
    finally:
        del section


# --------------------------------------------------------------------------------------
# CaDynamics_E2 and the Nernst eca


def test_calcium_decays_to_min_cai(h, neuron_globals):
    """No Ca current: cai relaxes from cai0 = 5e-5 mM to minCai with tau = decay; eca follows Nernst."""
    decay = 35.725651  # apical value, spec 3.1
    section = compartment(h, "test_channels_cadyn", ["CaDynamics_E2"])
    try:
        section(0.5).decay_CaDynamics_E2 = decay
        h.dt = 0.025
        h.finitialize(-76)
        seg = section(0.5)
        assert seg.cai == 5e-5  # no INITIAL block: NEURON's cai0_ca_ion (spec 1.5)
        np.testing.assert_allclose(seg.eca, 127.59, atol=0.005)
        for t in (5.0, 20.0, 50.0, 100.0):
            while h.t < t - h.dt / 2:
                h.fadvance()
            expected = 1e-4 + (5e-5 - 1e-4) * np.exp(-h.t / decay)
            np.testing.assert_allclose(seg.cai, expected, rtol=1e-9)
            h.fcurrent()  # eca is refreshed from cai at the start of each step; refresh it now
            np.testing.assert_allclose(seg.eca, nernst_eca(seg.cai), rtol=1e-6)
    finally:
        del section


def test_eca_at_rest_and_temperature(h, neuron_globals):
    """eca = 119.24 mV at cai = 1e-4 mM and celsius 6.3 (spec 1.5); 131.1 mV at 34 degC (spec 1.6)."""
    section = compartment(h, "test_channels_eca", ["CaDynamics_E2", "Ca_HVA"])
    try:
        h.cai0_ca_ion = 1e-4
        h.finitialize(-76)
        np.testing.assert_allclose(section(0.5).eca, 119.24, atol=0.005)
        h.celsius = 34.0
        h.finitialize(-76)
        np.testing.assert_allclose(section(0.5).eca, 131.1, atol=0.05)
        np.testing.assert_allclose(section(0.5).eca, nernst_eca(1e-4, celsius=34.0), rtol=1e-6)
    finally:
        del section


def test_calcium_influx_rate(h, neuron_globals):
    """dcai/dt = -10000 ica gamma / (2 F depth) - (cai - minCai)/decay, measured over one tiny step."""
    section = compartment(h, "test_channels_influx", ["Ca_HVA", "CaDynamics_E2"], gbar=0.001)
    try:
        section.cm = 1e9  # v effectively clamped while Ca flows in
        seg = section(0.5)
        seg.gamma_CaDynamics_E2, seg.depth_CaDynamics_E2, seg.decay_CaDynamics_E2 = 0.05, 0.1, 80.0
        h.dt = 1e-4
        h.finitialize(-10)
        cai0, ica0 = seg.cai, seg.ica
        assert ica0 < 0
        h.fadvance()
        expected_rate = -10000 * ica0 * 0.05 / (2 * FARADAY * 0.1) - (cai0 - 1e-4) / 80.0
        np.testing.assert_allclose((seg.cai - cai0) / h.dt, expected_rate, rtol=1e-3)
    finally:
        del section


# --------------------------------------------------------------------------------------
# the build cache (simulation.mechanisms)


def small_mod_dir(tmp_path, name="mods"):
    """A copy of one small .mod file: compiles in about 2 s."""
    directory = tmp_path / name
    directory.mkdir()
    shutil.copy(mech.MOD_DIR / "SKv3_1.mod", directory)
    return directory


def test_hash_follows_mod_contents(tmp_path):
    copy = tmp_path / "mechanisms"
    shutil.copytree(mech.MOD_DIR, copy)
    original = mech.mechanisms_sha256()
    assert mech.mechanisms_sha256(copy) == original and len(original) == 64
    (copy / "Im.mod").write_text((copy / "Im.mod").read_text() + "\n: an edit\n")
    edited = mech.mechanisms_sha256(copy)
    assert edited != original
    (copy / "Extra.mod").write_text((copy / "SKv3_1.mod").read_text().replace("SKv3_1", "Extra"))
    assert mech.mechanisms_sha256(copy) not in (original, edited)
    assert mech.build_directory(coreneuron=True).name == original + "-coreneuron"


def test_compile_cache_is_reused(tmp_path):
    mods, root = small_mod_dir(tmp_path), tmp_path / "cache"
    build = mech.compile_mechanisms(mod_dir=mods, root=root)
    assert build == root / mech.mechanisms_sha256(mods)
    assert mech.is_built(build) and mech.library_path(build).is_file()
    stamp = (build / mech.BUILD_INFO).stat()

    started = time.perf_counter()
    again = mech.compile_mechanisms(mod_dir=mods, root=root)
    assert again == build and time.perf_counter() - started < 0.5
    assert (build / mech.BUILD_INFO).stat().st_mtime_ns == stamp.st_mtime_ns  # not rebuilt
    assert sorted(p.name for p in root.iterdir() if not p.name.startswith(".")) == [build.name]
    assert not list(root.glob(".tmp-*"))

    (mods / "SKv3_1.mod").write_text((mods / "SKv3_1.mod").read_text().replace("0.2 * 20", "0.2 * 21"))
    rebuilt = mech.compile_mechanisms(mod_dir=mods, root=root)
    assert rebuilt != build and mech.is_built(rebuilt) and mech.is_built(build)


def test_concurrent_compiles_build_once(tmp_path):
    """Two processes asking at once: one compiles, the other waits on the lock and reuses it."""
    mods, root = small_mod_dir(tmp_path), tmp_path / "cache"
    script = (
        "import sys; from simulation.mechanisms import compile_mechanisms; "
        "print(compile_mechanisms(mod_dir=sys.argv[1], root=sys.argv[2]))"
    )
    processes = [
        subprocess.Popen([sys.executable, "-c", script, str(mods), str(root)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=PROJECT_ROOT)
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=300) for p in processes]
    assert [p.returncode for p in processes] == [0, 0], outputs
    paths = {out.strip().splitlines()[-1] for out, _ in outputs}
    assert paths == {str(root / mech.mechanisms_sha256(mods))}
    assert [p.name for p in root.iterdir() if not p.name.startswith(".")] == [mech.mechanisms_sha256(mods)]
    assert not list(root.glob(".tmp-*"))


def test_failed_compile_reports_nrnivmodl_output(tmp_path):
    mods, root = small_mod_dir(tmp_path), tmp_path / "cache"
    (mods / "Broken.mod").write_text("NEURON { SUFFIX Broken }\nBREAKPOINT { x = = 1 }\n")
    with pytest.raises(mech.MechanismBuildError, match="(?s)nrnivmodl.*failed.*Broken") as failure:
        mech.compile_mechanisms(mod_dir=mods, root=root)
    assert "last lines of its output" in str(failure.value)
    assert [p.name for p in root.iterdir() if not p.name.startswith(".")] == []  # nothing half-built


def test_load_is_idempotent_and_refuses_a_second_build(h, tmp_path):
    first = mech.load_mechanisms()
    assert mech.load_mechanisms() == first == mech.loaded_build()
    mods = small_mod_dir(tmp_path)
    with pytest.raises(mech.MechanismLoadError, match="already loaded"):
        mech.load_mechanisms(mod_dir=mods, root=tmp_path / "cache")
    assert not (tmp_path / "cache").exists()  # refused before compiling anything


def test_pipeline_verb_reports_cached_build(h, capsys):
    import argparse

    from pipelines import mechanisms as verb

    parser = argparse.ArgumentParser()
    verb.add_arguments(parser)
    assert verb.main(parser.parse_args([])) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == str(mech.build_directory()) and lines[1].startswith("cached")


def test_pipeline_verb_refuses_a_cache_that_is_a_file(tmp_path, capsys):
    """`--cache` naming a file ended `mechanisms` with a FileExistsError traceback."""
    import pipelines.__main__ as dispatcher

    cache = tmp_path / "notes.txt"
    cache.write_text("kept\n")
    assert dispatcher.main(["mechanisms", "--cache", str(cache)]) == 2
    err = capsys.readouterr().err
    assert err == f"error: cannot write to {cache}: File exists\n"
    assert cache.read_text() == "kept\n"


@pytest.mark.slow
def test_coreneuron_build_matches_neuron(tmp_path):
    """`nrnivmodl -coreneuron` (about 20 s here) and a CoreNEURON run that agrees with NEURON."""
    script = r"""
import numpy as np
from simulation.mechanisms import load_mechanisms
load_mechanisms(coreneuron=True)
from neuron import coreneuron, h
h.load_file("stdrun.hoc")
soma = h.Section(name="soma"); soma.L = soma.diam = 20
for name in ["pas", "NaTs2_t", "SKv3_1", "SK_E2", "Im", "Ih", "Ca_HVA", "Ca_LVAst", "CaDynamics_E2"]:
    soma.insert(name)
soma.gbar_NaTs2_t, soma.gbar_SKv3_1, soma.gbar_SK_E2, soma.ena, soma.ek = 1.0, 0.34, 0.1, 50, -85
synapse = h.AmpaNmda(soma(0.5)); netcon = h.NetCon(None, synapse); netcon.weight[0] = 100
handler = h.FInitializeHandler(1, lambda: netcon.event(5.0))
v = h.Vector().record(soma(0.5)._ref_v)
h.cvode.cache_efficient(1)
pc = h.ParallelContext()
traces = []
for use_coreneuron in (False, True):
    coreneuron.enable = use_coreneuron
    h.finitialize(-76); pc.set_maxstep(10); pc.psolve(50)
    traces.append(np.array(v))
assert traces[0].max() > 0, "no spike"
print("MAXDIFF", np.abs(traces[0] - traces[1]).max())
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600, cwd=PROJECT_ROOT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    max_difference = float(result.stdout.split("MAXDIFF")[-1])
    assert max_difference < 0.01
