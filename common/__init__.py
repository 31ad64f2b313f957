"""The ground floor: helpers both sides of the project use, written once.

    errors.py   UserInputError and its kinds: bad input gets one line and exit code 2
    files.py    atomic writes (temporary file, fsync, rename), sha256 of bytes and files
    jsonio.py   strict JSON: numpy values made plain, NaN and infinities as null, atomic write
    config.py   strict TOML tables -> frozen dataclasses; which tables a config file may hold
    spikes.py   spike times -> 1-ms raster (the NeuronIO bin rule)

Nothing here imports NEURON, torch or dask; simulation/, surrogate/ and pipelines/ import
from here, never the other way round (common.config's one exception is documented there).
"""
