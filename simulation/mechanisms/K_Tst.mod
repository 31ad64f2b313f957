COMMENT
K_Tst: transient (A-type) K current (spec section 2.5).
  i_k = gbar * m^4 * h * (v - ek)
All expressions are evaluated at v' = v + 10 mV; qt = 2.3^((34-21)/10) is a constant.
ENDCOMMENT

NEURON {
    THREADSAFE
    SUFFIX K_Tst
    USEION k READ ek WRITE ik
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
    h_inf
    tau_h (ms)
}

STATE { m h }

BREAKPOINT {
    SOLVE states METHOD cnexp
    g = gbar * m * m * m * m * h
    ik = g * (v - ek)
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
    LOCAL vs
    vs = vm + 10
    m_inf = 1 / (1 + exp(-vs / 19))
    tau_m = (0.34 + 0.92 * exp(-((vs + 71) / 59)^2)) / qt
    h_inf = 1 / (1 + exp((vs + 66) / 10))
    tau_h = (8 + 49 * exp(-((vs + 73) / 23)^2)) / qt
}
