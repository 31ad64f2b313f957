// Entry points of the engine: a CUDA kernel with one thread per cell, and its CPU twin.
// Both call the same functions of timestep.h; layout.py puts the prelude (precision, the
// Model and Batch structs) and mechanisms.h, timestep.h in front of this file.

#ifdef __CUDACC__

// The Model and the Batch live in constant memory: every thread reads the same fields, which
// the constant cache broadcasts, and no store to the state arrays can alias them, so the
// compiler keeps their pointers in registers. Each engine has its own module, hence its own copy.
__constant__ Model c_model;
__constant__ Batch c_batch;

// THREADS_PER_BLOCK and BLOCKS_PER_MULTIPROCESSOR come from the launch shape (backends.LaunchConfig):
// the compiler keeps each thread's registers within what that many resident blocks leave it.

// blockDim = (32, warps): lane x works for cell blockIdx.x * CELLS_PER_BLOCK + x % CELLS_PER_BLOCK
// (timestep.h's NODE_GROUP says in which node group). The batch is padded to whole blocks
// (padded cells get no input), so that every thread of a block reaches every __syncthreads.
extern "C" __global__ void __launch_bounds__(THREADS_PER_BLOCK, BLOCKS_PER_MULTIPROCESSOR) gpu_initialize() {
    const long long cell = (long long)blockIdx.x * CELLS_PER_BLOCK + threadIdx.x % CELLS_PER_BLOCK;
    initialize_cell(&c_model, &c_batch, cell);
}

// With NODES_IN_SHARED_MEMORY, the launch's dynamic shared memory holds the block's node
// arrays (timestep.h's NodeArrays): v is read from the Batch at the start and written back at
// the end, rhs and d live only within a step.
extern "C" __global__ void __launch_bounds__(THREADS_PER_BLOCK, BLOCKS_PER_MULTIPROCESSOR) gpu_advance(long long ms_begin, long long ms_end) {
    const long long cell = (long long)blockIdx.x * CELLS_PER_BLOCK + threadIdx.x % CELLS_PER_BLOCK;
#if NODES_IN_SHARED_MEMORY
    extern __shared__ real block_nodes[];  // 3 x n_nodes x CELLS_PER_BLOCK
    const long long n_cells = c_batch.n_cells, n_nodes = c_model.n_nodes;
    const NodeArrays N = {block_nodes, block_nodes + n_nodes * CELLS_PER_BLOCK, block_nodes + 2 * n_nodes * CELLS_PER_BLOCK};
    for (long long k = NODE_GROUP; k < n_nodes; k += NODE_GROUPS) NODE_AT(N.v, k) = AT(c_batch.v, k);
    SYNC();
    advance_cell(&c_model, &c_batch, N, cell, ms_begin, ms_end);
    SYNC();
    for (long long k = NODE_GROUP; k < n_nodes; k += NODE_GROUPS) AT(c_batch.v, k) = NODE_AT(N.v, k);
#else
    const NodeArrays N = {c_batch.v, c_batch.rhs, c_batch.d};
    advance_cell(&c_model, &c_batch, N, cell, ms_begin, ms_end);
#endif
}

#else

// cells [cell_begin, cell_end) of the batch; callers run disjoint ranges in parallel threads
extern "C" void cpu_initialize(const Model* M, const Batch* B, long long cell_begin, long long cell_end) {
    for (long long cell = cell_begin; cell < cell_end; ++cell) initialize_cell(M, B, cell);
}

extern "C" void cpu_advance(const Model* M, const Batch* B, long long cell_begin, long long cell_end,
                            long long ms_begin, long long ms_end) {
    const NodeArrays N = {B->v, B->rhs, B->d};
    for (long long cell = cell_begin; cell < cell_end; ++cell) advance_cell(M, B, N, cell, ms_begin, ms_end);
}

// For tests: one mechanism's steady states and time constants at (v, cai), as NEURON's rates
// procedures compute them; out = {x_inf, tau_x, y_inf, tau_y} (y = 0 for one-gate channels).
extern "C" int cpu_mechanism_rates(const char* name, double v, double cai, double vhalf, double vshift, double* out) {
    real x_inf = 0, tau_x = 0, y_inf = 0, tau_y = 0;
    const real rv = (real)v;
#define TWO_GATES(channel) if (!strcmp(name, #channel)) channel##_rates(rv, &x_inf, &tau_x, &y_inf, &tau_y); else
    TWO_GATES(NaTa_t) TWO_GATES(NaTs2_t) TWO_GATES(Nap_Et2) TWO_GATES(K_Pst) TWO_GATES(K_Tst)
    TWO_GATES(Ca_HVA) TWO_GATES(Ca_LVAst)
#undef TWO_GATES
    if (!strcmp(name, "SKv3_1")) SKv3_1_rates(rv, &x_inf, &tau_x);
    else if (!strcmp(name, "Im")) Im_rates(rv, &x_inf, &tau_x);
    else if (!strcmp(name, "Ih")) Ih_rates(rv, (real)vhalf, (real)vshift, &x_inf, &tau_x);
    else if (!strcmp(name, "SK_E2")) SK_E2_rates((real)cai, &x_inf, &tau_x);
    else return -1;
    out[0] = x_inf; out[1] = tau_x; out[2] = y_inf; out[3] = tau_y;
    return 0;
}

// For tests: a channel's conductance (S/cm2) for density gbar and gates x (and y).
extern "C" double cpu_channel_conductance(const char* name, double gbar, double x, double y) {
#define TWO_GATES(channel) if (!strcmp(name, #channel)) return channel##_conductance((real)gbar, (real)x, (real)y);
#define ONE_GATE(channel) if (!strcmp(name, #channel)) return channel##_conductance((real)gbar, (real)x);
    TWO_GATES(NaTa_t) TWO_GATES(NaTs2_t) TWO_GATES(Nap_Et2) TWO_GATES(K_Pst) TWO_GATES(K_Tst)
    TWO_GATES(Ca_HVA) TWO_GATES(Ca_LVAst) ONE_GATE(SKv3_1) ONE_GATE(SK_E2) ONE_GATE(Im) ONE_GATE(Ih)
#undef TWO_GATES
#undef ONE_GATE
    return -1.0;
}

// For tests: the synapses' currents (nA) for given states, and eca by the Nernst equation.
extern "C" double cpu_ampanmda_current(double v, double a_ampa, double b_ampa, double a_nmda, double b_nmda,
                                       double gmax, double e, double mg) {
    return AmpaNmda_current((real)v, (real)a_ampa, (real)b_ampa, (real)a_nmda, (real)b_nmda, (real)gmax, (real)e, (real)mg);
}

extern "C" double cpu_gabaa_current(double v, double a, double b, double gmax, double e) {
    return GabaA_current((real)v, (real)a, (real)b, (real)gmax, (real)e);
}

extern "C" double cpu_nernst_ca(double cai, double cao, double ktf) {
    return nernst_ca((real)cai, (real)cao, (real)ktf);
}

extern "C" double cpu_cadynamics_step(double cai, double ica, double gamma, double decay, double depth,
                                      double min_cai, double faraday, double dt) {
    return CaDynamics_E2_step((real)cai, (real)ica, (real)gamma, (real)decay, (real)depth, (real)min_cai,
                              (real)faraday, (real)dt);
}

#endif
