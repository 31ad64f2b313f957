"""The ground floor: helpers both sides of the project use, written once.

    errors.py   UserInputError and its kinds: bad input gets one line and exit code 2
    files.py    atomic writes (temporary file, fsync, rename; HDF5 built in memory), sha256
    locks.py    one run at a time per output directory (a lock file naming its owner)
    jsonio.py   strict JSON: numpy values made plain, NaN and infinities as null, atomic write
    config.py   strict TOML tables -> frozen dataclasses; which tables a config file may hold
    spikes.py   spike times -> 1-ms raster (the NeuronIO bin rule)
    machine.py  available_cores: the cores this process may run on

Nothing here imports NEURON, torch or dask (h5py only inside files.atomic_hdf5); simulation/,
surrogate/ and pipelines/ import from here, never the other way round (common.config's one
exception is documented there).
"""
