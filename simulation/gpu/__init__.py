"""The GPU engine: thousands of copies of the L5PC integrated at once with NEURON's fixed-step numerics.

Every simulation of a dataset has the same cell and differs only in its input spikes, so the
threads of a GPU can integrate many copies of the cell side by side, in lockstep: a block
serves 8 cells, its node loops and its tree solve shared among 32 node groups of 8 threads
(one thread per cell), all walking the same compartments in the same order. docs/gpu_engine.md
tells the design, the checks against NEURON and the measurements.

    export.py       the cell as NEURON discretised it: compartments in NEURON's node order,
                    parents, areas, axial coefficients, capacitances, channel densities and
                    synapse sites, read from the NEURON-built cell (one source of truth)
    mechanisms.h    the equations of the project's .mod files (simulation/mechanisms/) in C
    timestep.h      one cell's time step, NEURON's fixed-step scheme: currents linearised at
                    v(t), the Hines tree solve, cnexp state updates at v(t + dt), events at
                    step boundaries; recording at 1 ms and spike detection on the fly
    kernels.cu      the entry points: the CUDA kernels and their CPU twin, the same source
                    compiled by g++ (CI checks the numerics with it)
    layout.py       the C structs shared by Python and C, generated from one field list, and
                    the node classes (nodes that carry the same mechanisms)
    backends.py     compile and call: CuPy/NVRTC on a GPU, g++ and ctypes on the CPU
    engine.py       GPUEngine: input rasters in, SimulationResults out
    worker.py       what a dask GPU worker runs: a batch of seeded (or given) simulations
"""
