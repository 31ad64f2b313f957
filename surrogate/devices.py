"""Which torch device a stage runs on: the one choice fit, evaluate and predict share."""

from __future__ import annotations

import torch

from simulation.errors import ConfigError


def resolve_device(name: str) -> torch.device:
    """"auto": CUDA when present, else the CPU; "cpu", "cuda" or "cuda:N" as given, if present here."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} requested but CUDA is not available here (use device = \"auto\" or \"cpu\")")
    try:
        return torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device {name!r} (expected 'auto', 'cpu', 'cuda' or 'cuda:N')") from None
