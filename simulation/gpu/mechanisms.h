// The membrane mechanisms of simulation/mechanisms/*.mod, written out in C.
//
// Each function is the .mod file's PROCEDURE rates or BREAKPOINT, with the same constants
// and the same guards; tests/test_gpu_engine.py compares every steady state, time constant
// and current with NEURON's at many voltages and calcium concentrations. Units as in NEURON:
// mV, ms, mA/cm2 for densities (gbar in S/cm2), nA for point processes (gmax in uS), mM.
//
// `real` is double or float (set by the prelude that layout.py writes); r_exp and friends
// call the math function of that precision.

// -------------------------------------------------------------------------------- helpers

// x / (1 - exp(-x/k)); its removable singularity at x = 0 takes the first-order Taylor
// value k (1 + x / 2k), as FUNCTION linexp in the .mod files.
HD real linexp(real x, real k) {
    if (r_fabs(x / k) < 1e-6) return k * (1.0 + x / (2.0 * k));
    return x / (1.0 - r_exp(-x / k));
}

// The cnexp update of x' = (x_inf - x) / tau over one step with x_inf and tau fixed: exact
// for a linear equation, as nocmodl writes it. -expm1 keeps 1 - exp(-dt/tau) accurate when
// dt << tau, which float needs (slow gates have tau of seconds).
HD real cnexp(real x, real x_inf, real tau, real dt) {
    return x + (x_inf - x) * (-r_expm1(-dt / tau));
}

// Temperature factor of the Hay et al. channels: 2.3^((34 - 21) / 10), a constant (spec 2).
#define QT 2.952882641412121

// -------------------------------------------------------------------------------- channels
// Gates of every channel: dx/dt = (x_inf(v) - x) / tau_x(v).

// NaTa_t.mod: i_na = gbar m^3 h (v - ena)
HD void NaTa_t_rates(real v, real* m_inf, real* tau_m, real* h_inf, real* tau_h) {
    real alpha = 0.182 * linexp(v + 38.0, 6.0), beta = 0.124 * linexp(-(v + 38.0), 6.0);
    *m_inf = alpha / (alpha + beta);
    *tau_m = 1.0 / ((alpha + beta) * QT);
    alpha = 0.015 * linexp(-(v + 66.0), 6.0);
    beta = 0.015 * linexp(v + 66.0, 6.0);
    *h_inf = alpha / (alpha + beta);
    *tau_h = 1.0 / ((alpha + beta) * QT);
}

// NaTs2_t.mod: NaTa_t with both gates shifted by +6 mV; i_na = gbar m^3 h (v - ena)
HD void NaTs2_t_rates(real v, real* m_inf, real* tau_m, real* h_inf, real* tau_h) {
    real alpha = 0.182 * linexp(v + 32.0, 6.0), beta = 0.124 * linexp(-(v + 32.0), 6.0);
    *m_inf = alpha / (alpha + beta);
    *tau_m = 1.0 / ((alpha + beta) * QT);
    alpha = 0.015 * linexp(-(v + 60.0), 6.0);
    beta = 0.015 * linexp(v + 60.0, 6.0);
    *h_inf = alpha / (alpha + beta);
    *tau_h = 1.0 / ((alpha + beta) * QT);
}

// Nap_Et2.mod: i_na = gbar m^3 h (v - ena)
HD void Nap_Et2_rates(real v, real* m_inf, real* tau_m, real* h_inf, real* tau_h) {
    *m_inf = 1.0 / (1.0 + r_exp(-(v + 52.6) / 4.6));
    real alpha = 0.182 * linexp(v + 38.0, 6.0), beta = 0.124 * linexp(-(v + 38.0), 6.0);
    *tau_m = 6.0 / ((alpha + beta) * QT);
    *h_inf = 1.0 / (1.0 + r_exp((v + 48.8) / 10.0));
    alpha = 2.88e-6 * linexp(-(v + 17.0), 4.63);
    beta = 6.94e-6 * linexp(v + 64.4, 2.63);
    *tau_h = 1.0 / ((alpha + beta) * QT);
}

// K_Pst.mod: i_k = gbar m^2 h (v - ek); evaluated at v + 10 mV
HD void K_Pst_rates(real v, real* m_inf, real* tau_m, real* h_inf, real* tau_h) {
    real vs = v + 10.0;
    *m_inf = 1.0 / (1.0 + r_exp(-(vs + 1.0) / 12.0));
    if (vs < -50.0) *tau_m = (1.25 + 175.03 * r_exp(0.026 * vs)) / QT;
    else *tau_m = (1.25 + 13.0 * r_exp(-0.026 * vs)) / QT;
    *h_inf = 1.0 / (1.0 + r_exp((vs + 54.0) / 11.0));
    real x = (vs + 75.0) / 48.0;
    *tau_h = (360.0 + (1010.0 + 24.0 * (vs + 55.0)) * r_exp(-x * x)) / QT;
}

// K_Tst.mod: i_k = gbar m^4 h (v - ek); evaluated at v + 10 mV
HD void K_Tst_rates(real v, real* m_inf, real* tau_m, real* h_inf, real* tau_h) {
    real vs = v + 10.0;
    *m_inf = 1.0 / (1.0 + r_exp(-vs / 19.0));
    real x = (vs + 71.0) / 59.0;
    *tau_m = (0.34 + 0.92 * r_exp(-x * x)) / QT;
    *h_inf = 1.0 / (1.0 + r_exp((vs + 66.0) / 10.0));
    x = (vs + 73.0) / 23.0;
    *tau_h = (8.0 + 49.0 * r_exp(-x * x)) / QT;
}

// SKv3_1.mod: i_k = gbar m (v - ek)
HD void SKv3_1_rates(real v, real* m_inf, real* tau_m) {
    *m_inf = 1.0 / (1.0 + r_exp((v - 18.7) / (-9.7)));
    *tau_m = 0.2 * 20.0 / (1.0 + r_exp((v + 46.56) / (-44.14)));
}

// SK_E2.mod: i_k = gbar z (v - ek); z follows [Ca]i, no voltage dependence
HD void SK_E2_rates(real cai, real* z_inf, real* tau_z) {
    real c = cai;
    if (c < 1e-7) c = c + 1e-7;
    *z_inf = 1.0 / (1.0 + r_pow(0.00043 / c, 4.8));
    *tau_z = 1.0;
}

// Im.mod: i_k = gbar m (v - ek)
HD void Im_rates(real v, real* m_inf, real* tau_m) {
    real alpha = 3.3e-3 * r_exp(2.5 * 0.04 * (v + 35.0));
    real beta = 3.3e-3 * r_exp(-2.5 * 0.04 * (v + 35.0));
    *m_inf = alpha / (alpha + beta);
    *tau_m = 1.0 / ((alpha + beta) * QT);
}

// Ih.mod: i = gbar m (v - ehcn); vhalf is a GLOBAL of the .mod file, vshift a RANGE
HD void Ih_rates(real v, real vhalf, real vshift, real* m_inf, real* tau_m) {
    real alpha = 6.43e-3 * linexp(-(v - (vhalf + vshift)), 11.9);
    real beta = 0.193 * r_exp((v - vshift) / 33.1);
    *m_inf = alpha / (alpha + beta);
    *tau_m = 1.0 / (alpha + beta);
}

// Ca_HVA.mod: i_ca = gbar m^2 h (v - eca)
HD void Ca_HVA_rates(real v, real* m_inf, real* tau_m, real* h_inf, real* tau_h) {
    real alpha = 0.055 * linexp(v + 27.0, 3.8), beta = 0.94 * r_exp((-75.0 - v) / 17.0);
    *m_inf = alpha / (alpha + beta);
    *tau_m = 1.0 / (alpha + beta);
    alpha = 0.000457 * r_exp((-13.0 - v) / 50.0);
    beta = 0.0065 / (r_exp((-v - 15.0) / 28.0) + 1.0);
    *h_inf = alpha / (alpha + beta);
    *tau_h = 1.0 / (alpha + beta);
}

// Ca_LVAst.mod: i_ca = gbar m^2 h (v - eca); evaluated at v + 10 mV
HD void Ca_LVAst_rates(real v, real* m_inf, real* tau_m, real* h_inf, real* tau_h) {
    real vs = v + 10.0;
    *m_inf = 1.0 / (1.0 + r_exp((vs + 30.0) / (-6.0)));
    *tau_m = (5.0 + 20.0 / (1.0 + r_exp((vs + 25.0) / 5.0))) / QT;
    *h_inf = 1.0 / (1.0 + r_exp((vs + 80.0) / 6.4));
    *tau_h = (20.0 + 50.0 / (1.0 + r_exp((vs + 40.0) / 7.0))) / QT;
}

// CaDynamics_E2.mod: cai' = -10000 ica gamma / (2 F depth) - (cai - minCai) / decay, linear in
// cai for a given ica: cnexp relaxes cai towards minCai - decay 10000 ica gamma / (2 F depth).
HD real CaDynamics_E2_step(real cai, real ica, real gamma, real decay, real depth, real min_cai,
                           real faraday, real dt) {
    real target = min_cai - decay * (10000.0 * (ica * gamma / (2.0 * faraday * depth)));
    return cnexp(cai, target, decay, dt);
}

// Nernst potential of Ca2+ (NEURON's nrn_nernst, src/nrnoc/eion.cpp): eca = ktf/2 ln(cao/cai),
// ktf = 1000 R (celsius + 273.15) / F in mV. NEURON returns 1e6 for cai <= 0.
HD real nernst_ca(real cai, real cao, real ktf) {
    if (cai <= 0.0) return 1e6;
    return ktf / 2.0 * r_log(cao / cai);
}

// Conductance (S/cm2) of each channel from its gates: its BREAKPOINT's g = gbar * ...
HD real NaTa_t_conductance(real gbar, real m, real h) { return gbar * m * m * m * h; }
HD real NaTs2_t_conductance(real gbar, real m, real h) { return gbar * m * m * m * h; }
HD real Nap_Et2_conductance(real gbar, real m, real h) { return gbar * m * m * m * h; }
HD real K_Pst_conductance(real gbar, real m, real h) { return gbar * m * m * h; }
HD real K_Tst_conductance(real gbar, real m, real h) { return gbar * m * m * m * m * h; }
HD real Ca_HVA_conductance(real gbar, real m, real h) { return gbar * m * m * h; }
HD real Ca_LVAst_conductance(real gbar, real m, real h) { return gbar * m * m * h; }
HD real SKv3_1_conductance(real gbar, real m) { return gbar * m; }
HD real SK_E2_conductance(real gbar, real z) { return gbar * z; }
HD real Im_conductance(real gbar, real m) { return gbar * m; }
HD real Ih_conductance(real gbar, real m) { return gbar * m; }

// -------------------------------------------------------------------------------- synapses

// AmpaNmda.mod: dual-exponential AMPA and NMDA conductances (uS) with the Jahr & Stevens Mg
// block; i = (g_AMPA + g_NMDA)(v - e) in nA. A_* and B_* are the rise and decay states.
HD real AmpaNmda_current(real v, real a_ampa, real b_ampa, real a_nmda, real b_nmda,
                         real gmax, real e, real mg) {
    real mg_block = 1.0 / (1.0 + r_exp(0.08 * (-v)) * (mg / 3.57));
    real g_ampa = gmax * (b_ampa - a_ampa);
    real g_nmda = gmax * (b_nmda - a_nmda) * mg_block;
    return g_ampa * (v - e) + g_nmda * (v - e);
}

// GabaA.mod: dual-exponential GABA_A conductance; i = gmax (B - A)(v - e) in nA
HD real GabaA_current(real v, real a, real b, real gmax, real e) {
    return gmax * (b - a) * (v - e);
}
