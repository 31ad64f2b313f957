COMMENT
CaDynamics_E2: submembrane Ca pool (spec section 2.12).
  dcai/dt = -10000 * ica * gamma / (2 F depth) - (cai - minCai) / decay
ica (mA/cm2, the sum of Ca_HVA and Ca_LVAst) enters a shell of the given depth (um);
gamma is the free (unbuffered) fraction; the factor 10000 converts
mA/cm2 / (C/mol * um) into mM/ms. Writing cai makes NEURON recompute eca by the Nernst
equation at the current celsius (spec 1.5).
There is deliberately no INITIAL block: cai starts at NEURON's cai0_ca_ion
(5e-5 mM) and relaxes towards minCai, as in NeuronIO (spec 1.5, 1.7).
ENDCOMMENT

NEURON {
    THREADSAFE
    SUFFIX CaDynamics_E2
    USEION ca READ ica WRITE cai
    RANGE gamma, decay, depth, minCai
}

UNITS {
    (mV) = (millivolt)
    (mA) = (milliamp)
    (mM) = (milli/liter)
    (um) = (micron)
    FARADAY = (faraday) (coulomb)
}

PARAMETER {
    gamma = 0.05 (1)
    decay = 80 (ms)
    depth = 0.1 (um)
    minCai = 1e-4 (mM)
}

ASSIGNED {
    ica (mA/cm2)
}

STATE { cai (mM) }

BREAKPOINT {
    SOLVE states METHOD cnexp
}

DERIVATIVE states {
    cai' = -(10000) * (ica * gamma / (2 * FARADAY * depth)) - (cai - minCai) / decay
}
