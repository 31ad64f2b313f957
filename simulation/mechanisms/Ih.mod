COMMENT
Ih: hyperpolarisation-activated (HCN) non-specific cation current (spec section 2.9).
  i_hcn = gbar * m * (v - ehcn),  ehcn = -45 mV
alpha_m = 6.43e-3 u / (exp(u/11.9) - 1) with u = v - (vhalf + vshift); its removable
singularity at u = 0 uses the analytic limit 6.43e-3 * 11.9 (FUNCTION linexp), so the
guard sits at the true singular voltage whatever vshift is (spec 8.6). vshift = 0 in
NeuronIO. No temperature factor.
ENDCOMMENT

NEURON {
    THREADSAFE
    SUFFIX Ih
    NONSPECIFIC_CURRENT ihcn
    RANGE gbar, g, ehcn, vshift
    RANGE m_inf, tau_m
}

UNITS {
    (S) = (siemens)
    (mV) = (millivolt)
    (mA) = (milliamp)
}

PARAMETER {
    gbar = 0.00001 (S/cm2)
    ehcn = -45 (mV)
    vshift = 0 (mV)
    vhalf = -154.9 (mV)
}

ASSIGNED {
    v (mV)
    ihcn (mA/cm2)
    g (S/cm2)
    m_inf
    tau_m (ms)
}

STATE { m }

BREAKPOINT {
    SOLVE states METHOD cnexp
    g = gbar * m
    ihcn = g * (v - ehcn)
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
    alpha = 6.43e-3 * linexp(-(vm - (vhalf + vshift)), 11.9)
    beta = 0.193 * exp((vm - vshift) / 33.1)
    m_inf = alpha / (alpha + beta)
    tau_m = 1 / (alpha + beta)
}

FUNCTION linexp(x, k) {
    : x / (1 - exp(-x/k)); tends to k at x = 0; near 0 its Taylor series k(1 + u/2), u = x/k (relative error u^2/12)
    if (fabs(x / k) < 1e-6) {
        linexp = k * (1 + x / (2 * k))
    } else {
        linexp = x / (1 - exp(-x / k))
    }
}
