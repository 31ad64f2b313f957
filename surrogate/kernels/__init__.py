"""The ELM memory recurrence: a fused GPU kernel on CUDA, the PyTorch loop elsewhere.

`memory_recurrence` is the only entry point models use; both paths compute the same
function (see reference.py for the equations).
"""

from __future__ import annotations

import torch

from .reference import memory_recurrence_reference


def memory_recurrence(
    drive: torch.Tensor,
    kappa_m: torch.Tensor,
    w_hm: torch.Tensor,
    w_zh: torch.Tensor,
    b_z: torch.Tensor,
    lambda_value: float,
    activation: str = "relu",
    implementation: str = "auto",
) -> torch.Tensor:
    """Memory states (B, T, d_m). implementation: "auto" (fused on CUDA), "fused" or "reference"."""
    if implementation not in ("auto", "fused", "reference"):
        raise ValueError(f"implementation must be 'auto', 'fused' or 'reference', got {implementation!r}")
    use_fused = implementation == "fused" or (implementation == "auto" and drive.is_cuda)
    if use_fused:
        try:
            from .fused import memory_recurrence_fused
        except ImportError:  # no triton here: fall back
            if implementation == "fused":
                raise
        else:
            return memory_recurrence_fused(drive, kappa_m, w_hm, w_zh, b_z, lambda_value, activation)
    return memory_recurrence_reference(drive, kappa_m, w_hm, w_zh, b_z, lambda_value, activation)
