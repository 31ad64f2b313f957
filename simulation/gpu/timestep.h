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
// (consecutive cells) read consecutive addresses. All cells share the Model's arrays.

#define AT(array, k) (array)[(long long)(k) * n_cells + cell]

// On a GPU a block holds 32 cells (one per lane) times NODE_GROUPS warps: the node loops,
// whose iterations are independent, are shared among the warps (warp y takes nodes y,
// y + NODE_GROUPS, ...); the tree solve and the per-cell bookkeeping run on warp 0 (LEADER).
// SYNC() separates the phases. On the CPU one thread does everything in the same order.
#ifdef __CUDACC__
#define NODE_GROUP ((long long)threadIdx.y)
#define NODE_GROUPS ((long long)blockDim.y)
#define LEADER (threadIdx.y == 0)
#define SYNC() __syncthreads()
#else
#define NODE_GROUP 0LL
#define NODE_GROUPS 1LL
#define LEADER 1
#define SYNC()
#endif

// -------------------------------------------------------------------------------- init

// NEURON's finitialize: v = v_init everywhere, gates at their steady state for v_init,
// cai = cai0 (CaDynamics_E2 has no INITIAL block), SK_E2's z at steady state for cai0,
// synapses at rest.
HD void initialize_cell(const Model* __restrict__ M, const Batch* __restrict__ B, long long cell) {
    const long long n_cells = B->n_cells;
    const real v0 = M->v_init;
    real x_inf, tau, y_inf, tau_y;
    for (long long i = NODE_GROUP; i < M->n_nodes; i += NODE_GROUPS) {
        AT(B->v, i) = v0;
        int s;
        if ((s = M->off_CaDynamics_E2[i]) >= 0) {
            AT(B->state, s) = M->cai0;
            AT(B->state, M->off_ca_ion[i]) = 0.0;      // ica
            AT(B->state, M->off_ca_ion[i] + 1) = 0.0;  // dica/dv
        }
        if ((s = M->off_Ca_HVA[i]) >= 0) { Ca_HVA_rates(v0, &x_inf, &tau, &y_inf, &tau_y); AT(B->state, s) = x_inf; AT(B->state, s + 1) = y_inf; }
        if ((s = M->off_Ca_LVAst[i]) >= 0) { Ca_LVAst_rates(v0, &x_inf, &tau, &y_inf, &tau_y); AT(B->state, s) = x_inf; AT(B->state, s + 1) = y_inf; }
        if ((s = M->off_Ih[i]) >= 0) { Ih_rates(v0, M->vhalf_Ih, M->vshift_Ih[i], &x_inf, &tau); AT(B->state, s) = x_inf; }
        if ((s = M->off_Im[i]) >= 0) { Im_rates(v0, &x_inf, &tau); AT(B->state, s) = x_inf; }
        if ((s = M->off_K_Pst[i]) >= 0) { K_Pst_rates(v0, &x_inf, &tau, &y_inf, &tau_y); AT(B->state, s) = x_inf; AT(B->state, s + 1) = y_inf; }
        if ((s = M->off_K_Tst[i]) >= 0) { K_Tst_rates(v0, &x_inf, &tau, &y_inf, &tau_y); AT(B->state, s) = x_inf; AT(B->state, s + 1) = y_inf; }
        if ((s = M->off_NaTa_t[i]) >= 0) { NaTa_t_rates(v0, &x_inf, &tau, &y_inf, &tau_y); AT(B->state, s) = x_inf; AT(B->state, s + 1) = y_inf; }
        if ((s = M->off_NaTs2_t[i]) >= 0) { NaTs2_t_rates(v0, &x_inf, &tau, &y_inf, &tau_y); AT(B->state, s) = x_inf; AT(B->state, s + 1) = y_inf; }
        if ((s = M->off_Nap_Et2[i]) >= 0) { Nap_Et2_rates(v0, &x_inf, &tau, &y_inf, &tau_y); AT(B->state, s) = x_inf; AT(B->state, s + 1) = y_inf; }
        if ((s = M->off_SK_E2[i]) >= 0) { SK_E2_rates(M->cai0, &x_inf, &tau); AT(B->state, s) = x_inf; }
        if ((s = M->off_SKv3_1[i]) >= 0) { SKv3_1_rates(v0, &x_inf, &tau); AT(B->state, s) = x_inf; }
    }
    for (long long k = NODE_GROUP; k < 4 * M->n_excitatory; k += NODE_GROUPS) AT(B->excitatory_state, k) = 0.0;
    for (long long k = NODE_GROUP; k < 2 * M->n_inhibitory; k += NODE_GROUPS) AT(B->inhibitory_state, k) = 0.0;
    if (LEADER) {
        B->sample_last[cell] = v0;  // the soma sample at t = 0
        B->sample_before_last[cell] = v0;
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

// 1-2. Membrane currents at v(t) (mA/cm2) and their conductances dI/dv (S/cm2) at every node:
//    rhs = -i, d = cm/dt + g + (the constant axial part). Channels are linear in v, so dI/dv
//    is their conductance; the NMDA current is not, and its dI/dv is NEURON's finite
//    difference over 0.001 mV. Point-process currents (nA) become densities by 100 / area.
//    Then the axial currents of NEURON's nrn_rhs, gathered per node (no two threads write
//    one node): rhs_i -= b_i (v_parent - v_i) and, for every child c, rhs_i += a_c (v_i - v_c).
//    Their part of the diagonal, -b_i and -a_c, is constant: Model.d_axial.
HD void membrane_and_axial_currents(const Model* __restrict__ M, const Batch* __restrict__ B, long long cell) {
    const long long n_cells = B->n_cells;
    real* __restrict__ v_ = B->v;
    real* __restrict__ state_ = B->state;
    real* __restrict__ rhs_ = B->rhs;
    real* __restrict__ d_ = B->d;
    real* __restrict__ exc_ = B->excitatory_state;
    real* __restrict__ inh_ = B->inhibitory_state;
    for (long long i = NODE_GROUP; i < M->n_nodes; i += NODE_GROUPS) {
        const real v = AT(v_, i);
        real current = 0.0, conductance = 0.0;
        if (M->cm[i] > 0.0) {
            real g = M->pas_g[i];
            current += g * (v - M->pas_e[i]);
            conductance += g;
            int s;
            if ((s = M->off_CaDynamics_E2[i]) >= 0) {
                // NEURON's ion_cur: eca from the cai of time t, then the Ca channels' ica
                const real eca = nernst_ca(AT(state_, s), M->cao[i], M->ktf);
                real ica = 0.0, dica = 0.0;
                if ((s = M->off_Ca_HVA[i]) >= 0) {
                    const real m = AT(state_, s), h = AT(state_, s + 1);
                    g = Ca_HVA_conductance(M->gbar_Ca_HVA[i], m, h);
                    ica += g * (v - eca); dica += g;
                }
                if ((s = M->off_Ca_LVAst[i]) >= 0) {
                    const real m = AT(state_, s), h = AT(state_, s + 1);
                    g = Ca_LVAst_conductance(M->gbar_Ca_LVAst[i], m, h);
                    ica += g * (v - eca); dica += g;
                }
                AT(state_, M->off_ca_ion[i]) = ica;
                AT(state_, M->off_ca_ion[i] + 1) = dica;
                current += ica;
                conductance += dica;
            }
            if ((s = M->off_Ih[i]) >= 0) {
                g = Ih_conductance(M->gbar_Ih[i], AT(state_, s));
                current += g * (v - M->ehcn_Ih[i]); conductance += g;
            }
            const real ek = M->ek[i], ena = M->ena[i];
            if ((s = M->off_Im[i]) >= 0) {
                g = Im_conductance(M->gbar_Im[i], AT(state_, s));
                current += g * (v - ek); conductance += g;
            }
            if ((s = M->off_K_Pst[i]) >= 0) {
                const real m = AT(state_, s), h = AT(state_, s + 1);
                g = K_Pst_conductance(M->gbar_K_Pst[i], m, h);
                current += g * (v - ek); conductance += g;
            }
            if ((s = M->off_K_Tst[i]) >= 0) {
                const real m = AT(state_, s), h = AT(state_, s + 1);
                g = K_Tst_conductance(M->gbar_K_Tst[i], m, h);
                current += g * (v - ek); conductance += g;
            }
            if ((s = M->off_NaTa_t[i]) >= 0) {
                const real m = AT(state_, s), h = AT(state_, s + 1);
                g = NaTa_t_conductance(M->gbar_NaTa_t[i], m, h);
                current += g * (v - ena); conductance += g;
            }
            if ((s = M->off_NaTs2_t[i]) >= 0) {
                const real m = AT(state_, s), h = AT(state_, s + 1);
                g = NaTs2_t_conductance(M->gbar_NaTs2_t[i], m, h);
                current += g * (v - ena); conductance += g;
            }
            if ((s = M->off_Nap_Et2[i]) >= 0) {
                const real m = AT(state_, s), h = AT(state_, s + 1);
                g = Nap_Et2_conductance(M->gbar_Nap_Et2[i], m, h);
                current += g * (v - ena); conductance += g;
            }
            if ((s = M->off_SK_E2[i]) >= 0) {
                g = SK_E2_conductance(M->gbar_SK_E2[i], AT(state_, s));
                current += g * (v - ek); conductance += g;
            }
            if ((s = M->off_SKv3_1[i]) >= 0) {
                g = SKv3_1_conductance(M->gbar_SKv3_1[i], AT(state_, s));
                current += g * (v - ek); conductance += g;
            }
            const real to_density = 100.0 / M->area[i];  // nA on a node of area um2 -> mA/cm2
            long long k;
            if ((k = M->node_excitatory[i]) >= 0) {
                const real a_ampa = AT(exc_, 4 * k), b_ampa = AT(exc_, 4 * k + 1);
                const real a_nmda = AT(exc_, 4 * k + 2), b_nmda = AT(exc_, 4 * k + 3);
                const real gmax = M->exc_gmax[k], e = M->exc_e[k], mg = M->exc_mg[k];
                const real i0 = AmpaNmda_current(v, a_ampa, b_ampa, a_nmda, b_nmda, gmax, e, mg);
                const real i1 = AmpaNmda_current(v + 0.001, a_ampa, b_ampa, a_nmda, b_nmda, gmax, e, mg);
                current += i0 * to_density;
                conductance += (i1 - i0) / 0.001 * to_density;
            }
            if ((k = M->node_inhibitory[i]) >= 0) {
                const real a = AT(inh_, 2 * k), b = AT(inh_, 2 * k + 1);
                const real gmax = M->inh_gmax[k];
                current += GabaA_current(v, a, b, gmax, M->inh_e[k]) * to_density;
                conductance += gmax * (b - a) * to_density;
            }
        }
        real rhs = -current;
        if (i > 0) rhs -= M->b[i] * (AT(v_, M->parent[i]) - v);
        for (int j = M->child_begin[i]; j < M->child_begin[i + 1]; ++j) {
            const int c = M->children[j];
            rhs += M->a[c] * (v - AT(v_, c));
        }
        AT(rhs_, i) = rhs;
        AT(d_, i) = M->cfac * M->cm[i] + conductance + M->d_axial[i];
    }
}

// 3-4. The Hines solve (NEURON's triang and bksub, src/nrnoc/solve.cpp) leaves dv in rhs; then
//      the voltage update, and NEURON's second_order_cur for Crank-Nicolson.
//      The engine numbers nodes depth first (engine.py), so that most nodes are their next
//      node's parent: along such a chain the elimination passes its values in registers and
//      only branch points go through memory. Each iteration loads the next node's values
//      before it stores anything: its store goes to a parent below the next node (a chain
//      parent is passed in registers instead), so the early load never reads a stale value.
//      d ends holding 1/d, so that back-substitution multiplies.
HD void solve_and_update_voltage(const Model* __restrict__ M, const Batch* __restrict__ B, long long cell) {
    const long long n_cells = B->n_cells, n = M->n_nodes;
    real* __restrict__ v_ = B->v;
    real* __restrict__ state_ = B->state;
    real* __restrict__ rhs_ = B->rhs;
    real* __restrict__ d_ = B->d;
    real carry_d = 0.0, carry_rhs = 0.0;  // node i+1's elimination into node i, its chain parent
    real next_d = AT(d_, n - 1), next_rhs = AT(rhs_, n - 1);
    for (long long i = n - 1; i >= 1; --i) {
        const real d = next_d + carry_d, rhs = next_rhs + carry_rhs;
        next_d = AT(d_, i - 1);
        next_rhs = AT(rhs_, i - 1);
        const int p = M->parent[i];
        const real inverse = 1.0 / d;
        const real factor = M->a[i] * inverse;
        AT(d_, i) = inverse;
        AT(rhs_, i) = rhs;
        if (p == i - 1) {
            carry_d = -factor * M->b[i];
            carry_rhs = -factor * rhs;
        } else {
            AT(d_, p) -= factor * M->b[i];
            AT(rhs_, p) -= factor * rhs;
            carry_d = 0.0;
            carry_rhs = 0.0;
        }
    }
    const real step = M->voltage_step_factor;
    real dv_previous = (next_rhs + carry_rhs) / (next_d + carry_d);  // the root
    AT(rhs_, 0) = dv_previous;
    AT(v_, 0) += step * dv_previous;
    real next_inverse = AT(d_, 1);
    next_rhs = AT(rhs_, 1);
    for (long long i = 1; i < n; ++i) {
        const real inverse = next_inverse, rhs = next_rhs;
        if (i + 1 < n) {
            next_inverse = AT(d_, i + 1);
            next_rhs = AT(rhs_, i + 1);
        }
        const int p = M->parent[i];
        const real dv_parent = (p == i - 1) ? dv_previous : AT(rhs_, p);
        const real dv = (rhs - M->b[i] * dv_parent) * inverse;
        AT(rhs_, i) = dv;
        AT(v_, i) += step * dv;
        int s;
        if (M->second_order == 2 && (s = M->off_ca_ion[i]) >= 0) {
            AT(state_, s) += AT(state_, s + 1) * dv;  // ica += dica/dv * dv(half step)
        }
        dv_previous = dv;
    }
}

// 5. Every state by its .mod file's method (cnexp) at v(t + dt), mechanisms in NEURON's
//    type order: CaDynamics_E2 integrates cai with this step's ica before SK_E2 reads it.
HD void update_states(const Model* __restrict__ M, const Batch* __restrict__ B, long long cell) {
    const long long n_cells = B->n_cells;
    real* __restrict__ v_ = B->v;
    real* __restrict__ state_ = B->state;
    real* __restrict__ exc_ = B->excitatory_state;
    real* __restrict__ inh_ = B->inhibitory_state;
    const real dt = M->dt;
    real x_inf, tau_x, y_inf, tau_y;
    for (long long i = NODE_GROUP; i < M->n_nodes; i += NODE_GROUPS) {
        const real v = AT(v_, i);
        int s;
        if ((s = M->off_CaDynamics_E2[i]) >= 0) {
            const real ica = AT(state_, M->off_ca_ion[i]);
            AT(state_, s) = CaDynamics_E2_step(AT(state_, s), ica, M->gamma_CaDynamics_E2[i], M->decay_CaDynamics_E2[i],
                                                 M->depth_CaDynamics_E2[i], M->minCai_CaDynamics_E2[i], M->faraday, dt);
        }
#define UPDATE_TWO_GATES(channel)                                                        \
        if ((s = M->off_##channel[i]) >= 0) {                                            \
            channel##_rates(v, &x_inf, &tau_x, &y_inf, &tau_y);                          \
            AT(state_, s) = cnexp(AT(state_, s), x_inf, tau_x, dt);                  \
            AT(state_, s + 1) = cnexp(AT(state_, s + 1), y_inf, tau_y, dt);          \
        }
        UPDATE_TWO_GATES(Ca_HVA)
        UPDATE_TWO_GATES(Ca_LVAst)
        if ((s = M->off_Ih[i]) >= 0) {
            Ih_rates(v, M->vhalf_Ih, M->vshift_Ih[i], &x_inf, &tau_x);
            AT(state_, s) = cnexp(AT(state_, s), x_inf, tau_x, dt);
        }
        if ((s = M->off_Im[i]) >= 0) {
            Im_rates(v, &x_inf, &tau_x);
            AT(state_, s) = cnexp(AT(state_, s), x_inf, tau_x, dt);
        }
        UPDATE_TWO_GATES(K_Pst)
        UPDATE_TWO_GATES(K_Tst)
        UPDATE_TWO_GATES(NaTa_t)
        UPDATE_TWO_GATES(NaTs2_t)
        UPDATE_TWO_GATES(Nap_Et2)
#undef UPDATE_TWO_GATES
        if ((s = M->off_SK_E2[i]) >= 0) {
            SK_E2_rates(AT(state_, M->off_CaDynamics_E2[i]), &x_inf, &tau_x);
            AT(state_, s) = cnexp(AT(state_, s), x_inf, tau_x, dt);
        }
        if ((s = M->off_SKv3_1[i]) >= 0) {
            SKv3_1_rates(v, &x_inf, &tau_x);
            AT(state_, s) = cnexp(AT(state_, s), x_inf, tau_x, dt);
        }
    }
    // synapses: A' = -A / tau, exactly exp(-dt / tau) per step (Model's *_decay_* factors)
    for (long long k = NODE_GROUP; k < M->n_excitatory; k += NODE_GROUPS) {
        AT(exc_, 4 * k + 0) *= M->exc_decay_rise_ampa[k];
        AT(exc_, 4 * k + 1) *= M->exc_decay_decay_ampa[k];
        AT(exc_, 4 * k + 2) *= M->exc_decay_rise_nmda[k];
        AT(exc_, 4 * k + 3) *= M->exc_decay_decay_nmda[k];
    }
    for (long long k = NODE_GROUP; k < M->n_inhibitory; k += NODE_GROUPS) {
        AT(inh_, 2 * k + 0) *= M->inh_decay_rise[k];
        AT(inh_, 2 * k + 1) *= M->inh_decay_decay[k];
    }
}

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
HD void advance_cell(const Model* __restrict__ M, const Batch* __restrict__ B, long long cell,
                     long long ms_begin, long long ms_end) {
    const long long n_cells = B->n_cells;
    for (long long ms = ms_begin; ms < ms_end; ++ms) {
        if (LEADER) {
            const long long slot = ms - B->chunk_begin_ms;
            B->soma_out[slot * n_cells + cell] = (float)AT(B->v, M->soma_node);
            B->nexus_out[slot * n_cells + cell] = (float)AT(B->v, M->nexus_node);
            deliver_events(M, B, cell, ms);
        }
        if (B->segment_out) {
            const long long slot = ms - B->chunk_begin_ms;
            for (long long k = NODE_GROUP; k < M->n_record; k += NODE_GROUPS)
                B->segment_out[(slot * M->n_record + k) * n_cells + cell] = (float)AT(B->v, M->record_nodes[k]);
        }
        SYNC();
        for (long long k = 0; k < M->steps_per_ms; ++k) {
            membrane_and_axial_currents(M, B, cell);
            SYNC();
            if (LEADER) {
                const real v_before = AT(B->v, M->soma_node);
                solve_and_update_voltage(M, B, cell);
                sample_soma(M, B, cell, ms * M->steps_per_ms + k + 1, v_before, AT(B->v, M->soma_node));
            }
            SYNC();
            update_states(M, B, cell);
            SYNC();
        }
    }
}
