"""Checkpoints: save/load project checkpoints, load published ELMs.

A project checkpoint is one torch file holding only tensors and plain containers, numbers
and strings, so `torch.load(path, weights_only=True)` reads it without running any pickled
code; a file that would need more is refused, and the message says what it asked for. It
stores the model's kind and config (surrogate.registry builds it back) and the soma
transform its outputs decode with (surrogate.targets). `load_model` also accepts a run
directory (its best checkpoint) and a published elmneuron folder (model_config.json +
neuronio_best_model_state.pt, Spieler et al. 2024), whose parameters are mapped onto
`surrogate.elm.ELM` and which decode with the published transform.
"""

from __future__ import annotations

import dataclasses
import io
import json
import pickletools
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from common.files import write_bytes_atomic
from simulation.errors import ConfigError, UserInputError
from surrogate.elm import ELM, ELMConfig, num_parameters
from surrogate.registry import MODEL_KINDS, build_model, model_config_of, model_kind_of
from surrogate.targets import PUBLISHED_SOMA_TRANSFORM, SomaTransform

CHECKPOINT_FORMAT = "l5pc-surrogate-checkpoint"
CHECKPOINT_VERSION = 1
BEST_CHECKPOINT, LAST_CHECKPOINT = "checkpoint_best.pt", "checkpoint_last.pt"
PUBLISHED_CONFIG, PUBLISHED_STATE = "model_config.json", "neuronio_best_model_state.pt"
EPOCH_CHECKPOINTS = "epochs"  # [train] epoch_checkpoints: RUN/epochs/epoch_NNNN.pt, one model-only checkpoint per epoch


def epoch_checkpoint_path(run_dir: str | Path, epoch: int) -> Path:
    """Where a run keeps the weights of one epoch ([train] epoch_checkpoints)."""
    return Path(run_dir) / EPOCH_CHECKPOINTS / f"epoch_{epoch:04d}.pt"


def run_dir_of(checkpoint: str | Path) -> Path:
    """The run directory a checkpoint file or directory belongs to (an epoch checkpoint's is two levels up)."""
    path = Path(checkpoint)
    folder = path if path.is_dir() else path.parent
    return folder.parent if folder.name == EPOCH_CHECKPOINTS else folder


class CheckpointError(UserInputError):
    """A checkpoint file or folder that is missing, corrupt or not a model we know."""


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
    soma_transform: SomaTransform,
    epoch: int = 0,
    global_step: int = 0,
    best_metric: float | None = None,
    extra: dict | None = None,
) -> Path:
    """Write a checkpoint atomically (common.files: temporary file, then rename); a full disk is an OSError.

    soma_transform: the transform the model's soma channel was trained with (its [data]).
    """
    if model_kind not in MODEL_KINDS:
        raise ValueError(f"unknown model kind {model_kind!r}")
    payload = _plain(
        {
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
            "model_kind": model_kind,
            "model_config": dict(model_config),
            "soma_transform": soma_transform.as_dict(),
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
    # serialised in memory, then written atomically: torch.save into a file meets a full disk as a
    # RuntimeError from its zip writer, plain file I/O as an OSError (the caller's to report)
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    return write_bytes_atomic(path, buffer.getbuffer())


def load_weights_only(path: Path) -> Any:
    """torch.load with weights_only=True; a missing, truncated or refused file (a pickle asking for
    an unsupported global) is a one-line CheckpointError saying what was refused and why."""
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        with warnings.catch_warnings():  # a plain pickle's protocol warning: the refusal below says more
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated zip, pickle garbage, disallowed globals, ...
        raise CheckpointError(f"{path}: {_why_unreadable(path, err)}") from None


# torch's own advice around the reason of a weights-only refusal (dropped: we say what to do)
_TORCH_BOILERPLATE = ("Weights only load failed", "Check the documentation of torch.load", "In PyTorch 2.6")


def _torch_reason(err: Exception) -> str:
    """The informative part of a torch.load error, on one line (torch wraps it in paragraphs of advice)."""
    lines = []
    for line in str(err).splitlines():
        line = line.strip()
        if "WeightsUnpickler error:" in line:
            line = line.split("WeightsUnpickler error:", 1)[1].strip()
        if line and not line.startswith(_TORCH_BOILERPLATE):
            lines.append(line)
    reason = " ".join(lines) or type(err).__name__
    if reason.startswith("PytorchStreamReader failed"):
        reason = reason.split(". ", 1)[0]  # the rest is miniz's advice
    return reason


def _pickle_imports(data: bytes) -> list[str] | None:
    """The globals ("module.name") a pickle stream would import, read without unpickling; None if not a pickle.

    pickletools only parses opcodes, it never builds objects or imports anything. Several
    pickles in a row (torch's legacy format) are all read. STACK_GLOBAL takes its names from
    the last two strings pushed (directly or from the memo).
    """
    imports: list[str] = []
    stream = io.BytesIO(data)
    parsed_one = False
    while stream.tell() < len(data):
        strings: list[str | None] = []  # what each op pushed, when it was a string
        memo: dict[int, str | None] = {}
        try:
            for opcode, arg, _ in pickletools.genops(stream):
                if opcode.name in ("GLOBAL", "INST"):
                    imports.append(str(arg).replace(" ", "."))
                elif opcode.name == "STACK_GLOBAL":
                    module, name = (strings[-2:] + [None, None])[:2] if len(strings) >= 2 else (None, None)
                    imports.append(f"{module}.{name}" if module and name else "an unnamed global")
                elif opcode.name in ("MEMOIZE",):
                    memo[len(memo)] = strings[-1] if strings else None
                elif opcode.name in ("PUT", "BINPUT", "LONG_BINPUT"):
                    memo[int(arg)] = strings[-1] if strings else None
                elif opcode.name in ("GET", "BINGET", "LONG_BINGET"):
                    strings.append(memo.get(int(arg)))
                elif isinstance(arg, str) and ("UNICODE" in opcode.name or "STRING" in opcode.name):
                    strings.append(str(arg))
        except Exception:  # not (or no longer) a pickle stream  # noqa: BLE001
            break
        parsed_one = True
    return imports if parsed_one else None


def _why_unreadable(path: Path, err: Exception) -> str:
    """What a file torch.load(weights_only=True) refused is, and what was refused, in one line."""
    allowed, allowed_prefixes = _weights_only_globals()
    data = path.read_bytes()
    if not data:
        return "an empty file, not a torch checkpoint"
    if data[:4] == b"PK\x03\x04":  # torch's zip format: the pickle is <archive>/data.pkl
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as archive:
                names = [n for n in archive.namelist() if n == "data.pkl" or n.endswith("/data.pkl")]
                data = archive.read(names[0]) if names else b""
        except (zipfile.BadZipFile, OSError, EOFError) as zip_err:
            return f"a truncated or corrupt torch checkpoint (zip archive unreadable: {_torch_reason(err) or zip_err})"
        if not data:
            return "a zip archive without a torch checkpoint in it (no data.pkl)"
    imports = _pickle_imports(data)
    if imports is None:
        return f"not a torch checkpoint: neither a torch zip archive nor a pickle ({_torch_reason(err)})"
    refused = sorted({name for name in imports if name not in allowed and not name.startswith(allowed_prefixes)})
    if refused:
        return (f"refused: its pickle imports {', '.join(refused)}, which a weights-only load never runs "
                "(code that would execute on loading; load only checkpoints from a source you trust, "
                "and never with weights_only=False)")
    return f"refused by torch's weights-only loader: {_torch_reason(err)}"


def _weights_only_globals() -> tuple[set[str], tuple[str, ...]]:
    """The globals torch.load(weights_only=True) accepts: ({"module.name", ...}, accepted prefixes)."""
    try:  # a private helper of torch's; without it, name every global outside torch and collections
        from torch._weights_only_unpickler import _get_allowed_globals
        return set(_get_allowed_globals()), ()
    except (ImportError, AttributeError):
        return set(), ("torch.", "collections.")


def load_checkpoint(path: str | Path) -> dict:
    """Read a project checkpoint (weights only); anything else raises CheckpointError."""
    path = Path(path)
    payload = load_weights_only(path)
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not a {CHECKPOINT_FORMAT} file")
    if payload.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(f"{path}: checkpoint version {payload.get('version')} (this code reads {CHECKPOINT_VERSION})")
    missing = [k for k in ("model_kind", "model_config", "model_state") if k not in payload]
    if missing or payload["model_kind"] not in MODEL_KINDS:
        raise CheckpointError(f"{path}: incomplete checkpoint (missing {', '.join(missing) or 'a known model_kind'})")
    try:
        checkpoint_soma_transform(payload)
    except ValueError as err:
        raise CheckpointError(f"{path}: invalid soma_transform ({err})") from None
    return payload


def inference_checkpoint(source: str | Path, destination: str | Path, extra: dict | None = None) -> Path:
    """Write `source`'s model alone to `destination`: no optimiser, scheduler or history (what `predict` needs).

    The released checkpoints (checkpoints/<name>/) are made with it: a fraction of the run's file size.
    `extra` (the training summary, say) is kept beside the model.
    """
    checkpoint = load_checkpoint(source)
    return save_checkpoint(
        destination, model_kind=checkpoint["model_kind"], model_config=checkpoint["model_config"],
        model_state=checkpoint["model_state"], soma_transform=checkpoint_soma_transform(checkpoint),
        epoch=checkpoint.get("epoch", 0), global_step=checkpoint.get("global_step", 0),
        best_metric=checkpoint.get("best_metric"), extra=extra,
    )


def half_precision_checkpoint(source: str | Path, destination: str | Path, extra: dict | None = None) -> Path:
    """Write `source`'s model in float16 to `destination`, without the optimiser or the training copy of averaged
    weights: half the bytes of the model alone. `extra`: what to keep beside the model (default: its training
    record, which `fit --init-from` reads to count the training behind it).

    For a large model (the 9.2M-parameter TCN: 18.5 MB) carried between GPU sessions under the device tool's limits
    on what travels (too large to commit: checkpoints/ holds the ELM family only). `fit --init-from`, `evaluate`
    and `predict` read it as any checkpoint: loading casts the weights back to the model's float32 (a rounding of
    at most 2^-11 relative, far below training noise).
    """
    checkpoint = load_checkpoint(source)
    state = {k: v.half() if v.is_floating_point() else v for k, v in checkpoint["model_state"].items()}
    if extra is None:
        extra = {k: v for k, v in checkpoint["extra"].items() if k != "training_model_state"}
    return save_checkpoint(
        destination, model_kind=checkpoint["model_kind"], model_config=checkpoint["model_config"],
        model_state=state, soma_transform=checkpoint_soma_transform(checkpoint),
        epoch=checkpoint.get("epoch", 0), global_step=checkpoint.get("global_step", 0),
        best_metric=checkpoint.get("best_metric"), extra=extra,
    )


def checkpoint_soma_transform(checkpoint: dict) -> SomaTransform:
    """The soma transform a project checkpoint decodes with.

    Checkpoints written before the transform was stored hold none: they were always
    decoded with the published transform, and still are.
    """
    stored = checkpoint.get("soma_transform")
    return PUBLISHED_SOMA_TRANSFORM if stored is None else SomaTransform.from_dict(stored)


# --------------------------------------------------------------------------- published elmneuron folders

def published_config(folder: Path) -> dict:
    """model_config.json of a published folder: a JSON object with at least the three sizes."""
    path = folder / PUBLISHED_CONFIG
    try:
        raw = json.loads(path.read_bytes())
    except (OSError, ValueError) as err:  # ValueError: JSONDecodeError and non-UTF-8 bytes
        raise CheckpointError(f"{path}: unreadable model config ({str(err).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path}: expected a JSON object of model settings, got {type(raw).__name__}")
    missing = [k for k in ("num_input", "num_output", "num_memory") if k not in raw]
    if missing:
        raise CheckpointError(f"{path}: missing {', '.join(missing)} (not an elmneuron model config)")
    return raw


def _published_elm(folder: Path) -> tuple[ELM, dict]:
    """Map a published elmneuron folder (Spieler et al. 2024) onto our ELM."""
    raw = published_config(folder)
    state = load_weights_only(folder / PUBLISHED_STATE)
    if not isinstance(state, dict) or "mlp.network.0.weight" not in state:
        raise CheckpointError(f"{folder / PUBLISHED_STATE}: not an elmneuron state dict")
    needed = ["tau_s", "_proto_w_s", "_proto_tau_m", "mlp.network.0.bias", "mlp.network.2.weight",
              "mlp.network.2.bias", "w_y.weight", "w_y.bias"]
    if raw.get("mlp_num_layers", 1) != 1:
        raise CheckpointError(f"{folder}: only one-hidden-layer MLPs are supported (mlp_num_layers = {raw['mlp_num_layers']})")
    routing = raw.get("input_to_synapse_routing")
    if routing not in (None, "neuronio_routing"):
        raise CheckpointError(f"{folder}: unsupported input_to_synapse_routing {routing!r}")
    try:
        num_branch = int(raw.get("num_branch") or 0) if routing else 0
        if num_branch:
            needed += ["input_to_synapse_indices", "valid_indices_mask"]
        absent = [k for k in needed if k not in state]
        if absent:
            raise CheckpointError(f"{folder / PUBLISHED_STATE}: the state dict lacks {', '.join(absent)}")
        tau_s = state["tau_s"]
        if not torch.allclose(tau_s, tau_s[0].expand_as(tau_s)):
            raise CheckpointError(f"{folder}: per-synapse tau_s differ; this ELM shares one synaptic time constant")
        num_memory = int(raw["num_memory"])
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
    except (TypeError, ValueError, IndexError) as err:  # a setting of the wrong type or out of range
        raise CheckpointError(f"{folder / PUBLISHED_CONFIG}: invalid model config ({str(err).splitlines()[0]})") from None
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
    try:
        model = ELM(config, routing=routing_tensors)
        model.load_state_dict({k: v.contiguous() for k, v in mapped.items()}, strict=True)
    except (RuntimeError, ValueError) as err:
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
    Returns (model, info) with info: model_kind, model_config, num_parameters, source,
    published, soma_transform (surrogate.targets.SomaTransform: how its soma channel decodes
    to mV), plus epoch, global_step, best_metric and extra (what the run stored beside the model)
    for project checkpoints.
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
                    "published": True, "soma_transform": PUBLISHED_SOMA_TRANSFORM}
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
        "model_config": model_config_of(model),
        "source": str(path),
        "published": False,
        "soma_transform": checkpoint_soma_transform(checkpoint),
        "epoch": checkpoint.get("epoch"),
        "global_step": checkpoint.get("global_step"),
        "best_metric": checkpoint.get("best_metric"),
        "extra": checkpoint.get("extra") or {},  # what the run stored beside the model (history, provenance)
    }
    return _finish(model, info, device)


def _finish(model: nn.Module, info: dict, device) -> tuple[nn.Module, dict]:
    info["num_parameters"] = num_parameters(model)
    return model.to(device).eval(), info


__all__ = ["CheckpointError", "save_checkpoint", "load_checkpoint", "checkpoint_soma_transform", "load_model"]
