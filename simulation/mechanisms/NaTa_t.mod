COMMENT
NaTa_t: fast transient Na current (Hay et al. 2011; spec section 2.1).
  i_na = gbar * m^3 * h * (v - ena)
Rates are HH alpha/beta forms measured at 21 degC and sped up to 34 degC by the
constant qt = 2.3^((34-21)/10); qt does not follow NEURON's celsius (spec 2).
The removable singularities at v = -38 mV (m) and v = -66 mV (h) use their analytic
limits (see FUNCTION linexp).
ENDCOMMENT

NEURON {
    THREADSAFE
    SUFFIX NaTa_t
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
    alpha = 0.182 * linexp(vm + 38, 6)
    beta = 0.124 * linexp(-(vm + 38), 6)
    m_inf = alpha / (alpha + beta)
    tau_m = 1 / ((alpha + beta) * qt)

    alpha = 0.015 * linexp(-(vm + 66), 6)
    beta = 0.015 * linexp(vm + 66, 6)
    h_inf = alpha / (alpha + beta)
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
