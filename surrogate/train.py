"""Fitting a surrogate: Adam with per-step cosine decay on the [ELM] loss, checkpoints, resume.

Loss (spec 7.2, [ELM]): spike_loss_weight * BCE-with-logits on the spike channel +
voltage_loss_weight * MSE on the scaled soma channel (0.5 / 0.5 as published).

After every epoch the model is scored on whole validation simulations with the test-time
protocol (spec 7.3: 500-ms windows, 150-ms burn-in), bins from 500 ms on (spec 7.4):
spike AUC, soma RMSE (mV, the model's own voltage, no post-hoc alignment) and the loss.
Unlike the final evaluation, every validation simulation counts (no spike-count filter),
so a small validation set still has spikes. The run directory then gets, in this order,
  checkpoint_best.pt   when the validation AUC improved (selection metric),
  checkpoint_last.pt   always: model, optimiser, schedule, scaler, epoch, step, history,
  metrics.csv / metrics.json   rewritten from the history stored in the checkpoint,
each written atomically, so a kill at any moment leaves a consistent run that the same
command resumes from the last finished epoch. The training data of epoch e depend only
on (seed, e) (surrogate.data), and dropout is reseeded per epoch, so nothing else needs
saving: on the CPU a resumed run reproduces an uninterrupted one exactly.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import os
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from common.files import write_text_atomic
from common.jsonio import write_json
from simulation.errors import ConfigError, UserInputError

from . import metrics as metrics_module
from .checkpoints import BEST_CHECKPOINT, LAST_CHECKPOINT, build_model, load_checkpoint, save_checkpoint
from .config import DataConfig, TrainConfig, check_model_kind, model_config_dict
from .data import (SplitArrays, TrainingWindows, catalog_simulations, find_shards, load_split_arrays,
                   soma_target, split_shards, training_loader, unpack_input_spikes)
from .elm import num_parameters
from .inference import predict_windowed

METRICS_CSV, METRICS_JSON, SUMMARY_JSON = "metrics.csv", "metrics.json", "summary.json"
# training keys that may change between a run and its resumption (they do not change the data or the model)
RESUMABLE_TRAIN_KEYS = {"epochs", "device", "amp", "num_threads", "valid_simulations"}
RESUMABLE_DATA_KEYS = {"loader_workers", "prefetch"}
PROBABILITY_EPSILON = 1e-7  # validation BCE from probabilities (sigmoid saturates in float32)

Progress = Callable[[str, dict], None]


class RunMismatchError(UserInputError):
    """The output directory holds a run of another model, config or dataset."""


# --------------------------------------------------------------------------- small pieces

def resolve_device(name: str) -> torch.device:
    """"auto": CUDA when present, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} requested but CUDA is not available here (use device = \"auto\" or \"cpu\")")
    return torch.device(name)


def resolve_amp(amp: str, model_kind: str, device: torch.device) -> str:
    """Mixed precision only on CUDA. "auto": bf16 for the TCN (convolutions gain), none for the ELM
    (a small recurrence, kept in fp32 inside the model anyway)."""
    if device.type != "cuda" or amp == "off":
        return "off"
    if amp == "auto":
        return "bf16" if model_kind == "tcn" else "off"
    return amp


def cosine_learning_rate(step: int, total_steps: int, learning_rate: float, lr_min: float) -> float:
    """Cosine decay per step from learning_rate (step 0) to lr_min (step total_steps), as CosineAnnealingLR."""
    progress = min(step / max(total_steps, 1), 1.0)
    return lr_min + 0.5 * (learning_rate - lr_min) * (1.0 + math.cos(math.pi * progress))


def surrogate_loss(output: torch.Tensor, spike_target: torch.Tensor, soma_target: torch.Tensor,
                   train: TrainConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(total, spike BCE, soma MSE) of a (B, T, 2) model output, in fp32."""
    spike_loss = F.binary_cross_entropy_with_logits(output[..., 0].float(), spike_target)
    soma_loss = F.mse_loss(output[..., 1].float(), soma_target)
    return train.spike_loss_weight * spike_loss + train.voltage_loss_weight * soma_loss, spike_loss, soma_loss


def spike_auc(spike_target: np.ndarray, spike_probability: np.ndarray) -> float:
    """Spike AUC of flattened arrays (surrogate.metrics, spec 7.5); NaN without spikes or without silence."""
    if hasattr(metrics_module, "spike_auc"):
        return float(metrics_module.spike_auc(spike_target, spike_probability))
    return float(metrics_module.spike_metrics(spike_target, spike_probability, fp_rates=())[0]["auc"])


def _seed_for(*words: int) -> int:
    return int(np.random.SeedSequence(list(words)).generate_state(1)[0])


def _selection_key(valid_auc: float, valid_loss: float) -> tuple[float, float]:
    """Best checkpoint: highest validation AUC; lowest validation loss when the AUC is undefined or tied."""
    return (valid_auc if math.isfinite(valid_auc) else -math.inf, -valid_loss)


# --------------------------------------------------------------------------- validation

def validate(model: torch.nn.Module, arrays: SplitArrays, data: DataConfig, train: TrainConfig,
             device: torch.device) -> dict[str, float]:
    """Score whole validation simulations (spec 7.3 windows), bins from ignore_first_ms on (spec 7.4)."""
    batch = 256 if device.type == "cuda" else 64
    probability, voltage_mV = predict_windowed(model, arrays.input_spikes, data.window_ms, data.burn_in_ms,
                                               batch_size=batch, device=device)
    kept = slice(data.ignore_first_ms, None)
    spikes = arrays.output_spikes[:, kept]
    probability = probability[:, kept].astype(np.float64)
    soma_true = soma_target(arrays.soma_voltage[:, kept], data).astype(np.float64)
    soma_pred = (voltage_mV[:, kept].astype(np.float64) - data.voltage_bias_mV) * data.voltage_scale
    p = np.clip(probability, PROBABILITY_EPSILON, 1.0 - PROBABILITY_EPSILON)
    spike_loss = float(-np.mean(np.where(spikes, np.log(p), np.log1p(-p))))
    soma_loss = float(np.mean((soma_pred - soma_true) ** 2))
    return {
        "valid_loss": train.spike_loss_weight * spike_loss + train.voltage_loss_weight * soma_loss,
        "valid_spike_loss": spike_loss,
        "valid_soma_loss": soma_loss,
        "valid_auc": spike_auc(spikes, probability),
        # raw model voltage against the clipped ground truth, in mV (no post-hoc alignment)
        "valid_soma_rmse_mV": float(np.sqrt(soma_loss)) / data.voltage_scale,
    }


# --------------------------------------------------------------------------- the run directory

def _metrics_csv(history: list[dict]) -> str:
    if not history:
        return ""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(history[0]), lineterminator="\n")
    writer.writeheader()
    for row in history:
        writer.writerow({k: ("" if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()})
    return buffer.getvalue()


def _write_metrics(out_dir: Path, history: list[dict]) -> None:
    write_text_atomic(out_dir / METRICS_CSV, _metrics_csv(history))
    write_json(out_dir / METRICS_JSON, history)


def _check_resumable(checkpoint: dict, model_kind: str, model_config: dict, train: TrainConfig,
                     data: DataConfig, splits: dict[str, list[str]], out_dir: Path) -> None:
    """A re-run continues a run only if nothing that shapes the model or the data changed."""
    hint = f"use another --out, or delete {out_dir} to start over"
    if checkpoint["model_kind"] != model_kind:
        raise RunMismatchError(f"{out_dir} holds a {checkpoint['model_kind']} run, not {model_kind}; {hint}")
    if checkpoint["model_config"] != model_config:
        changed = sorted(k for k in set(model_config) | set(checkpoint["model_config"])
                         if model_config.get(k) != checkpoint["model_config"].get(k))
        raise RunMismatchError(f"{out_dir} holds a run with another model config (changed: {', '.join(changed)}); {hint}")
    extra = checkpoint.get("extra", {})
    for name, now, before, free in (("train", dataclasses.asdict(train), extra.get("train_config", {}), RESUMABLE_TRAIN_KEYS),
                                    ("data", dataclasses.asdict(data), extra.get("data_config", {}), RESUMABLE_DATA_KEYS)):
        changed = sorted(k for k in now if k not in free and k in before and now[k] != before[k])
        if changed:
            raise RunMismatchError(f"{out_dir} holds a run with other [{name}] settings (changed: {', '.join(changed)}); {hint}")
    if extra.get("shards") and extra["shards"] != splits:
        raise RunMismatchError(f"{out_dir} holds a run on other shards (train/valid/test differ); {hint}")


def _summary(model_kind: str, model_config: dict, n_parameters: int, device: torch.device, amp: str,
             train: TrainConfig, data: DataConfig, data_dir: Path, out_dir: Path, splits: dict,
             training_simulations: int, training_simulated_ms: int, state: dict) -> dict:
    history = state["history"]
    best = next((row for row in history if row["epoch"] == state["best_epoch"]), None)
    return {
        "model_kind": model_kind,
        "model_config": model_config,
        "num_parameters": n_parameters,
        "finished": state["epoch"] >= train.epochs,
        "epochs_completed": state["epoch"],
        "global_step": state["global_step"],
        "training_time_s": state["training_time_s"],
        "best_epoch": state["best_epoch"],
        "best_valid_auc": best["valid_auc"] if best else None,
        "best_valid_soma_rmse_mV": best["valid_soma_rmse_mV"] if best else None,
        "final_valid_auc": history[-1]["valid_auc"] if history else None,
        "device": str(device),
        "amp": amp,
        "data_dir": str(data_dir),
        "shards": splits,
        "training_simulations": training_simulations,
        "training_simulated_ms": training_simulated_ms,
        "windows_seen": state["global_step"] * train.batch_size,
        "train_config": dataclasses.asdict(train),
        "data_config": dataclasses.asdict(data),
        "checkpoints": {"last": str(out_dir / LAST_CHECKPOINT),
                        "best": str(out_dir / BEST_CHECKPOINT) if best else None},
        "resumed_at_epochs": state["resumed_at_epochs"],
    }


# --------------------------------------------------------------------------- fit

def fit(model_kind: str, train_config: TrainConfig, model_config, shard_dir: str | os.PathLike,
        out_dir: str | os.PathLike, data_config: DataConfig | None = None,
        progress: Progress | None = None) -> dict:
    """Train `model_kind` on the shards in `shard_dir`, writing the run to `out_dir`; returns the summary.

    Re-running the same call resumes from `out_dir`/checkpoint_last.pt; a finished run
    returns its summary at once (with "already_finished": True). `model_config` is the
    model's dataclass (surrogate.elm.ELMConfig / surrogate.tcn.TCNConfig) or its dict.
    progress(event, info) receives "start", "steps", "validate", "epoch", "finished".
    """
    check_model_kind(model_kind)
    train, data = train_config, data_config or DataConfig()
    report = progress or (lambda event, info: None)
    data_dir, out_dir = Path(shard_dir), Path(out_dir)
    config_dict = model_config if isinstance(model_config, dict) else model_config_dict(model_config)
    config_dict = model_config_dict(build_model(model_kind, config_dict).config)  # validated, defaults filled in

    device = resolve_device(train.device)
    amp = resolve_amp(train.amp, model_kind, device)
    threads_before = torch.get_num_threads()
    if train.num_threads:
        torch.set_num_threads(train.num_threads)
    try:
        return _fit(model_kind, train, data, config_dict, device, amp, data_dir, out_dir, report)
    finally:
        torch.set_num_threads(threads_before)  # a library call leaves the process as it found it


def _fit(model_kind: str, train: TrainConfig, data: DataConfig, config_dict: dict, device: torch.device, amp: str,
         data_dir: Path, out_dir: Path, report: Progress) -> dict:
    # ---- data: split by shard
    split_paths = split_shards(find_shards(data_dir), data)
    splits = {name: [p.name for p in paths] for name, paths in split_paths.items()}
    train_refs = catalog_simulations(split_paths["train"])
    training_simulated_ms = sum(ref.duration_ms for ref in train_refs)

    # ---- model and optimiser, fresh or from the last checkpoint
    torch.manual_seed(train.seed)
    model = build_model(model_kind, config_dict).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=train.learning_rate, weight_decay=train.weight_decay)
    scaler = torch.amp.GradScaler("cuda", enabled=amp == "fp16")
    total_steps = train.epochs * train.batches_per_epoch
    state = {"epoch": 0, "global_step": 0, "history": [], "best_epoch": None, "best_key": None,
             "training_time_s": 0.0, "resumed_at_epochs": []}

    last_path, best_path = out_dir / LAST_CHECKPOINT, out_dir / BEST_CHECKPOINT
    resumed = last_path.is_file()
    if resumed:
        checkpoint = load_checkpoint(last_path)
        _check_resumable(checkpoint, model_kind, config_dict, train, data, splits, out_dir)
        model.load_state_dict(checkpoint["model_state"])
        optimizer.load_state_dict(checkpoint["optimizer_state"])
        if amp == "fp16" and checkpoint.get("scaler_state"):
            scaler.load_state_dict(checkpoint["scaler_state"])
        extra = checkpoint["extra"]
        state.update(epoch=checkpoint["epoch"], global_step=checkpoint["global_step"], history=list(extra["history"]),
                     best_epoch=extra.get("best_epoch"), training_time_s=extra["training_time_s"],
                     resumed_at_epochs=list(extra.get("resumed_at_epochs", [])))
        if extra.get("best_key") is not None:
            state["best_key"] = tuple(extra["best_key"])

    n_parameters = num_parameters(model)

    def summary() -> dict:
        return _summary(model_kind, config_dict, n_parameters, device, amp, train, data, data_dir, out_dir,
                        splits, len(train_refs), training_simulated_ms, state)

    if state["epoch"] >= train.epochs:
        result = summary()
        write_json(out_dir / SUMMARY_JSON, result)  # in case a kill came between the last checkpoint and it
        result["already_finished"] = True
        report("finished", result)
        return result
    if resumed:
        state["resumed_at_epochs"].append(state["epoch"])
    out_dir.mkdir(parents=True, exist_ok=True)

    valid_arrays = load_split_arrays(split_paths["valid"], train.valid_simulations)
    windows = TrainingWindows(split_paths["train"], data, train.batch_size, train.batches_per_epoch, train.seed,
                              first_epoch=state["epoch"], last_epoch=train.epochs)
    batches = iter(training_loader(windows, pin_memory=device.type == "cuda"))
    sync_every = 1 if device.type == "cpu" else 25  # .item() stalls a GPU: read the loss now and then
    autocast = torch.autocast(device_type=device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16,
                              enabled=amp != "off")

    report("start", {"model_kind": model_kind, "epochs": train.epochs, "first_epoch": state["epoch"] + 1,
                     "batches_per_epoch": train.batches_per_epoch, "device": str(device), "amp": amp,
                     "num_parameters": n_parameters, "resumed": resumed, "training_simulations": len(train_refs),
                     "valid_simulations": valid_arrays.num_simulations, "shards": splits})

    while state["epoch"] < train.epochs:
        epoch = state["epoch"] + 1  # 1-based in the logs
        torch.manual_seed(_seed_for(train.seed, epoch))  # dropout: the same whether resumed or not
        model.train()
        epoch_start = time.perf_counter()
        sums = torch.zeros(3, device=device)  # total, spike, soma loss summed over steps
        reported = 0
        for step in range(train.batches_per_epoch):
            packed_inputs, spike_target, soma_target_batch = next(batches)
            x = unpack_input_spikes(packed_inputs.to(device, non_blocking=True), windows.num_inputs)
            spike_target = spike_target.to(device, non_blocking=True)
            soma_target_batch = soma_target_batch.to(device, non_blocking=True)

            lr = cosine_learning_rate(state["global_step"], total_steps, train.learning_rate, train.lr_min)
            for group in optimizer.param_groups:
                group["lr"] = lr
            with autocast:
                output = model(x)
            loss, spike_loss, soma_loss = surrogate_loss(output, spike_target, soma_target_batch, train)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if train.grad_clip_norm > 0:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), train.grad_clip_norm)
            scaler.step(optimizer)
            scaler.update()
            state["global_step"] += 1
            sums += torch.stack([loss.detach(), spike_loss.detach(), soma_loss.detach()])

            if (step + 1) % sync_every == 0 or step + 1 == train.batches_per_epoch:
                running = sums[0].item() / (step + 1)
                if not math.isfinite(running):
                    raise FloatingPointError(f"training loss became {running} at epoch {epoch}, step {step + 1}; "
                                             "lower [train] learning_rate or set grad_clip_norm")
                report("steps", {"epoch": epoch, "steps": step + 1 - reported, "step_in_epoch": step + 1,
                                 "global_step": state["global_step"], "loss": running, "lr": lr})
                reported = step + 1
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        train_seconds = time.perf_counter() - epoch_start

        report("validate", {"epoch": epoch})
        valid = validate(model, valid_arrays, data, train, device)
        epoch_seconds = time.perf_counter() - epoch_start
        state["training_time_s"] += epoch_seconds
        total, spike, soma = (sums / train.batches_per_epoch).tolist()
        row = {
            "epoch": epoch,
            "step": state["global_step"],
            "train_loss": total,
            "train_spike_loss": spike,
            "train_soma_loss": soma,
            **valid,
            "lr": cosine_learning_rate(state["global_step"], total_steps, train.learning_rate, train.lr_min),
            "epoch_time_s": epoch_seconds,
            "elapsed_s": state["training_time_s"],
            "windows_per_s": train.batches_per_epoch * train.batch_size / train_seconds,
        }
        state["history"].append(row)
        state["epoch"] = epoch

        key = _selection_key(valid["valid_auc"], valid["valid_loss"])
        improved = state["best_key"] is None or key > state["best_key"]
        if improved:
            state["best_key"], state["best_epoch"] = key, epoch
        checkpoint_fields = dict(
            model_kind=model_kind,
            model_config=config_dict,
            model_state=model.state_dict(),
            optimizer_state=optimizer.state_dict(),
            scheduler_state={"kind": "cosine_per_step", "total_steps": total_steps,
                             "learning_rate": train.learning_rate, "lr_min": train.lr_min},
            scaler_state=scaler.state_dict() if amp == "fp16" else None,
            epoch=epoch,
            global_step=state["global_step"],
            best_metric=state["best_key"][0] if math.isfinite(state["best_key"][0]) else None,
            extra={
                "history": state["history"],
                "best_epoch": state["best_epoch"],
                "best_key": list(state["best_key"]),
                "training_time_s": state["training_time_s"],
                "resumed_at_epochs": state["resumed_at_epochs"],
                "train_config": dataclasses.asdict(train),
                "data_config": dataclasses.asdict(data),
                "shards": splits,
                "device": str(device),
            },
        )
        if improved:
            save_checkpoint(best_path, **checkpoint_fields)
        save_checkpoint(last_path, **checkpoint_fields)
        _write_metrics(out_dir, state["history"])
        report("epoch", {**row, "improved": improved, "epochs": train.epochs})

    del batches  # stops the loader's workers
    if windows.cache is not None:
        windows.cache.close()
    result = summary()
    write_json(out_dir / SUMMARY_JSON, result)
    report("finished", result)
    return result
