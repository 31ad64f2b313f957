COMMENT
SK_E2: small-conductance Ca-activated K current (spec section 2.7).
  i_k = gbar * z * (v - ek)
z follows a Hill function of the submembrane [Ca]i (Kd 0.43 uM, n = 4.8) with a
constant 1 ms time constant; no voltage dependence, no temperature factor.
Below 1e-7 mM the Hill function is evaluated at cai + 1e-7 mM, as in the original,
which keeps (0.00043/c)^4.8 finite when cai reaches 0.
ENDCOMMENT

NEURON {
    THREADSAFE
    SUFFIX SK_E2
    USEION k READ ek WRITE ik
    USEION ca READ cai
    RANGE gbar, g
    RANGE z_inf, tau_z
}

UNITS {
    (S) = (siemens)
    (mV) = (millivolt)
    (mA) = (milliamp)
    (mM) = (milli/liter)
}

PARAMETER {
    gbar = 0.000001 (S/cm2)
}

ASSIGNED {
    v (mV)
    ek (mV)
    cai (mM)
    ik (mA/cm2)
    g (S/cm2)
    z_inf
    tau_z (ms)
}

STATE { z FROM 0 TO 1 }

BREAKPOINT {
    SOLVE states METHOD cnexp
    g = gbar * z
    ik = g * (v - ek)
}

DERIVATIVE states {
    rates(cai)
    z' = (z_inf - z) / tau_z
}

INITIAL {
    rates(cai)
    z = z_inf
}

PROCEDURE rates(ca (mM)) {
    LOCAL c
    c = ca
    if (c < 1e-7) {
        c = c + 1e-7
    }
    z_inf = 1 / (1 + (0.00043 / c)^4.8)
    tau_z = 1
}
