COMMENT
Ca_HVA: high-voltage-activated Ca current (spec section 2.10).
  i_ca = gbar * m^2 * h * (v - eca)
eca is read, never set: CaDynamics_E2 writes cai, so NEURON recomputes eca from
cai/cao by the Nernst equation (spec 1.5). No temperature factor. The removable
singularity of alpha_m at v = -27 mV uses its analytic limit 0.055 * 3.8.
ENDCOMMENT

NEURON {
    THREADSAFE
    SUFFIX Ca_HVA
    USEION ca READ eca WRITE ica
    RANGE gbar, g
    RANGE m_inf, tau_m, h_inf, tau_h
}

UNITS {
    (S) = (siemens)
    (mV) = (millivolt)
    (mA) = (milliamp)
}

PARAMETER {
    gbar = 0.00001 (S/cm2)
}

ASSIGNED {
    v (mV)
    eca (mV)
    ica (mA/cm2)
    g (S/cm2)
    m_inf
    tau_m (ms)
    h_inf
    tau_h (ms)
}

STATE { m h }

BREAKPOINT {
    SOLVE states METHOD cnexp
    g = gbar * m * m * h
    ica = g * (v - eca)
}

DERIVATIVE states {
    rates(v)
    m' = (m_inf - m) / tau_m
    h' = (h_inf - h) / tau_h
}

INITIAL {
    rates(v)
    m = m_inf
    h = h_inf
}

PROCEDURE rates(vm (mV)) {
    LOCAL alpha, beta
    : 0.055 (-27 - v) / (exp((-27 - v)/3.8) - 1)  ==  0.055 * linexp(v + 27, 3.8)
    alpha = 0.055 * linexp(vm + 27, 3.8)
    beta = 0.94 * exp((-75 - vm) / 17)
    m_inf = alpha / (alpha + beta)
    tau_m = 1 / (alpha + beta)

    alpha = 0.000457 * exp((-13 - vm) / 50)
    beta = 0.0065 / (exp((-vm - 15) / 28) + 1)
    h_inf = alpha / (alpha + beta)
    tau_h = 1 / (alpha + beta)
}

FUNCTION linexp(x, k) {
    : x / (1 - exp(-x/k)); tends to k at x = 0; near 0 its Taylor series k(1 + u/2), u = x/k (relative error u^2/12)
    if (fabs(x / k) < 1e-6) {
        linexp = k * (1 + x / (2 * k))
    } else {
        linexp = x / (1 - exp(-x / k))
    }
}
