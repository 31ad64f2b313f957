// One cell's time step: NEURON's fixed-step scheme (src/nrnoc/fadvance.cpp), in its order.
//
//   at a whole ms:   record soma, nexus (and segment) voltages; deliver that ms's input events
//   every step:      1. currents at v(t) with the states of t, linearised: i(v + dv) = i + g dv
//                    2. axial currents; the tree's matrix (cm/dt + g - axial) dv = rhs
//                    3. Hines elimination: leaves to root, then root to leaves
//                    4. v(t + dt) = v(t) + dv (backward Euler) or v(t) + 2 dv (Crank-Nicolson:
//                       NEURON's secondorder = 2, which also moves the Ca current to the half
//                       step before CaDynamics_E2 reads it)
//                    5. states by cnexp at v(t + dt), in NEURON's mechanism order
//                    6. the soma trace on the 8 samples/ms grid, spikes by the NeuronIO rule
//
// Input events fall on whole ms, which are step boundaries (dt divides 1 ms); NEURON delivers
// an event at the end of the step that reaches its time, that is after the step's state
// update and before the next step's currents, and so does this code.
//
// Memory layout: value k of cell c lives at [k * n_cells + c], so the threads of a warp
// (consecutive cells) read consecutive addresses. All cells share the Model's arrays. The node
// arrays (v, rhs, d) may live in shared memory instead (NodeArrays below).
//
// Node classes. The nodes that carry the same mechanisms form a class (soma, axon, basal,
// apical, zero-area ...); layout.py writes each class's mask of mechanisms into the program
// (FOR_EACH_CLASS), so the code for a class is straight-line, with no branch on what a node
// carries, and a node's states sit in one block whose layout the mask fixes at compile time
// (STATE_OFFSET_*, NODE_STATES). The loads of a node are then independent of each other and
// issue together instead of one after the other.

#define AT(array, k) (array)[(long long)(k) * n_cells + cell]

// On a GPU a block holds CELLS_PER_BLOCK cells and 32 / CELLS_PER_BLOCK x blockDim.y node
// groups: thread (x, y) works for cell x % CELLS_PER_BLOCK in node group
// y (32 / CELLS_PER_BLOCK) + x / CELLS_PER_BLOCK. The node loops, whose iterations are
// independent, are shared among the node groups (group g takes nodes g, g + NODE_GROUPS, ...),
// so does the tree solve, chain by chain; the per-cell bookkeeping runs in group 0 (LEADER).
// SYNC() separates the phases. On the CPU one thread does everything in the same order.
#ifdef __CUDACC__
#define NODE_GROUP ((long long)(threadIdx.y * (32 / CELLS_PER_BLOCK) + threadIdx.x / CELLS_PER_BLOCK))
#define NODE_GROUPS ((long long)(blockDim.y * (32 / CELLS_PER_BLOCK)))
#define LEADER (NODE_GROUP == 0)
#define SYNC() __syncthreads()
#else
#define NODE_GROUP 0LL
#define NODE_GROUPS 1LL
#define LEADER 1
#define SYNC()
#endif

// The node arrays, v, rhs and d of every node, are what the step touches most, and the tree
// solve walks them node after node. On a GPU, gpu_advance keeps them in shared memory for the
// whole launch (node i of the block's cell x % CELLS_PER_BLOCK at [i * CELLS_PER_BLOCK + x %
// CELLS_PER_BLOCK]; v is loaded from and stored back to the Batch's array), so each access
// costs tens of cycles instead of a round trip to device memory. On the CPU, and on a GPU
// where they do not fit (NODES_IN_SHARED_MEMORY 0), they are the Batch's arrays.
struct NodeArrays {
    real* v;
    real* rhs;
    real* d;
};
#if defined(__CUDACC__) && NODES_IN_SHARED_MEMORY
#define NODE_AT(array, k) (array)[(long long)(k) * CELLS_PER_BLOCK + threadIdx.x % CELLS_PER_BLOCK]
#else
#define NODE_AT(array, k) AT(array, k)
#endif

// -------------------------------------------------------------------------------- init

#define SLOT(channel) (s + STATE_OFFSET_##channel(MASK))
#define TWO_GATES_AT_STEADY_STATE(channel)                                               \
    if constexpr ((MASK & HAS_##channel) != 0) {                                          \
        channel##_rates(v0, &x_inf, &tau_x, &y_inf, &tau_y);                             \
        AT(state_, SLOT(channel)) = x_inf;                                                \
        AT(state_, SLOT(channel) + 1) = y_inf;                                            \
    }

// NEURON's finitialize: v = v_init everywhere, gates at their steady state for v_init,
// cai = cai0 (CaDynamics_E2 has no INITIAL block), SK_E2's z at steady state for cai0,
// synapses at rest.
template <unsigned MASK>
HD void initialize_class(const Model* __restrict__ M, const Batch* __restrict__ B, long long cell, int c) {
    const long long n_cells = B->n_cells;
    real* __restrict__ v_ = B->v;
    real* __restrict__ state_ = B->state;
    const real v0 = M->v_init;
    real x_inf, tau_x, y_inf, tau_y;
    const int begin = M->class_begin[c], end = M->class_begin[c + 1];
    for (long long k = begin + NODE_GROUP; k < end; k += NODE_GROUPS) {
        const int i = M->class_nodes[k];
        const long long s = M->class_state_base[c] + (k - begin) * NODE_STATES(MASK);
        AT(v_, i) = v0;
        if constexpr ((MASK & HAS_CaDynamics_E2) != 0) {
            AT(state_, SLOT(CaDynamics_E2)) = M->cai0;
            AT(state_, s + CA_ION_OFFSET(MASK)) = 0.0;      // ica
            AT(state_, s + CA_ION_OFFSET(MASK) + 1) = 0.0;  // dica/dv
        }
        TWO_GATES_AT_STEADY_STATE(Ca_HVA)
        TWO_GATES_AT_STEADY_STATE(Ca_LVAst)
        if constexpr ((MASK & HAS_Ih) != 0) { Ih_rates(v0, M->vhalf_Ih, M->vshift_Ih[i], &x_inf, &tau_x); AT(state_, SLOT(Ih)) = x_inf; }
        if constexpr ((MASK & HAS_Im) != 0) { Im_rates(v0, &x_inf, &tau_x); AT(state_, SLOT(Im)) = x_inf; }
        TWO_GATES_AT_STEADY_STATE(K_Pst)
        TWO_GATES_AT_STEADY_STATE(K_Tst)
        TWO_GATES_AT_STEADY_STATE(NaTa_t)
        TWO_GATES_AT_STEADY_STATE(NaTs2_t)
        TWO_GATES_AT_STEADY_STATE(Nap_Et2)
        if constexpr ((MASK & HAS_SK_E2) != 0) { SK_E2_rates(M->cai0, &x_inf, &tau_x); AT(state_, SLOT(SK_E2)) = x_inf; }
        if constexpr ((MASK & HAS_SKv3_1) != 0) { SKv3_1_rates(v0, &x_inf, &tau_x); AT(state_, SLOT(SKv3_1)) = x_inf; }
    }
}

HD void initialize_cell(const Model* __restrict__ M, const Batch* __restrict__ B, long long cell) {
    const long long n_cells = B->n_cells;
#define INITIALIZE_CLASS(c, mask) initialize_class<mask>(M, B, cell, c);
    FOR_EACH_CLASS(INITIALIZE_CLASS)
#undef INITIALIZE_CLASS
    for (long long k = NODE_GROUP; k < 4 * M->n_excitatory; k += NODE_GROUPS) AT(B->excitatory_state, k) = 0.0;
    for (long long k = NODE_GROUP; k < 2 * M->n_inhibitory; k += NODE_GROUPS) AT(B->inhibitory_state, k) = 0.0;
    if (LEADER) {
        B->sample_last[cell] = M->v_init;  // the soma sample at t = 0
        B->sample_before_last[cell] = M->v_init;
    }
}

// -------------------------------------------------------------------------------- events

// NET_RECEIVE of AmpaNmda.mod and GabaA.mod with weight 1: a release adds the peak factor
// to both the rise and the decay state of each component.
HD void deliver_events(const Model* __restrict__ M, const Batch* __restrict__ B, long long cell, long long ms) {
    const long long n_cells = B->n_cells;
    const long long* offsets = B->event_offsets + cell * (B->duration_ms + 1);
    for (long long e = offsets[ms]; e < offsets[ms + 1]; ++e) {
        long long row = B->event_rows[e];
        if (row < M->n_excitatory) {
            real f_ampa = M->exc_factor_ampa[row], f_nmda = M->exc_factor_nmda[row];
            AT(B->excitatory_state, 4 * row + 0) += f_ampa;  // A_AMPA
            AT(B->excitatory_state, 4 * row + 1) += f_ampa;  // B_AMPA
            AT(B->excitatory_state, 4 * row + 2) += f_nmda;  // A_NMDA
            AT(B->excitatory_state, 4 * row + 3) += f_nmda;  // B_NMDA
        } else {
            long long k = row - M->n_excitatory;
            real f = M->inh_factor[k];
            AT(B->inhibitory_state, 2 * k + 0) += f;  // A
            AT(B->inhibitory_state, 2 * k + 1) += f;  // B
        }
    }
}

// -------------------------------------------------------------------------------- the step

#define CHANNEL_CURRENT(channel, conductance_expression, reversal)                      \
    if constexpr ((MASK & HAS_##channel) != 0) {                                          \
        const real g = conductance_expression;                                            \
        current += g * (v - (reversal));                                                  \
        conductance += g;                                                                 \
    }

// 1-2. Membrane currents at v(t) (mA/cm2) and their conductances dI/dv (S/cm2) at every node
//    of class c: rhs = -i, d = cm/dt + g + (the constant axial part). Channels are linear in
//    v, so dI/dv is their conductance; the NMDA current is not, and its dI/dv is NEURON's
//    finite difference over 0.001 mV. Point-process currents (nA) become densities by
//    100 / area. Then the axial currents of NEURON's nrn_rhs, gathered per node (no two
//    threads write one node): rhs_i -= b_i (v_parent - v_i) and, for every child c,
//    rhs_i += a_c (v_i - v_c). Their part of the diagonal, -b_i and -a_c, is Model.d_axial.
template <unsigned MASK>
HD void class_currents(const Model* __restrict__ M, const Batch* __restrict__ B, NodeArrays N, long long cell, int c) {
    const long long n_cells = B->n_cells;
    const real* __restrict__ v_ = N.v;
    real* __restrict__ state_ = B->state;
    real* __restrict__ rhs_ = N.rhs;
    real* __restrict__ d_ = N.d;
    real* __restrict__ exc_ = B->excitatory_state;
    real* __restrict__ inh_ = B->inhibitory_state;
    const int begin = M->class_begin[c], end = M->class_begin[c + 1];
    for (long long k = begin + NODE_GROUP; k < end; k += NODE_GROUPS) {
        const int i = M->class_nodes[k];
        const long long s = M->class_state_base[c] + (k - begin) * NODE_STATES(MASK);
        const real v = NODE_AT(v_, i);
        real current = 0.0, conductance = 0.0;
        if constexpr ((MASK & MEMBRANE) != 0) {
            const real g = M->pas_g[i];
            current += g * (v - M->pas_e[i]);
            conductance += g;
        }
        if constexpr ((MASK & HAS_CaDynamics_E2) != 0) {
            // NEURON's ion_cur: eca from the cai of time t, then the Ca channels' ica
            const real eca = nernst_ca(AT(state_, SLOT(CaDynamics_E2)), M->cao[i], M->ktf);
            real ica = 0.0, dica = 0.0;
            if constexpr ((MASK & HAS_Ca_HVA) != 0) {
                const real g = Ca_HVA_conductance(M->gbar_Ca_HVA[i], AT(state_, SLOT(Ca_HVA)), AT(state_, SLOT(Ca_HVA) + 1));
                ica += g * (v - eca); dica += g;
            }
            if constexpr ((MASK & HAS_Ca_LVAst) != 0) {
                const real g = Ca_LVAst_conductance(M->gbar_Ca_LVAst[i], AT(state_, SLOT(Ca_LVAst)), AT(state_, SLOT(Ca_LVAst) + 1));
                ica += g * (v - eca); dica += g;
            }
            AT(state_, s + CA_ION_OFFSET(MASK)) = ica;
            AT(state_, s + CA_ION_OFFSET(MASK) + 1) = dica;
            current += ica;
            conductance += dica;
        }
        CHANNEL_CURRENT(Ih, Ih_conductance(M->gbar_Ih[i], AT(state_, SLOT(Ih))), M->ehcn_Ih[i])
        CHANNEL_CURRENT(Im, Im_conductance(M->gbar_Im[i], AT(state_, SLOT(Im))), M->ek[i])
        CHANNEL_CURRENT(K_Pst, K_Pst_conductance(M->gbar_K_Pst[i], AT(state_, SLOT(K_Pst)), AT(state_, SLOT(K_Pst) + 1)), M->ek[i])
        CHANNEL_CURRENT(K_Tst, K_Tst_conductance(M->gbar_K_Tst[i], AT(state_, SLOT(K_Tst)), AT(state_, SLOT(K_Tst) + 1)), M->ek[i])
        CHANNEL_CURRENT(NaTa_t, NaTa_t_conductance(M->gbar_NaTa_t[i], AT(state_, SLOT(NaTa_t)), AT(state_, SLOT(NaTa_t) + 1)), M->ena[i])
        CHANNEL_CURRENT(NaTs2_t, NaTs2_t_conductance(M->gbar_NaTs2_t[i], AT(state_, SLOT(NaTs2_t)), AT(state_, SLOT(NaTs2_t) + 1)), M->ena[i])
        CHANNEL_CURRENT(Nap_Et2, Nap_Et2_conductance(M->gbar_Nap_Et2[i], AT(state_, SLOT(Nap_Et2)), AT(state_, SLOT(Nap_Et2) + 1)), M->ena[i])
        CHANNEL_CURRENT(SK_E2, SK_E2_conductance(M->gbar_SK_E2[i], AT(state_, SLOT(SK_E2))), M->ek[i])
        CHANNEL_CURRENT(SKv3_1, SKv3_1_conductance(M->gbar_SKv3_1[i], AT(state_, SLOT(SKv3_1))), M->ek[i])
        if constexpr ((MASK & HAS_EXCITATORY) != 0) {
            const int e = M->node_excitatory[i];
            const real a_ampa = AT(exc_, 4 * e), b_ampa = AT(exc_, 4 * e + 1);
            const real a_nmda = AT(exc_, 4 * e + 2), b_nmda = AT(exc_, 4 * e + 3);
            const real gmax = M->exc_gmax[e], reversal = M->exc_e[e], mg = M->exc_mg[e];
            const real to_density = 100.0 / M->area[i];  // nA on a node of area um2 -> mA/cm2
            const real i0 = AmpaNmda_current(v, a_ampa, b_ampa, a_nmda, b_nmda, gmax, reversal, mg);
            const real i1 = AmpaNmda_current(v + 0.001, a_ampa, b_ampa, a_nmda, b_nmda, gmax, reversal, mg);
            current += i0 * to_density;
            conductance += (i1 - i0) / 0.001 * to_density;
            // 5 (synapses), done here while the states are in registers: see synapse decay below
            AT(exc_, 4 * e) = a_ampa * M->exc_decay_rise_ampa[e];
            AT(exc_, 4 * e + 1) = b_ampa * M->exc_decay_decay_ampa[e];
            AT(exc_, 4 * e + 2) = a_nmda * M->exc_decay_rise_nmda[e];
            AT(exc_, 4 * e + 3) = b_nmda * M->exc_decay_decay_nmda[e];
        }
        if constexpr ((MASK & HAS_INHIBITORY) != 0) {
            const int e = M->node_inhibitory[i];
            const real a = AT(inh_, 2 * e), b = AT(inh_, 2 * e + 1);
            const real gmax = M->inh_gmax[e];
            const real to_density = 100.0 / M->area[i];
            current += GabaA_current(v, a, b, gmax, M->inh_e[e]) * to_density;
            conductance += gmax * (b - a) * to_density;
            AT(inh_, 2 * e) = a * M->inh_decay_rise[e];
            AT(inh_, 2 * e + 1) = b * M->inh_decay_decay[e];
        }
        real rhs = -current;
        if (i > 0) rhs -= M->b[i] * (NODE_AT(v_, M->parent[i]) - v);
        for (int j = M->child_begin[i]; j < M->child_begin[i + 1]; ++j) {
            const int child = M->children[j];
            rhs += M->a[child] * (v - NODE_AT(v_, child));
        }
        NODE_AT(rhs_, i) = rhs;
        NODE_AT(d_, i) = M->cfac * M->cm[i] + conductance + M->d_axial[i];
    }
}

// 3. The Hines solve (NEURON's triang and bksub, src/nrnoc/solve.cpp) leaves dv in rhs.
//    Nodes are numbered depth first (engine.py), which cuts the tree into chains: runs of
//    nodes each the parent of the next. A chain's level is 0 if no chain branches off it,
//    else one more than the highest level of those that do. Elimination runs level by level
//    from 0: the chains of a level are independent, and shared among the node groups (the
//    group of a chain is its parent node modulo the number of groups, so the chains that
//    join one node are eliminated into it by one group, in one order, whatever the number of
//    groups). When a chain's turn comes, every branch that joins it has been eliminated into
//    it, so all of its values can be loaded at once (CHUNK at a time) and the elimination
//    runs in registers; only its first node writes into its parent, a branch point of a
//    chain of a higher level. Back-substitution runs the levels in reverse. d ends holding 1/d.
#define CHUNK 4

HD int chain_owner(const Model* __restrict__ M, int c) {
    const int p = M->chain_parent[c];
    return p < 0 ? 0 : (int)(p % NODE_GROUPS);
}

HD void eliminate_chain(const Model* __restrict__ M, const Batch* __restrict__ B, NodeArrays N, long long cell, int c) {
    const long long n_cells = B->n_cells;
    real* __restrict__ rhs_ = N.rhs;
    real* __restrict__ d_ = N.d;
    const int first = M->chain_first[c];
    real carry_d = 0.0, carry_rhs = 0.0;  // the elimination of the node below into this one
    for (int top = M->chain_last[c]; top >= first; top -= CHUNK) {
        real d[CHUNK], rhs[CHUNK], a[CHUNK], b[CHUNK];
#pragma unroll
        for (int u = 0; u < CHUNK; ++u) {
            if (top - u >= first) {
                d[u] = NODE_AT(d_, top - u); rhs[u] = NODE_AT(rhs_, top - u);
                a[u] = M->a[top - u]; b[u] = M->b[top - u];
            }
        }
#pragma unroll
        for (int u = 0; u < CHUNK; ++u) {
            if (top - u >= first) {
                const real inverse = 1.0 / (d[u] + carry_d);
                const real r = rhs[u] + carry_rhs;
                NODE_AT(d_, top - u) = inverse;
                NODE_AT(rhs_, top - u) = r;
                const real factor = a[u] * inverse;  // a = 0 at the root
                carry_d = -factor * b[u];
                carry_rhs = -factor * r;
            }
        }
    }
    if (first > 0) {
        const int p = M->parent[first];
        NODE_AT(d_, p) += carry_d;
        NODE_AT(rhs_, p) += carry_rhs;
    }
}

HD void substitute_chain(const Model* __restrict__ M, const Batch* __restrict__ B, NodeArrays N, long long cell, int c) {
    const long long n_cells = B->n_cells;
    real* __restrict__ rhs_ = N.rhs;
    const real* __restrict__ d_ = N.d;
    const int first = M->chain_first[c], last = M->chain_last[c];
    real dv_previous = first > 0 ? NODE_AT(rhs_, M->parent[first]) : 0.0;  // the parent's dv, solved already
    for (int bottom = first; bottom <= last; bottom += CHUNK) {
        real inverse[CHUNK], rhs[CHUNK], b[CHUNK];
#pragma unroll
        for (int u = 0; u < CHUNK; ++u) {
            if (bottom + u <= last) {
                inverse[u] = NODE_AT(d_, bottom + u); rhs[u] = NODE_AT(rhs_, bottom + u); b[u] = M->b[bottom + u];
            }
        }
#pragma unroll
        for (int u = 0; u < CHUNK; ++u) {
            if (bottom + u <= last) {
                const real dv = (rhs[u] - b[u] * dv_previous) * inverse[u];  // b = 0 at the root
                NODE_AT(rhs_, bottom + u) = dv;
                dv_previous = dv;
            }
        }
    }
}

HD void solve(const Model* __restrict__ M, const Batch* __restrict__ B, NodeArrays N, long long cell) {
    for (int level = 0; level < (int)M->n_levels; ++level) {
        for (int j = M->level_begin[level]; j < M->level_begin[level + 1]; ++j) {
            const int c = M->level_chains[j];
            if (chain_owner(M, c) == NODE_GROUP) eliminate_chain(M, B, N, cell, c);
        }
        SYNC();
    }
    for (int level = (int)M->n_levels - 1; level >= 0; --level) {
        for (int j = M->level_begin[level]; j < M->level_begin[level + 1]; ++j) {
            const int c = M->level_chains[j];
            if (chain_owner(M, c) == NODE_GROUP) substitute_chain(M, B, N, cell, c);
        }
        SYNC();
    }
}

#define TWO_GATES_STEP(channel)                                                          \
    if constexpr ((MASK & HAS_##channel) != 0) {                                          \
        channel##_rates(v, &x_inf, &tau_x, &y_inf, &tau_y);                              \
        AT(state_, SLOT(channel)) = cnexp(AT(state_, SLOT(channel)), x_inf, tau_x, dt);   \
        AT(state_, SLOT(channel) + 1) = cnexp(AT(state_, SLOT(channel) + 1), y_inf, tau_y, dt); \
    }
#define ONE_GATE_STEP(channel, ...)                                                      \
    if constexpr ((MASK & HAS_##channel) != 0) {                                          \
        channel##_rates(__VA_ARGS__, &x_inf, &tau_x);                                    \
        AT(state_, SLOT(channel)) = cnexp(AT(state_, SLOT(channel)), x_inf, tau_x, dt);   \
    }

// 4-5. v(t + dt) = v(t) + dv (backward Euler) or v(t) + 2 dv (Crank-Nicolson: NEURON's
//    secondorder = 2, which also moves the Ca current to the half step, second_order_cur,
//    before CaDynamics_E2 reads it). Then every state by its .mod file's method (cnexp) at
//    v(t + dt), mechanisms in NEURON's type order: CaDynamics_E2 integrates cai with this
//    step's ica before SK_E2 reads it.
template <unsigned MASK>
HD void class_states(const Model* __restrict__ M, const Batch* __restrict__ B, NodeArrays N, long long cell, int c) {
    const long long n_cells = B->n_cells;
    real* __restrict__ v_ = N.v;
    const real* __restrict__ rhs_ = N.rhs;
    real* __restrict__ state_ = B->state;
    const real dt = M->dt;
    real x_inf, tau_x, y_inf, tau_y;
    const int begin = M->class_begin[c], end = M->class_begin[c + 1];
    for (long long k = begin + NODE_GROUP; k < end; k += NODE_GROUPS) {
        const int i = M->class_nodes[k];
        const long long s = M->class_state_base[c] + (k - begin) * NODE_STATES(MASK);
        const real dv = NODE_AT(rhs_, i);
        const real v = NODE_AT(v_, i) + M->voltage_step_factor * dv;
        NODE_AT(v_, i) = v;
        if constexpr ((MASK & HAS_CaDynamics_E2) != 0) {
            if (M->second_order == 2) AT(state_, s + CA_ION_OFFSET(MASK)) += AT(state_, s + CA_ION_OFFSET(MASK) + 1) * dv;
        }
        if constexpr ((MASK & HAS_CaDynamics_E2) != 0) {
            AT(state_, SLOT(CaDynamics_E2)) = CaDynamics_E2_step(
                AT(state_, SLOT(CaDynamics_E2)), AT(state_, s + CA_ION_OFFSET(MASK)), M->gamma_CaDynamics_E2[i],
                M->decay_CaDynamics_E2[i], M->depth_CaDynamics_E2[i], M->minCai_CaDynamics_E2[i], M->faraday, dt);
        }
        TWO_GATES_STEP(Ca_HVA)
        TWO_GATES_STEP(Ca_LVAst)
        ONE_GATE_STEP(Ih, v, M->vhalf_Ih, M->vshift_Ih[i])
        ONE_GATE_STEP(Im, v)
        TWO_GATES_STEP(K_Pst)
        TWO_GATES_STEP(K_Tst)
        TWO_GATES_STEP(NaTa_t)
        TWO_GATES_STEP(NaTs2_t)
        TWO_GATES_STEP(Nap_Et2)
        ONE_GATE_STEP(SK_E2, AT(state_, SLOT(CaDynamics_E2)))
        ONE_GATE_STEP(SKv3_1, v)
    }
}

// 5 (synapses). A' = -A / tau: exactly exp(-dt / tau) per step (the Model's *_decay_* factors).
//    Synapse states do not depend on v, so class_currents decays each synapse right after it
//    has read the state for the step's current (export.py puts at most one synapse of a kind
//    on a node): the same values as a pass after the voltage update, one pass fewer over them.

// 6. The soma trace on the grid of samples_per_ms samples/ms, linearly interpolated within
//    the step (as NeuronIO resampled its traces, spec 6.3), and the NeuronIO spike rule on it
//    (spec 6.4): sample g - 1 is a spike if it is a strict local maximum above the threshold.
//    Step n covers (n - 1, n] / steps_per_ms ms; grid sample g sits at g / samples_per_ms ms.
HD void sample_soma(const Model* __restrict__ M, const Batch* __restrict__ B, long long cell, long long n,
                    real v_before, real v_after) {
    const long long S = M->steps_per_ms, G = M->samples_per_ms, n_cells = B->n_cells;
    const long long last_sample = B->duration_ms * G - 1;
    for (long long g = ((n - 1) * G) / S + 1; g * S <= n * G && g <= last_sample; ++g) {
        const real w = (real)(g * S - (n - 1) * G) / (real)G;
        const real sample = v_before + w * (v_after - v_before);
        const real last = B->sample_last[cell], before_last = B->sample_before_last[cell];
        if (g >= 2 && last - before_last > 0.0 && sample - last < 0.0 && last > M->spike_threshold) {
            const int count = B->spike_count[cell];
            if (count < B->max_spikes) AT(B->spike_sample, count) = (int)(g - 1);
            B->spike_count[cell] = count + 1;
        }
        B->sample_before_last[cell] = last;
        B->sample_last[cell] = sample;
    }
}

// Advance one cell from ms_begin to ms_end (whole ms), recording at every whole ms.
HD void advance_cell(const Model* __restrict__ M, const Batch* __restrict__ B, NodeArrays N, long long cell,
                     long long ms_begin, long long ms_end) {
    const long long n_cells = B->n_cells;
    for (long long ms = ms_begin; ms < ms_end; ++ms) {
        const long long slot = ms - B->chunk_begin_ms;
        if (LEADER) {
            B->soma_out[slot * n_cells + cell] = (float)NODE_AT(N.v, M->soma_node);
            B->nexus_out[slot * n_cells + cell] = (float)NODE_AT(N.v, M->nexus_node);
            deliver_events(M, B, cell, ms);
        }
        if (B->segment_out) {
            for (long long k = NODE_GROUP; k < M->n_record; k += NODE_GROUPS)
                B->segment_out[(slot * M->n_record + k) * n_cells + cell] = (float)NODE_AT(N.v, M->record_nodes[k]);
        }
        SYNC();
        for (long long k = 0; k < M->steps_per_ms; ++k) {
            const real v_before = NODE_AT(N.v, M->soma_node);
#define CURRENTS(c, mask) class_currents<mask>(M, B, N, cell, c);
            FOR_EACH_CLASS(CURRENTS)
#undef CURRENTS
            SYNC();
            solve(M, B, N, cell);  // ends with SYNC()
#define STATES(c, mask) class_states<mask>(M, B, N, cell, c);
            FOR_EACH_CLASS(STATES)
#undef STATES
            SYNC();
            if (LEADER) sample_soma(M, B, cell, ms * M->steps_per_ms + k + 1, v_before, NODE_AT(N.v, M->soma_node));
        }
    }
}
