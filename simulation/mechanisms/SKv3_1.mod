COMMENT
SKv3_1: Kv3.1-type fast delayed-rectifier K current (spec section 2.6).
  i_k = gbar * m * (v - ek)
No temperature factor.
ENDCOMMENT

NEURON {
    THREADSAFE
    SUFFIX SKv3_1
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
    m_inf = 1 / (1 + exp((vm - 18.7) / (-9.7)))
    tau_m = 0.2 * 20 / (1 + exp((vm + 46.56) / (-44.14)))
}
