"""Accelerated implementations of the ELM's memory recurrence.

The recurrence itself is defined in surrogate/elm.py (`memory_dynamics`, one step, and
`memory_recurrence`, which runs it over time and picks the implementation). `fused.py`
computes the same steps in one Triton kernel per direction (forward and backward) on CUDA.
"""
