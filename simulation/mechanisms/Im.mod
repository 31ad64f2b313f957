COMMENT
Im: muscarinic (M-type) K current (spec section 2.8).
  i_k = gbar * m * (v - ek)
qt = 2.3^((34-21)/10) is a constant (spec 2).
ENDCOMMENT

NEURON {
    THREADSAFE
    SUFFIX Im
    USEION k READ ek WRITE ik
    RANGE gbar, g
    RANGE m_inf, tau_m
}

UNITS {
    (S) = (siemens)
    (mV) = (millivolt)
    (mA) = (milliamp)
}

PARAMETER {
    gbar = 0.00001 (S/cm2)
}

CONSTANT {
    qt = 2.952882641412121 : 2.3^((34 - 21)/10)
}

ASSIGNED {
    v (mV)
    ek (mV)
    ik (mA/cm2)
    g (S/cm2)
    m_inf
    tau_m (ms)
}

STATE { m }

BREAKPOINT {
    SOLVE states METHOD cnexp
    g = gbar * m
    ik = g * (v - ek)
}

DERIVATIVE states {
    rates(v)
    m' = (m_inf - m) / tau_m
}

INITIAL {
    rates(v)
    m = m_inf
}

PROCEDURE rates(vm (mV)) {
    LOCAL alpha, beta
    alpha = 3.3e-3 * exp(2.5 * 0.04 * (vm + 35))
    beta = 3.3e-3 * exp(-2.5 * 0.04 * (vm + 35))
    m_inf = alpha / (alpha + beta)
    tau_m = 1 / ((alpha + beta) * qt)
}
