COMMENT
K_Pst: persistent K current (spec section 2.4).
  i_k = gbar * m^2 * h * (v - ek)
All expressions are evaluated at v' = v + 10 mV (a junction-potential correction that
shifts the published curves by -10 mV); qt = 2.3^((34-21)/10) is a constant (spec 2).
tau_m has two branches, split at v' = -50 mV.
ENDCOMMENT

NEURON {
    THREADSAFE
    SUFFIX K_Pst
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
    g = gbar * m * m * h
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
    m_inf = 1 / (1 + exp(-(vs + 1) / 12))
    if (vs < -50) {
        tau_m = (1.25 + 175.03 * exp(0.026 * vs)) / qt
    } else {
        tau_m = (1.25 + 13 * exp(-0.026 * vs)) / qt
    }
    h_inf = 1 / (1 + exp((vs + 54) / 11))
    tau_h = (360 + (1010 + 24 * (vs + 55)) * exp(-((vs + 75) / 48)^2)) / qt
}
