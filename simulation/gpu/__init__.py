"""The GPU engine: thousands of copies of the L5PC integrated at once with NEURON's fixed-step numerics.

Every simulation of a dataset has the same cell and differs only in its input spikes, so one
GPU thread can integrate one copy of the cell while its neighbours integrate others, in
lockstep (no divergence: every thread walks the same compartments in the same order).

    export.py       the cell as NEURON discretised it: compartments in NEURON's node order,
                    parents, areas, axial coefficients, capacitances, channel densities and
                    synapse sites, read from the NEURON-built cell (one source of truth)
    mechanisms.h    the equations of the project's .mod files (simulation/mechanisms/) in C
    timestep.h      one cell's time step, NEURON's fixed-step scheme: currents linearised at
                    v(t), the Hines tree solve, cnexp state updates at v(t + dt), events at
                    step boundaries; recording at 1 ms and spike detection on the fly
    kernels.cu      the entry points: a CUDA kernel (one thread per cell) and its CPU twin,
                    the same source compiled by g++ (CI checks the numerics with it)
    layout.py       the C structs shared by Python and C, generated from one field list
    backends.py     compile and call: CuPy/NVRTC on a GPU, g++ and ctypes on the CPU
    engine.py       GPUEngine: input rasters in, SimulationResults out
"""
