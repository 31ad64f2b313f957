COMMENT
GabaA: inhibitory synapse, dual-exponential GABA_A conductance (spec section 4.3).
  g = gmax * (B - A),  i = g * (v - e)     (nA, uS, mV; positive outward)
The factor scales a unit-weight event so that its peak conductance equals gmax.
Release is deterministic (spec 0, 4.4): every event, including one at t = 0, adds
weight * factor to A and B. Requires tau_r < tau_d.
ENDCOMMENT

NEURON {
    THREADSAFE
    POINT_PROCESS GabaA
    RANGE tau_r, tau_d, gmax, e
    RANGE g, factor
    NONSPECIFIC_CURRENT i
}

UNITS {
    (nA) = (nanoamp)
    (mV) = (millivolt)
    (uS) = (microsiemens)
}

PARAMETER {
    tau_r = 0.2 (ms)
    tau_d = 8 (ms)
    gmax = 0.001 (uS)
    e = -80 (mV)
}

ASSIGNED {
    v (mV)
    i (nA)
    g (uS)
    factor (1)
}

STATE {
    A
    B
}

INITIAL {
    A = 0
    B = 0
    factor = peak_factor(tau_r, tau_d)
}

BREAKPOINT {
    SOLVE states METHOD cnexp
    g = gmax * (B - A)
    i = g * (v - e)
}

DERIVATIVE states {
    A' = -A / tau_r
    B' = -B / tau_d
}

FUNCTION peak_factor(tau_rise (ms), tau_decay (ms)) {
    : 1 / (peak of exp(-t/tau_decay) - exp(-t/tau_rise)), the peak at
    : t_peak = tau_rise tau_decay / (tau_decay - tau_rise) ln(tau_decay / tau_rise)
    LOCAL t_peak
    t_peak = (tau_rise * tau_decay) / (tau_decay - tau_rise) * log(tau_decay / tau_rise)
    peak_factor = 1 / (exp(-t_peak / tau_decay) - exp(-t_peak / tau_rise))
}

NET_RECEIVE(weight) {
    A = A + weight * factor
    B = B + weight * factor
}
