COMMENT
Ca_LVAst: low-voltage-activated (T-type) Ca current (spec section 2.11).
  i_ca = gbar * m^2 * h * (v - eca)
All expressions are evaluated at v' = v + 10 mV; qt = 2.3^((34-21)/10) is a constant.
eca is read, never set (NEURON computes it from cai/cao, spec 1.5).
ENDCOMMENT

NEURON {
    THREADSAFE
    SUFFIX Ca_LVAst
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

CONSTANT {
    qt = 2.952882641412121 : 2.3^((34 - 21)/10)
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
    LOCAL vs
    vs = vm + 10
    m_inf = 1 / (1 + exp((vs + 30) / (-6)))
    tau_m = (5 + 20 / (1 + exp((vs + 25) / 5))) / qt
    h_inf = 1 / (1 + exp((vs + 80) / 6.4))
    tau_h = (20 + 50 / (1 + exp((vs + 40) / 7))) / qt
}
