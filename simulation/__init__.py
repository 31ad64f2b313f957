"""The biophysics side: NEURON, numpy, h5py, dask (never torch).

config -> cell + synapses -> one simulation -> HDF5 shards, in parallel with dask.
"""
