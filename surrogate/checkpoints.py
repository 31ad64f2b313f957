"""Checkpoints: build models from configs, save/load project checkpoints, load published ELMs.

A project checkpoint is one torch file holding only tensors and plain containers, numbers
and strings, so `torch.load(path, weights_only=True)` reads it without running any pickled
code. `load_model` also accepts a run directory (its best checkpoint) and a published
elmneuron folder (model_config.json + neuronio_best_model_state.pt, Spieler et al. 2024),
whose parameters are mapped onto `surrogate.elm.ELM`.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from common.files import atomic_path
from simulation.errors import ConfigError, UserInputError
from surrogate.config import MODEL_TABLES, model_config_from_table
from surrogate.config import model_config_dict as config_as_dict
from surrogate.elm import ELM, ELMConfig, num_parameters
from surrogate.tcn import TCN

CHECKPOINT_FORMAT = "l5pc-surrogate-checkpoint"
CHECKPOINT_VERSION = 1
MODEL_KINDS = ("elm", "branch-elm", "tcn")
BEST_CHECKPOINT, LAST_CHECKPOINT = "checkpoint_best.pt", "checkpoint_last.pt"
PUBLISHED_CONFIG, PUBLISHED_STATE = "model_config.json", "neuronio_best_model_state.pt"


class CheckpointError(UserInputError):
    """A checkpoint file or folder that is missing, corrupt or not a model we know."""


# --------------------------------------------------------------------------- building

def build_model(kind: str, config: dict | None = None) -> nn.Module:
    """A fresh model of `kind` ("elm", "branch-elm", "tcn") from a plain config dict.

    The dict is read as the model's config table (surrogate.config): unknown keys raise
    ConfigError; a Branch-ELM defaults to the paper's 45 branches of 100 synapses.
    """
    model_config = model_config_from_table(kind, config, f"[{MODEL_TABLES.get(kind, kind)}]")
    return TCN(model_config) if kind == "tcn" else ELM(model_config)


def model_config_dict(model: nn.Module) -> dict[str, Any]:
    """The plain dict that `build_model` takes back (lists for tuples), of a model or its config."""
    return config_as_dict(getattr(model, "config", model))


def model_kind_of(model: nn.Module) -> str:
    if isinstance(model, TCN):
        return "tcn"
    if isinstance(model, ELM):
        return "branch-elm" if model.config.num_branch else "elm"
    raise TypeError(f"not a surrogate model: {type(model).__name__}")


# --------------------------------------------------------------------------- project checkpoints

def _plain(value: Any, where: str) -> Any:
    """Check (and tidy) a value so that torch.load(weights_only=True) can read it back."""
    if value is None or isinstance(value, (bool, int, float, str, torch.Tensor)):
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return torch.from_numpy(value.copy())
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dict):
        return {k: _plain(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v, f"{where}[{i}]") for i, v in enumerate(value))
    raise TypeError(f"{where}: a {type(value).__name__} cannot go into a weights-only checkpoint")


def save_checkpoint(
    path: str | Path,
    *,
    model_kind: str,
    model_config: dict,
    model_state: dict,
    optimizer_state: dict | None = None,
    scheduler_state: dict | None = None,
    scaler_state: dict | None = None,
    epoch: int = 0,
    global_step: int = 0,
    best_metric: float | None = None,
    extra: dict | None = None,
) -> Path:
    """Write a checkpoint atomically (common.files.atomic_path: temporary file, then rename)."""
    if model_kind not in MODEL_KINDS:
        raise ValueError(f"unknown model kind {model_kind!r}")
    payload = _plain(
        {
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
            "model_kind": model_kind,
            "model_config": dict(model_config),
            "model_state": {k: v.detach().cpu() for k, v in model_state.items()},
            "optimizer_state": optimizer_state,
            "scheduler_state": scheduler_state,
            "scaler_state": scaler_state,
            "epoch": int(epoch),
            "global_step": int(global_step),
            "best_metric": None if best_metric is None else float(best_metric),
            "extra": dict(extra or {}),
        },
        "checkpoint",
    )
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return path


def _torch_load(path: Path) -> Any:
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated zip, pickle garbage, disallowed globals, ...
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"{path}: not a readable torch checkpoint ({reason[:160]})") from None


def load_checkpoint(path: str | Path) -> dict:
    """Read a project checkpoint (weights only); anything else raises CheckpointError."""
    path = Path(path)
    payload = _torch_load(path)
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not a {CHECKPOINT_FORMAT} file")
    if payload.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(f"{path}: checkpoint version {payload.get('version')} (this code reads {CHECKPOINT_VERSION})")
    missing = [k for k in ("model_kind", "model_config", "model_state") if k not in payload]
    if missing or payload["model_kind"] not in MODEL_KINDS:
        raise CheckpointError(f"{path}: incomplete checkpoint (missing {', '.join(missing) or 'a known model_kind'})")
    return payload


# --------------------------------------------------------------------------- published elmneuron folders

def _published_elm(folder: Path) -> tuple[ELM, dict]:
    """Map a published elmneuron folder (Spieler et al. 2024) onto our ELM."""
    try:
        raw = json.loads((folder / PUBLISHED_CONFIG).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{folder / PUBLISHED_CONFIG}: unreadable model config ({err})") from None
    state = _torch_load(folder / PUBLISHED_STATE)
    if not isinstance(state, dict) or "mlp.network.0.weight" not in state:
        raise CheckpointError(f"{folder / PUBLISHED_STATE}: not an elmneuron state dict")
    if raw.get("mlp_num_layers", 1) != 1:
        raise CheckpointError(f"{folder}: only one-hidden-layer MLPs are supported (mlp_num_layers = {raw['mlp_num_layers']})")
    routing = raw.get("input_to_synapse_routing")
    if routing not in (None, "neuronio_routing"):
        raise CheckpointError(f"{folder}: unsupported input_to_synapse_routing {routing!r}")

    tau_s = state["tau_s"]
    if not torch.allclose(tau_s, tau_s[0].expand_as(tau_s)):
        raise CheckpointError(f"{folder}: per-synapse tau_s differ; this ELM shares one synaptic time constant")
    num_memory = int(raw["num_memory"])
    num_branch = int(raw.get("num_branch") or 0) if routing else 0
    config = ELMConfig(
        num_input=int(raw["num_input"]),
        num_output=int(raw["num_output"]),
        num_memory=num_memory,
        mlp_hidden=int(raw.get("mlp_hidden_size") or 0),
        mlp_activation=raw.get("mlp_activation", "relu"),
        memory_tau_min=float(raw.get("memory_tau_min", 1.0)),
        memory_tau_max=float(raw.get("memory_tau_max", 1000.0)),  # the published code's default
        learn_memory_tau=bool(raw.get("learn_memory_tau", False)),
        lambda_value=float(raw.get("lambda_value", 5.0)),
        synapse_tau_ms=float(tau_s[0]),
        num_branch=num_branch,
        num_synapse_per_branch=int(raw.get("num_synapse_per_branch", 1)) if num_branch else 100,
        dt_ms=float(raw.get("delta_t", 1.0)),
    )
    # their first MLP layer reads [b_t, kappa_m m_{t-1}]: split its columns into W_hb | W_hm
    first = state["mlp.network.0.weight"]
    n_b = first.shape[1] - num_memory
    mapped = {
        "proto_w_s": state["_proto_w_s"],
        "proto_tau_m": state["_proto_tau_m"],
        "w_hb.weight": first[:, :n_b],
        "w_hb.bias": state["mlp.network.0.bias"],
        "w_hm.weight": first[:, n_b:],
        "w_zh.weight": state["mlp.network.2.weight"],
        "w_zh.bias": state["mlp.network.2.bias"],
        "w_y.weight": state["w_y.weight"],
        "w_y.bias": state["w_y.bias"],
    }
    routing_tensors = None
    if num_branch:
        mapped["input_to_synapse_indices"] = state["input_to_synapse_indices"].long()
        mapped["valid_indices_mask"] = state["valid_indices_mask"].bool()
        routing_tensors = (mapped["input_to_synapse_indices"], mapped["valid_indices_mask"])
    model = ELM(config, routing=routing_tensors)
    try:
        model.load_state_dict({k: v.contiguous() for k, v in mapped.items()}, strict=True)
    except RuntimeError as err:
        raise CheckpointError(f"{folder}: state dict does not match its model_config ({str(err).splitlines()[0]})") from None
    return model, dataclasses.asdict(config)


def _is_published_folder(folder: Path) -> bool:
    return (folder / PUBLISHED_CONFIG).is_file() and (folder / PUBLISHED_STATE).is_file()


# --------------------------------------------------------------------------- one entry point

def load_model(path_or_dir: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """Load a model for inference, in eval mode on `device`, from any of:

    - a project checkpoint file (.pt);
    - a run directory (its checkpoint_best.pt, else checkpoint_last.pt);
    - a published elmneuron folder, or its neuronio_best_model_state.pt.
    Returns (model, info) with info: model_kind, model_config, num_parameters, source
    (plus epoch, global_step, best_metric for project checkpoints).
    """
    path = Path(path_or_dir)
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.is_file() and path.name == PUBLISHED_STATE and _is_published_folder(path.parent):
        path = path.parent
    if path.is_dir():
        if _is_published_folder(path):
            model, config = _published_elm(path)
            info = {"model_kind": model_kind_of(model), "model_config": config, "source": str(path),
                    "published": True}
            return _finish(model, info, device)
        for name in (BEST_CHECKPOINT, LAST_CHECKPOINT):
            if (path / name).is_file():
                path = path / name
                break
        else:
            raise CheckpointError(f"{path}: no {BEST_CHECKPOINT}, {LAST_CHECKPOINT} or published ELM ({PUBLISHED_CONFIG}) in it")

    checkpoint = load_checkpoint(path)
    try:
        model = build_model(checkpoint["model_kind"], checkpoint["model_config"])
    except ConfigError as err:
        raise CheckpointError(f"{path}: stored model config is invalid ({err})") from None
    try:
        model.load_state_dict(checkpoint["model_state"], strict=True)
    except RuntimeError as err:
        raise CheckpointError(f"{path}: model state does not match its config ({str(err).splitlines()[0]})") from None
    info = {
        "model_kind": checkpoint["model_kind"],
        "model_config": model_config_dict(model),
        "source": str(path),
        "published": False,
        "epoch": checkpoint.get("epoch"),
        "global_step": checkpoint.get("global_step"),
        "best_metric": checkpoint.get("best_metric"),
    }
    return _finish(model, info, device)


def _finish(model: nn.Module, info: dict, device) -> tuple[nn.Module, dict]:
    info["num_parameters"] = num_parameters(model)
    return model.to(device).eval(), info


__all__ = [
    "CheckpointError", "build_model", "save_checkpoint", "load_checkpoint", "load_model",
    "model_config_dict", "model_kind_of", "MODEL_KINDS",
]
