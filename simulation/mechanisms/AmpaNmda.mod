COMMENT
AmpaNmda: excitatory synapse, dual-exponential AMPA and NMDA conductances sharing
one weight and one gmax (spec section 4.2).
  g_AMPA = gmax * (B_AMPA - A_AMPA)
  g_NMDA = gmax * (B_NMDA - A_NMDA) * B_Mg(v),  B_Mg(v) = 1 / (1 + exp(-0.08 v) [Mg]/3.57)
  i = (g_AMPA + g_NMDA) * (v - e)     (nA, uS, mV; positive outward)
Each component's factor scales a unit-weight event so that its unblocked peak equals
gmax. Release is deterministic (spec 0, 4.4): every event, including one at t = 0,
adds weight * factor to both A and B. There is no Tsodyks-Markram state and no RNG.
Requires tau_r < tau_d for each component.
ENDCOMMENT

NEURON {
    THREADSAFE
    POINT_PROCESS AmpaNmda
    RANGE tau_r_AMPA, tau_d_AMPA, tau_r_NMDA, tau_d_NMDA, gmax, e, mg
    RANGE g_AMPA, g_NMDA, i_AMPA, i_NMDA, mg_block, factor_AMPA, factor_NMDA
    NONSPECIFIC_CURRENT i
}

UNITS {
    (nA) = (nanoamp)
    (mV) = (millivolt)
    (uS) = (microsiemens)
    (mM) = (milli/liter)
}

PARAMETER {
    tau_r_AMPA = 0.3 (ms)
    tau_d_AMPA = 3 (ms)
    tau_r_NMDA = 2 (ms)
    tau_d_NMDA = 70 (ms)
    gmax = 0.0004 (uS)
    e = 0 (mV)
    mg = 1 (mM)
}

ASSIGNED {
    v (mV)
    i (nA)
    i_AMPA (nA)
    i_NMDA (nA)
    g_AMPA (uS)
    g_NMDA (uS)
    mg_block (1)
    factor_AMPA (1)
    factor_NMDA (1)
}

STATE {
    A_AMPA
    B_AMPA
    A_NMDA
    B_NMDA
}

INITIAL {
    A_AMPA = 0
    B_AMPA = 0
    A_NMDA = 0
    B_NMDA = 0
    factor_AMPA = peak_factor(tau_r_AMPA, tau_d_AMPA)
    factor_NMDA = peak_factor(tau_r_NMDA, tau_d_NMDA)
}

BREAKPOINT {
    SOLVE states METHOD cnexp
    : Jahr & Stevens Mg block as coded in the NeuronIO synapse; instantaneous
    mg_block = 1 / (1 + exp(0.08 * (-v)) * (mg / 3.57))
    g_AMPA = gmax * (B_AMPA - A_AMPA)
    g_NMDA = gmax * (B_NMDA - A_NMDA) * mg_block
    i_AMPA = g_AMPA * (v - e)
    i_NMDA = g_NMDA * (v - e)
    i = i_AMPA + i_NMDA
}

DERIVATIVE states {
    A_AMPA' = -A_AMPA / tau_r_AMPA
    B_AMPA' = -B_AMPA / tau_d_AMPA
    A_NMDA' = -A_NMDA / tau_r_NMDA
    B_NMDA' = -B_NMDA / tau_d_NMDA
}

FUNCTION peak_factor(tau_r (ms), tau_d (ms)) {
    : 1 / (peak of exp(-t/tau_d) - exp(-t/tau_r)), the peak at
    : t_peak = tau_r tau_d / (tau_d - tau_r) ln(tau_d / tau_r)
    LOCAL t_peak
    t_peak = (tau_r * tau_d) / (tau_d - tau_r) * log(tau_d / tau_r)
    peak_factor = 1 / (exp(-t_peak / tau_d) - exp(-t_peak / tau_r))
}

NET_RECEIVE(weight) {
    A_AMPA = A_AMPA + weight * factor_AMPA
    B_AMPA = B_AMPA + weight * factor_AMPA
    A_NMDA = A_NMDA + weight * factor_NMDA
    B_NMDA = B_NMDA + weight * factor_NMDA
}
