"""Fitting a surrogate: Adam with per-step cosine decay on the [ELM] loss, checkpoints, resume.

Loss (spec 7.2, [ELM]): spike_loss_weight * BCE-with-logits on the spike channel +
voltage_loss_weight * MSE on the scaled soma channel (0.5 / 0.5 as published).
[train] also takes the published TCN recipe (surrogate.config.TrainConfig): Nadam or AdamW,
a step learning-rate schedule per epoch (lr_steps) and loss weights per epoch
(loss_weight_steps).

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
saving: on the CPU a resumed run reproduces an uninterrupted one exactly. Checkpoints also
store the [data] soma transform, with which every later stage decodes the model's voltage.

The steps, as named below: `start_run` (validate and split the shards, build the model and
optimiser once, resume from checkpoint_last.pt) -> `train_run`, per epoch `train_epoch`,
`validate`, `finish_epoch` (the metrics row and the best epoch, in the run's `RunState`),
`save_run`, `summarise_run` (summary.json, after every epoch: "finished" says whether all ran).

Fine-tuning (`init_from`): a new run can start from another model's weights (a run directory, a
released checkpoint or a published elmneuron folder of the same kind and model config) with a
fresh optimiser and schedule, e.g. to train a model further on new data or in a later session.
The run records where it started (`initialized_from`, with that model's own training) and
resumes like any other.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch.optim.swa_utils import AveragedModel

from common.files import as_output_error, check_writable, write_text_atomic
from common.jsonio import plain, write_json
from simulation.errors import UserInputError

from . import metrics
from .checkpoints import (BEST_CHECKPOINT, LAST_CHECKPOINT, epoch_checkpoint_path, load_checkpoint, load_model,
                          save_checkpoint)
from .config import DataConfig, TrainConfig
from .data import (DeviceWindows, SplitArrays, TrainingWindows, find_shards, first_simulations, load_split_arrays,
                   soma_target, split_shards, training_loader, training_simulations, unpack_input_spikes)
from .devices import resolve_device
from .elm import num_parameters
from .inference import predict_windowed
from .registry import build_model, model_config_of, model_kind
from .targets import SomaTransform

METRICS_CSV, METRICS_JSON, SUMMARY_JSON = "metrics.csv", "metrics.json", "summary.json"
# training keys that may change between a run and its resumption (they do not change the data or the model)
RESUMABLE_TRAIN_KEYS = {"epochs", "device", "amp", "num_threads", "valid_simulations"}
RESUMABLE_DATA_KEYS = {"loader_workers", "prefetch"}
# model keys that only shape a random initialisation: a run started from trained weights may differ in them
INITIALISATION_MODEL_KEYS = {"spike_bias_init"}
PROBABILITY_EPSILON = 1e-7  # validation BCE from probabilities (sigmoid saturates in float32)

Progress = Callable[[str, dict], None]


class RunMismatchError(UserInputError):
    """The output directory holds a run of another model, config or dataset."""


class TrainingDivergedError(UserInputError):
    """The training loss became NaN or infinite (the shards were checked for non-finite values first)."""


# --------------------------------------------------------------------------- small pieces

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


def step_learning_rate(epoch: int, train: TrainConfig) -> float:
    """The learning rate of `epoch` (1-based) on a "step" schedule: the last lr_steps entry started by then."""
    return train.epoch_value(train.lr_steps, epoch)[0]


def make_optimizer(parameters, train: TrainConfig) -> torch.optim.Optimizer:
    """[train] optimizer: Adam (L2 weight decay, the ELM's), Nadam (the published TCN's) or AdamW."""
    optimizers = {"adam": torch.optim.Adam, "nadam": torch.optim.NAdam, "adamw": torch.optim.AdamW}
    return optimizers[train.optimizer](parameters, lr=train.learning_rate, weight_decay=train.weight_decay)


def surrogate_loss(output: torch.Tensor, spike_target: torch.Tensor, soma_target: torch.Tensor,
                   train: TrainConfig, epoch: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(total, spike BCE, soma MSE) of a (B, T, 2) model output, in fp32, with the loss weights of `epoch`."""
    spike_weight, voltage_weight = train.loss_weights(epoch)
    spike_loss = F.binary_cross_entropy_with_logits(output[..., 0].float(), spike_target)
    soma_loss = F.mse_loss(output[..., 1].float(), soma_target)
    return spike_weight * spike_loss + voltage_weight * soma_loss, spike_loss, soma_loss


def spike_auc(spike_target: np.ndarray, spike_probability: np.ndarray) -> float:
    """Validation spike AUC (the selection metric); NaN when the bins hold one class only."""
    return float(metrics.spike_metrics(spike_target, spike_probability, fp_rates=())[0]["auc"])


def seed_for(*words: int) -> int:
    """A 32-bit seed derived from integers (run seed, epoch, ...): the same on every machine and resume."""
    return int(np.random.SeedSequence(list(words)).generate_state(1)[0])


def _selection_key(valid_auc: float, valid_loss: float) -> tuple[float, float]:
    """Best checkpoint: highest validation AUC; lowest validation loss when the AUC is undefined or tied."""
    return (valid_auc if math.isfinite(valid_auc) else -math.inf, -valid_loss)


# --------------------------------------------------------------------------- validation

def validate(model: torch.nn.Module, arrays: SplitArrays, data: DataConfig, train: TrainConfig,
             device: torch.device, epoch: int = 1) -> dict[str, float]:
    """Score whole validation simulations (spec 7.3 windows), bins from ignore_first_ms on (spec 7.4).

    The validation loss weighs its terms with the loss weights of `epoch`, as the training loss."""
    batch = 256 if device.type == "cuda" else 64
    probability, voltage_mV = predict_windowed(model, arrays.input_spikes, SomaTransform.of(data),
                                               window_ms=data.window_ms, burn_in_ms=data.burn_in_ms,
                                               batch_size=batch, device=device)
    kept = slice(data.ignore_first_ms, None)
    spikes = arrays.output_spikes[:, kept]
    probability = probability[:, kept].astype(np.float64)
    soma_true = soma_target(arrays.soma_voltage[:, kept], data).astype(np.float64)
    soma_pred = (voltage_mV[:, kept].astype(np.float64) - data.voltage_bias_mV) * data.voltage_scale
    p = np.clip(probability, PROBABILITY_EPSILON, 1.0 - PROBABILITY_EPSILON)
    spike_loss = float(-np.mean(np.where(spikes, np.log(p), np.log1p(-p))))
    soma_loss = float(np.mean((soma_pred - soma_true) ** 2))
    spike_weight, voltage_weight = train.loss_weights(epoch)
    return {
        "valid_loss": spike_weight * spike_loss + voltage_weight * soma_loss,
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


def _write_json(path: Path, value) -> None:
    """write_json, with a full disk as the one-line OutputError (the run resumes from its checkpoints)."""
    with as_output_error(path):
        write_json(path, value)


def write_metrics(out_dir: Path, history: list[dict]) -> None:
    """metrics.csv (non-finite numbers left blank) and metrics.json of a run's per-epoch history, atomically."""
    with as_output_error(out_dir / METRICS_CSV):
        write_text_atomic(out_dir / METRICS_CSV, _metrics_csv(history))
    _write_json(out_dir / METRICS_JSON, history)


# --------------------------------------------------------------------------- one run, step by step

@dataclass
class RunState:
    """How far a run has come: stored in every checkpoint, restored when a run resumes."""

    epoch: int = 0  # epochs finished
    global_step: int = 0
    history: list[dict] = field(default_factory=list)  # one row per finished epoch (metrics.csv)
    best_epoch: int | None = None
    best_key: tuple[float, float] | None = None  # _selection_key of the best epoch
    training_time_s: float = 0.0
    resumed_at_epochs: list[int] = field(default_factory=list)
    initialized_from: dict | None = None  # the model whose weights a fine-tuning run started from


@dataclass
class Run:
    """One fit: the model and its optimiser, the recipe, the data split and the run directory."""

    kind: str
    model: torch.nn.Module
    model_config: dict  # the stored form: a re-run must match it to resume
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    train: TrainConfig
    data: DataConfig
    device: torch.device
    amp: str
    data_dir: Path
    out_dir: Path
    split: dict[str, list[Path]]  # train / valid / test shard paths
    training_simulations: int
    training_simulated_ms: int
    valid_simulations: int  # those validated every epoch ([train] valid_simulations caps the split)
    state: RunState = field(default_factory=RunState)
    resumed: bool = False
    # [train] ema_decay > 0: the moving average of `model`'s weights, the model that is validated and saved
    average: WeightAverage | None = None

    @property
    def evaluated_model(self) -> torch.nn.Module:
        """The weights that validation scores and the checkpoints hand on: the averaged ones, when averaging."""
        return self.average.module if self.average is not None else self.model

    @property
    def shard_names(self) -> dict[str, list[str]]:
        return {name: [p.name for p in paths] for name, paths in self.split.items()}

    @property
    def total_steps(self) -> int:
        return self.train.epochs * self.train.batches_per_epoch

    def learning_rate(self, step: int) -> float:
        """The learning rate of global step `step` (0-based): cosine per step, or the step schedule of its epoch."""
        if self.train.lr_schedule == "step":
            return step_learning_rate(step // self.train.batches_per_epoch + 1, self.train)
        return cosine_learning_rate(step, self.total_steps, self.train.learning_rate, self.train.lr_min)

    @property
    def scheduler_state(self) -> dict:
        train = self.train
        if train.lr_schedule == "step":
            return {"kind": "step_per_epoch", "lr_steps": [list(entry) for entry in train.lr_steps]}
        return {"kind": "cosine_per_step", "total_steps": self.total_steps,
                "learning_rate": train.learning_rate, "lr_min": train.lr_min}


def fit(kind: str, train_config: TrainConfig, model_config, shard_dir: str | os.PathLike,
        out_dir: str | os.PathLike, data_config: DataConfig | None = None,
        progress: Progress | None = None, init_from: str | os.PathLike | None = None) -> dict:
    """Train a model of `kind` (surrogate.registry: "elm", "branch-elm", "tcn") on the shards in `shard_dir`, writing the run to `out_dir`.

    Returns the summary. Re-running the same call resumes from `out_dir`/checkpoint_last.pt;
    a finished run returns its summary at once (with "already_finished": True). `model_config`
    is the model's config dataclass (surrogate.registry) or its dict. Every shard of the
    dataset is validated first: a stray or damaged file stops the run before anything is split.
    progress(event, info) receives "start", "steps", "validate", "epoch", "finished".
    `init_from` (a new run only): start from the weights of that checkpoint, run directory or
    published folder instead of a random initialisation (`initialise_from`).
    """
    model_kind(kind)  # an unknown kind fails before anything is read
    train, data = train_config, data_config or DataConfig()
    report = progress or (lambda event, info: None)
    device = resolve_device(train.device)
    threads_before = torch.get_num_threads()
    if train.num_threads:
        torch.set_num_threads(train.num_threads)
    try:
        run = start_run(kind, model_config, train, data, device, Path(shard_dir), Path(out_dir), init_from)
        if run.state.epoch >= train.epochs:
            result = summarise_run(run)
            _write_json(run.out_dir / SUMMARY_JSON, result)  # in case a kill came between the last checkpoint and it
            result["already_finished"] = True
            report("finished", result)
            return result
        return train_run(run, report)
    finally:
        torch.set_num_threads(threads_before)  # a library call leaves the process as it found it


def start_run(kind: str, model_config, train: TrainConfig, data: DataConfig, device: torch.device,
              data_dir: Path, out_dir: Path, init_from: str | os.PathLike | None = None) -> Run:
    """Split the (validated) shards, build the model and its optimiser once, and resume if out_dir holds a run
    (else start from `init_from`'s weights, if given)."""
    split = split_shards(find_shards(data_dir), data)
    train_refs = training_simulations(split["train"], data)
    torch.manual_seed(train.seed)
    model = build_model(kind, model_config).to(device)
    amp = resolve_amp(train.amp, kind, device)
    run = Run(
        kind=kind, model=model, model_config=model_config_of(model),
        optimizer=make_optimizer(model.parameters(), train),
        scaler=torch.amp.GradScaler("cuda", enabled=amp == "fp16"),
        train=train, data=data, device=device, amp=amp, data_dir=data_dir, out_dir=out_dir, split=split,
        training_simulations=len(train_refs), training_simulated_ms=sum(ref.duration_ms for ref in train_refs),
        valid_simulations=len(first_simulations(split["valid"], train.valid_simulations)),
    )
    if (out_dir / LAST_CHECKPOINT).is_file():
        resume_run(run, load_checkpoint(out_dir / LAST_CHECKPOINT))
        check_started_from(run.state.initialized_from, init_from, out_dir)
    elif init_from is not None:
        run.state.initialized_from = initialise_from(run, Path(init_from))
    if train.ema_decay > 0 and run.average is None:  # a new run: the average's first update copies the weights
        run.average = WeightAverage(run.model, train.ema_decay)
    return run


def check_started_from(initialized_from: dict | None, init_from: str | os.PathLike | None, out_dir: Path) -> None:
    """A resumed run given --init-from must have started from that source (a RunMismatchError says otherwise)."""
    started_from = (initialized_from or {}).get("source")
    if init_from is not None and started_from != str(Path(init_from).resolve()):
        raise RunMismatchError(f"{out_dir} holds a run started from {started_from or 'random weights'}, not from "
                               f"{init_from}; use another --out, or delete {out_dir} to start over")


class WeightAverage(AveragedModel):
    """An exponential moving average of `model`'s parameters and buffers (batch-norm statistics included):
    the first update copies the weights, every later one moves the average by (1 - decay) towards them.

    The same arithmetic as torch's AveragedModel with get_ema_multi_avg_fn, without the host-device
    synchronisation its update_parameters makes each step (it copies the step count to the GPU with a blocking
    copy, which waits for the GPU to finish the step, though the moving average never reads it): here the step
    count stays on the CPU."""

    def __init__(self, model: torch.nn.Module, decay: float):
        super().__init__(model, use_buffers=True)
        self.decay = decay

    @torch.no_grad()
    def update_parameters(self, model: torch.nn.Module) -> None:
        averaged = [*self.module.parameters(), *self.module.buffers()]
        current = [*model.parameters(), *model.buffers()]
        if int(self.n_averaged) == 0:
            for a, w in zip(averaged, current, strict=True):
                a.copy_(w)
        else:
            floats = [(a, w) for a, w in zip(averaged, current, strict=True) if a.is_floating_point()]
            torch._foreach_lerp_([a for a, _ in floats], [w for _, w in floats], 1 - self.decay)
            for a, w in zip(averaged, current, strict=True):
                if not a.is_floating_point():  # integer buffers (batch-norm's step counter), as torch averages them
                    a.copy_(a * self.decay + w * (1 - self.decay))
        self.n_averaged += 1


def initialise_from(run: Run, source: Path) -> dict:
    """Load the weights of `source` (same model kind and config, same soma transform) into the new run's model.

    Returns what the run records of it: where it came from and how far that model had been trained.
    """
    model, info = load_model(source)
    where = f"--init-from {source}"
    if info["model_kind"] != run.kind:
        raise RunMismatchError(f"{where} holds a model of kind {info['model_kind']}, not {run.kind}")
    changed = sorted(k for k in set(run.model_config) | set(info["model_config"])
                     if k not in INITIALISATION_MODEL_KEYS and run.model_config.get(k) != info["model_config"].get(k))
    if changed:
        raise RunMismatchError(f"{where}: another model config than this run's (differs in: {', '.join(changed)})")
    if info["soma_transform"] != SomaTransform.of(run.data):
        raise RunMismatchError(f"{where}: its soma channel is scaled otherwise than this run's [data] "
                               f"({info['soma_transform'].as_dict()})")
    run.model.load_state_dict(model.state_dict())
    prior = {"training_time_s": None, "windows_seen": None}
    if not info["published"]:
        prior = _training_behind(info["extra"], info.get("global_step") or 0)
    return {"source": str(source.resolve()), "published": info["published"], "epoch": info.get("epoch"),
            "global_step": info.get("global_step"), **prior}


def _training_behind(extra: dict, global_step: int) -> dict:
    """The training time and windows behind a project checkpoint, counting any run it was itself started from:
    a run's checkpoint (training_time_s, its train_config and initialized_from) or a released one
    (bench/surrogate_accuracy.py's train_wall_s, windows_seen and their *_with_initial)."""
    if "train_config" in extra:
        time_s, windows = extra.get("training_time_s"), global_step * extra["train_config"]["batch_size"]
        earlier = extra.get("initialized_from")
        if earlier:  # unknown (None) when the model it started from had unknown training, a published one say
            time_s = None if None in (time_s, earlier["training_time_s"]) else time_s + earlier["training_time_s"]
            windows = None if earlier["windows_seen"] is None else windows + earlier["windows_seen"]
    elif extra.get("initialized_from"):
        time_s, windows = extra.get("train_wall_s_with_initial"), extra.get("windows_seen_with_initial")
    else:
        time_s, windows = extra.get("train_wall_s"), extra.get("windows_seen")
    return {"training_time_s": time_s, "windows_seen": windows}


def resume_run(run: Run, checkpoint: dict) -> None:
    """Continue from a checkpoint of the same run: model, optimiser, scaler and RunState."""
    _check_resumable(checkpoint, run)
    extra = checkpoint["extra"]
    if run.train.ema_decay > 0:  # model_state holds the average; the weights being trained are kept beside it
        run.model.load_state_dict(extra["training_model_state"])
        run.average = WeightAverage(run.model, run.train.ema_decay)
        run.average.module.load_state_dict(checkpoint["model_state"])
        run.average.n_averaged.fill_(extra["ema_updates"])
    else:
        run.model.load_state_dict(checkpoint["model_state"])
    run.optimizer.load_state_dict(checkpoint["optimizer_state"])
    if run.amp == "fp16" and checkpoint.get("scaler_state"):
        run.scaler.load_state_dict(checkpoint["scaler_state"])
    run.state = RunState(
        epoch=checkpoint["epoch"], global_step=checkpoint["global_step"], history=list(extra["history"]),
        best_epoch=extra.get("best_epoch"),
        best_key=tuple(extra["best_key"]) if extra.get("best_key") is not None else None,
        training_time_s=extra["training_time_s"], resumed_at_epochs=list(extra.get("resumed_at_epochs", [])),
        initialized_from=extra.get("initialized_from"),
    )
    run.resumed = True


def _check_resumable(checkpoint: dict, run: Run) -> None:
    """A re-run continues a run only if nothing that shapes the model or the data changed."""
    out_dir = run.out_dir
    hint = f"use another --out, or delete {out_dir} to start over"
    if checkpoint["model_kind"] != run.kind:
        raise RunMismatchError(f"{out_dir} holds a {checkpoint['model_kind']} run, not {run.kind}; {hint}")
    if checkpoint["model_config"] != run.model_config:
        changed = sorted(k for k in set(run.model_config) | set(checkpoint["model_config"])
                         if run.model_config.get(k) != checkpoint["model_config"].get(k))
        raise RunMismatchError(f"{out_dir} holds a run with another model config (changed: {', '.join(changed)}); {hint}")
    extra = checkpoint.get("extra", {})
    for name, now, before, free in (("train", plain(dataclasses.asdict(run.train)), plain(extra.get("train_config", {})),
                                     RESUMABLE_TRAIN_KEYS),
                                    ("data", plain(dataclasses.asdict(run.data)), plain(extra.get("data_config", {})),
                                     RESUMABLE_DATA_KEYS)):
        changed = sorted(k for k in now if k not in free and k in before and now[k] != before[k])
        if changed:
            raise RunMismatchError(f"{out_dir} holds a run with other [{name}] settings (changed: {', '.join(changed)}); {hint}")
    if run.train.ema_decay > 0 and "training_model_state" not in extra:  # a run from before ema_decay existed
        raise RunMismatchError(f"{out_dir} holds a run trained without weight averaging ([train] ema_decay); {hint}")
    if extra.get("shards") and extra["shards"] != run.shard_names:
        raise RunMismatchError(f"{out_dir} holds a run on other shards (train/valid/test differ); {hint}")


def train_run(run: Run, report: Progress) -> dict:
    """Train the remaining epochs; after each, validate and write checkpoints and metrics. Returns the summary."""
    train, state = run.train, run.state
    if run.resumed:
        state.resumed_at_epochs.append(state.epoch)
    check_writable(run.out_dir)  # before the first epoch, not after it
    valid_arrays = load_split_arrays(run.split["valid"], train.valid_simulations)
    if run.data.windows_on_device:
        windows = DeviceWindows(run.split["train"], run.data, train.batch_size, train.batches_per_epoch, train.seed,
                                run.device, first_epoch=state.epoch, last_epoch=train.epochs)
        batches = iter(windows)
    else:
        windows = TrainingWindows(run.split["train"], run.data, train.batch_size, train.batches_per_epoch,
                                  train.seed, first_epoch=state.epoch, last_epoch=train.epochs)
        batches = iter(training_loader(windows, pin_memory=run.device.type == "cuda"))
    report("start", {"model_kind": run.kind, "epochs": train.epochs, "first_epoch": state.epoch + 1,
                     "batches_per_epoch": train.batches_per_epoch, "device": str(run.device), "amp": run.amp,
                     "num_parameters": num_parameters(run.model), "resumed": run.resumed,
                     "training_simulations": run.training_simulations,
                     "valid_simulations": valid_arrays.num_simulations, "shards": run.shard_names})
    try:
        while state.epoch < train.epochs:
            epoch = state.epoch + 1  # 1-based in the logs
            epoch_start = time.perf_counter()
            losses = train_epoch(run, epoch, batches, windows.num_inputs, report)
            train_seconds = time.perf_counter() - epoch_start
            report("validate", {"epoch": epoch})
            valid = validate(run.evaluated_model, valid_arrays, run.data, train, run.device, epoch)
            row, improved = finish_epoch(run, epoch, losses, valid, time.perf_counter() - epoch_start, train_seconds)
            save_run(run, improved)
            # after every epoch, so that a run stopped between epochs (a time limit, a kill) still says how
            # far it got ("finished": false) and the next call resumes it
            _write_json(run.out_dir / SUMMARY_JSON, summarise_run(run))
            report("epoch", {**row, "improved": improved, "epochs": train.epochs})
    finally:
        del batches  # stops the loader's workers
        windows.close()
    result = summarise_run(run)
    _write_json(run.out_dir / SUMMARY_JSON, result)
    report("finished", result)
    return result


def train_epoch(run: Run, epoch: int, batches, num_inputs: int, report: Progress) -> list[float]:
    """One epoch of optimiser steps on the learning-rate schedule; returns the mean (total, spike, soma) training loss."""
    model, optimizer, scaler, train, device, state = run.model, run.optimizer, run.scaler, run.train, run.device, run.state
    torch.manual_seed(seed_for(train.seed, epoch))  # dropout: the same whether resumed or not
    model.train()
    sync_every = 1 if device.type == "cpu" else 25  # .item() stalls a GPU: read the loss now and then
    autocast = torch.autocast(device_type=device.type, dtype=torch.bfloat16 if run.amp == "bf16" else torch.float16,
                              enabled=run.amp != "off")
    sums = torch.zeros(3, device=device)  # total, spike, soma loss summed over steps
    reported = 0
    for step in range(train.batches_per_epoch):
        packed_inputs, spike_target, soma_target_batch = next(batches)
        x = unpack_input_spikes(packed_inputs.to(device, non_blocking=True), num_inputs)
        spike_target = spike_target.to(device, non_blocking=True)
        soma_target_batch = soma_target_batch.to(device, non_blocking=True)

        lr = run.learning_rate(state.global_step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        with autocast:
            output = model(x)
        loss, spike_loss, soma_loss = surrogate_loss(output, spike_target, soma_target_batch, train, epoch)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if train.grad_clip_norm > 0:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), train.grad_clip_norm)
        scaler.step(optimizer)
        scaler.update()
        if run.average is not None:
            run.average.update_parameters(model)
        state.global_step += 1
        sums += torch.stack([loss.detach(), spike_loss.detach(), soma_loss.detach()])

        if (step + 1) % sync_every == 0 or step + 1 == train.batches_per_epoch:
            running = sums[0].item() / (step + 1)
            if not math.isfinite(running):
                raise TrainingDivergedError(
                    f"training loss became {running} at epoch {epoch}, step {step + 1}: the model diverged "
                    "(the data were checked for non-finite values); lower [train] learning_rate or set grad_clip_norm")
            report("steps", {"epoch": epoch, "steps": step + 1 - reported, "step_in_epoch": step + 1,
                             "global_step": state.global_step, "loss": running, "lr": lr})
            reported = step + 1
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (sums / train.batches_per_epoch).tolist()


def finish_epoch(run: Run, epoch: int, losses: list[float], valid: dict, epoch_seconds: float,
                 train_seconds: float) -> tuple[dict, bool]:
    """Record the epoch in the RunState: its metrics row, and whether it is the best so far."""
    train, state = run.train, run.state
    state.training_time_s += epoch_seconds
    total, spike, soma = losses
    row = {
        "epoch": epoch,
        "step": state.global_step,
        "train_loss": total,
        "train_spike_loss": spike,
        "train_soma_loss": soma,
        **valid,
        "lr": run.learning_rate(state.global_step),
        "epoch_time_s": epoch_seconds,
        "elapsed_s": state.training_time_s,
        "windows_per_s": train.batches_per_epoch * train.batch_size / train_seconds,
    }
    state.history.append(row)
    state.epoch = epoch
    key = _selection_key(valid["valid_auc"], valid["valid_loss"])
    improved = state.best_key is None or key > state.best_key
    if improved:
        state.best_key, state.best_epoch = key, epoch
    return row, improved


def save_run(run: Run, improved: bool) -> None:
    """checkpoint_best.pt (if improved), checkpoint_last.pt, then metrics.csv / metrics.json, each atomic."""
    state, train = run.state, run.train
    fields = dict(
        model_kind=run.kind,
        model_config=run.model_config,
        model_state=run.evaluated_model.state_dict(),
        soma_transform=SomaTransform.of(run.data),
        optimizer_state=run.optimizer.state_dict(),
        scheduler_state=run.scheduler_state,
        scaler_state=run.scaler.state_dict() if run.amp == "fp16" else None,
        epoch=state.epoch,
        global_step=state.global_step,
        best_metric=state.best_key[0] if math.isfinite(state.best_key[0]) else None,
        extra={
            "history": state.history,
            "best_epoch": state.best_epoch,
            "best_key": list(state.best_key),
            "training_time_s": state.training_time_s,
            "resumed_at_epochs": state.resumed_at_epochs,
            "initialized_from": state.initialized_from,
            "train_config": dataclasses.asdict(train),
            "data_config": dataclasses.asdict(run.data),
            "shards": run.shard_names,
            "device": str(run.device),
            **({"training_model_state": run.model.state_dict(), "ema_updates": int(run.average.n_averaged)}
               if run.average is not None else {}),
        },
    )
    for name in ((BEST_CHECKPOINT, LAST_CHECKPOINT) if improved else (LAST_CHECKPOINT,)):
        with as_output_error(run.out_dir / name):
            save_checkpoint(run.out_dir / name, **fields)
    if train.epoch_checkpoints:  # the model alone, with this epoch's metrics row (its elapsed_s: training time so far)
        path = epoch_checkpoint_path(run.out_dir, state.epoch)
        with as_output_error(path):
            save_checkpoint(path, **{key: fields[key] for key in ("model_kind", "model_config", "model_state",
                                                                  "soma_transform", "epoch", "global_step")},
                            extra={"history": state.history[-1:], "training_time_s": state.training_time_s,
                                   "batch_size": train.batch_size})
    write_metrics(run.out_dir, state.history)


def summarise_run(run: Run) -> dict:
    """summary.json: what was trained, on what, how far, and the best epoch."""
    state, train = run.state, run.train
    history = state.history
    best = next((row for row in history if row["epoch"] == state.best_epoch), None)
    return {
        "model_kind": run.kind,
        "model_config": run.model_config,
        "num_parameters": num_parameters(run.model),
        "finished": state.epoch >= train.epochs,
        "epochs_completed": state.epoch,
        "global_step": state.global_step,
        "training_time_s": state.training_time_s,
        "best_epoch": state.best_epoch,
        "best_valid_auc": best["valid_auc"] if best else None,
        "best_valid_soma_rmse_mV": best["valid_soma_rmse_mV"] if best else None,
        # training wall time (train + validate) until the end of the best epoch: metrics.csv's elapsed_s there
        "time_to_best_valid_s": best["elapsed_s"] if best else None,
        "final_valid_auc": history[-1]["valid_auc"] if history else None,
        "device": str(run.device),
        "amp": run.amp,
        "data_dir": str(run.data_dir),
        "shards": run.shard_names,
        "training_simulations": run.training_simulations,
        "training_simulated_ms": run.training_simulated_ms,
        "valid_simulations": run.valid_simulations,
        "windows_seen": state.global_step * train.batch_size,
        "train_config": dataclasses.asdict(train),
        "data_config": dataclasses.asdict(run.data),
        "soma_transform": SomaTransform.of(run.data).as_dict(),
        "checkpoints": {"last": str(run.out_dir / LAST_CHECKPOINT),
                        "best": str(run.out_dir / BEST_CHECKPOINT) if best else None},
        "resumed_at_epochs": state.resumed_at_epochs,
        # a fine-tuning run: the model it started from, and that model's own training (training_time_s,
        # windows_seen, None where unknown); this run's own figures above do not include it
        "initialized_from": state.initialized_from,
    }
