COMMENT
Nap_Et2: persistent Na current (spec section 2.3).
  i_na = gbar * m^3 * h * (v - ena)
Activation: sigmoid steady state, time constant 6x that of NaTa_t's m gate.
Inactivation: sigmoid steady state, very slow alpha/beta time constant.
qt = 2.3^((34-21)/10) is a constant (spec 2). Removable singularities at v = -38
(m), -17 (alpha_h) and -64.4 mV (beta_h) use their analytic limits (FUNCTION linexp).
ENDCOMMENT

NEURON {
    THREADSAFE
    SUFFIX Nap_Et2
    USEION na READ ena WRITE ina
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
    ena (mV)
    ina (mA/cm2)
    g (S/cm2)
    m_inf
    tau_m (ms)
    h_inf
    tau_h (ms)
}

STATE { m h }

BREAKPOINT {
    SOLVE states METHOD cnexp
    g = gbar * m * m * m * h
    ina = g * (v - ena)
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
    m_inf = 1 / (1 + exp(-(vm + 52.6) / 4.6))
    alpha = 0.182 * linexp(vm + 38, 6)
    beta = 0.124 * linexp(-(vm + 38), 6)
    tau_m = 6 / ((alpha + beta) * qt)

    h_inf = 1 / (1 + exp((vm + 48.8) / 10))
    alpha = 2.88e-6 * linexp(-(vm + 17), 4.63)
    beta = 6.94e-6 * linexp(vm + 64.4, 2.63)
    tau_h = 1 / ((alpha + beta) * qt)
}

FUNCTION linexp(x, k) {
    : x / (1 - exp(-x/k)); tends to k at x = 0; near 0 its Taylor series k(1 + u/2), u = x/k (relative error u^2/12)
    if (fabs(x / k) < 1e-6) {
        linexp = k * (1 + x / (2 * k))
    } else {
        linexp = x / (1 - exp(-x / k))
    }
}
