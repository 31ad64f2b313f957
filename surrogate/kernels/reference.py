"""The ELM memory recurrence as a plain per-step PyTorch loop (the reference and CPU path).

Spieler et al. (ICLR 2024), ELM v1, with the input side precomputed for all steps:
    drive_t  = W_hb b_t + c_h                                  (given, all t at once)
    hidden_t = act(drive_t + W_hm (kappa_m * m_{t-1}))
    z_t      = W_zh hidden_t + b_z
    m_t      = kappa_m * m_{t-1} + lambda * (1 - kappa_m) * 1.7159 * tanh(2/3 * z_t)
with m_0 = 0.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# LeCun's scaled tanh, as in the ELM paper: 1.7159 * tanh(2/3 * z)
SCALED_TANH_GAIN = 1.7159
SCALED_TANH_SLOPE = 2.0 / 3.0


def activation_fn(name: str):
    if name == "relu":
        return F.relu
    if name == "silu":
        return F.silu
    raise ValueError(f"unknown MLP activation {name!r} (expected 'relu' or 'silu')")


def memory_recurrence_reference(
    drive: torch.Tensor,  # (B, T, H)
    kappa_m: torch.Tensor,  # (d_m,)
    w_hm: torch.Tensor,  # (H, d_m)
    w_zh: torch.Tensor,  # (d_m, H)
    b_z: torch.Tensor,  # (d_m,)
    lambda_value: float,
    activation: str = "relu",
) -> torch.Tensor:
    """Memory states m_1..m_T, shape (B, T, d_m)."""
    act = activation_fn(activation)
    batch, steps, _ = drive.shape
    memory = drive.new_zeros(batch, w_zh.shape[0])
    update_gain = lambda_value * (1.0 - kappa_m) * SCALED_TANH_GAIN
    states = []
    for t in range(steps):
        decayed = kappa_m * memory
        hidden = act(drive[:, t] + decayed @ w_hm.T)
        z = hidden @ w_zh.T + b_z
        memory = decayed + update_gain * torch.tanh(SCALED_TANH_SLOPE * z)
        states.append(memory)
    return torch.stack(states, dim=1)
