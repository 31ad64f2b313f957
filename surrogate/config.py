"""Training configuration: the [data], [train] and model tables of a config file.

Each table is read strictly by simulation.config.from_table (unknown keys, wrong types
and out-of-range values raise ConfigError naming the key). The model tables
([elm], [branch_elm], [tcn]) map onto the models' own dataclasses (surrogate.registry names
them), so a model is configured by exactly the fields it defines.

[train] may hold per-model sub-tables ([train.elm], [train.branch_elm], [train.tcn]) whose
keys override the shared ones for that model only: the published recipes differ per model
(batch 8 for the Branch-ELM, 32 for the ELM).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from common.config import from_table, read_toml_layers
from common.config import require as _require
from simulation.errors import ConfigError

from .registry import MODEL_TABLES, MODELS, config_as_dict, model_config_from_table, model_kind

# the surrogate's tables of a config file (common.config.read_toml refuses tables no side owns);
# [evaluate] is read by surrogate.evaluation
CONFIG_TABLES = ("data", "train", "evaluate", *MODEL_TABLES)


@dataclass(frozen=True)
class DataConfig:
    """[data]: windows, splits and targets (spec 7.2-7.4)."""

    window_ms: int = 500  # training and prediction window length
    burn_in_ms: int = 150  # prediction windows overlap by this much (spec 7.3)
    ignore_first_ms: int = 500  # training windows start in [ignore_first_ms, T - window_ms); metrics skip it (spec 7.4)
    valid_shards: int = 1  # split by shard: the sorted shard list ends with ...valid, test
    test_shards: int = 1
    voltage_cap_mV: float = -55.0  # soma target clipped from above here (spec 7.2)
    voltage_bias_mV: float = -67.7
    voltage_scale: float = 0.1  # training target = (min(V, cap) - bias) * scale
    loader_workers: int = 0  # DataLoader worker processes; 0 loads in the training process
    prefetch: int = 2  # batches each worker prepares ahead
    streams: int = 1  # independent window streams; loader_workers must divide it (the data do not depend on it)
    simulations_per_load: int = 32  # simulations a stream draws windows from at a time
    cache_mb: int = 2048  # decompressed simulations kept per loading process (bit-packed: 1 MB per 6 s)
    load_fraction: float = 0.5  # windows drawn per load, as a fraction of the loaded simulated time (published file_load_fraction)
    max_train_simulations: int = 0  # train on the first N training simulations only (shard order); 0 = all (data-efficiency runs)
    windows_on_device: bool = False  # hold the whole training set on the training device and cut windows there (data.DeviceWindows)

    def __post_init__(self):
        _require(self.window_ms > 0, f"window_ms must be positive, got {self.window_ms}")
        _require(0 <= self.burn_in_ms < self.window_ms, f"burn_in_ms must be in [0, window_ms), got {self.burn_in_ms}")
        _require(self.ignore_first_ms >= 0, f"ignore_first_ms must be >= 0, got {self.ignore_first_ms}")
        _require(self.valid_shards >= 1, f"valid_shards must be >= 1, got {self.valid_shards}")
        _require(self.test_shards >= 0, f"test_shards must be >= 0, got {self.test_shards}")
        _require(self.voltage_scale > 0, f"voltage_scale must be positive, got {self.voltage_scale}")
        _require(self.loader_workers >= 0, f"loader_workers must be >= 0, got {self.loader_workers}")
        _require(self.prefetch >= 1, f"prefetch must be >= 1, got {self.prefetch}")
        _require(self.streams >= 1, f"streams must be >= 1, got {self.streams}")
        _require(self.loader_workers == 0 or self.streams % self.loader_workers == 0,
                 f"loader_workers ({self.loader_workers}) must divide streams ({self.streams}); "
                 "raise streams to a multiple of it (streams, not workers, shape the data)")
        _require(self.simulations_per_load >= 1, f"simulations_per_load must be >= 1, got {self.simulations_per_load}")
        _require(self.cache_mb >= 0, f"cache_mb must be >= 0, got {self.cache_mb}")
        _require(0 < self.load_fraction, f"load_fraction must be positive, got {self.load_fraction}")
        _require(self.max_train_simulations >= 0, f"max_train_simulations must be >= 0 (0: all), got {self.max_train_simulations}")


@dataclass(frozen=True)
class TrainConfig:
    """[train]: optimiser, schedule, loss weights, device ([ELM] recipe: Adam, cosine decay, 0.5/0.5 loss).

    The published TCN recipe (Beniaguev et al. 2021) is expressible too: optimizer = "nadam",
    lr_schedule = "step" with lr_steps = [[1, 1e-4], [41, 3e-5], ...] (from epoch e on, this
    rate), and loss_weight_steps = [[1, spike, voltage], ...] (from epoch e on, these weights
    instead of spike_loss_weight / voltage_loss_weight). Epochs count from 1.
    """

    batch_size: int = 32
    epochs: int = 10
    batches_per_epoch: int = 100
    learning_rate: float = 5e-4
    lr_min: float = 0.0  # cosine decay per step from learning_rate down to lr_min over all epochs
    optimizer: str = "adam"  # "adam", "nadam" (the published TCN's) or "adamw" (decoupled weight decay)
    lr_schedule: str = "cosine"  # "cosine" (per step, learning_rate -> lr_min) or "step" (lr_steps)
    lr_steps: tuple[tuple[int, float], ...] = ()  # "step": [[first epoch, learning rate], ...], from epoch 1
    loss_weight_steps: tuple[tuple[int, float, float], ...] = ()  # [[first epoch, spike weight, voltage weight], ...]
    weight_decay: float = 0.0
    grad_clip_norm: float = 1.0  # clip the global gradient norm; 0 turns clipping off
    spike_loss_weight: float = 0.5  # BCE-with-logits on the spike channel
    voltage_loss_weight: float = 0.5  # MSE on the scaled soma channel
    amp: str = "auto"  # "auto" (bf16 autocast for the TCN on CUDA), "off", "bf16" or "fp16"
    device: str = "auto"  # "auto" (CUDA if present), "cpu", "cuda", "cuda:N"
    seed: int = 0
    valid_simulations: int = 8  # validation simulations scored after every epoch; 0 = all
    num_threads: int = 0  # torch CPU threads; 0 keeps torch's default
    # keep every epoch's weights too (epochs/epoch_NNNN.pt, model only: 32 KB for d_m 20), so that test accuracy can be
    # scored against training time afterwards (bench/time_to_accuracy.py); off: only checkpoint_best/_last.pt
    epoch_checkpoints: bool = False
    # Polyak averaging of the weights (an exponential moving average, batch-norm statistics included), updated after
    # every optimiser step: validation, checkpoint_best.pt and every later stage use the averaged weights. 0 = off;
    # 0.999 averages over about the last 1000 steps. Evens out the last steps' noise of a model that over-fits early.
    ema_decay: float = 0.0

    def __post_init__(self):
        _require(self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}")
        _require(self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}")
        _require(self.batches_per_epoch >= 1, f"batches_per_epoch must be >= 1, got {self.batches_per_epoch}")
        _require(self.learning_rate > 0, f"learning_rate must be positive, got {self.learning_rate}")
        _require(0 <= self.lr_min <= self.learning_rate, f"lr_min must be in [0, learning_rate], got {self.lr_min}")
        _require(self.optimizer in OPTIMIZERS,
                 f"optimizer must be one of {', '.join(map(repr, OPTIMIZERS))}, got {self.optimizer!r}")
        _require(self.lr_schedule in LR_SCHEDULES,
                 f"lr_schedule must be one of {', '.join(map(repr, LR_SCHEDULES))}, got {self.lr_schedule!r}")
        if self.lr_schedule == "step":
            _require(bool(self.lr_steps), "lr_schedule = 'step' needs lr_steps = [[1, lr], [epoch, lr], ...]")
        else:
            _require(not self.lr_steps, f"lr_steps is read only with lr_schedule = 'step' (here {self.lr_schedule!r})")
        _check_steps("lr_steps", self.lr_steps)
        _require(all(lr > 0 for _, lr in self.lr_steps), f"lr_steps: every learning rate must be positive, got {self.lr_steps}")
        _check_steps("loss_weight_steps", self.loss_weight_steps)
        _require(all(s >= 0 and v >= 0 and s + v > 0 for _, s, v in self.loss_weight_steps),
                 f"loss_weight_steps: weights must be >= 0 and not both 0, got {self.loss_weight_steps}")
        _require(self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}")
        _require(self.grad_clip_norm >= 0, f"grad_clip_norm must be >= 0, got {self.grad_clip_norm}")
        _require(self.spike_loss_weight >= 0 and self.voltage_loss_weight >= 0
                 and self.spike_loss_weight + self.voltage_loss_weight > 0,
                 "spike_loss_weight and voltage_loss_weight must be >= 0 and not both 0")
        _require(self.amp in ("auto", "off", "bf16", "fp16"), f"amp must be 'auto', 'off', 'bf16' or 'fp16', got {self.amp!r}")
        _require(self.device == "auto" or self.device == "cpu" or self.device.startswith("cuda"),
                 f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {self.device!r}")
        _require(self.seed >= 0, f"seed must be >= 0, got {self.seed}")
        _require(self.valid_simulations >= 0, f"valid_simulations must be >= 0, got {self.valid_simulations}")
        _require(self.num_threads >= 0, f"num_threads must be >= 0, got {self.num_threads}")
        _require(0.0 <= self.ema_decay < 1.0, f"ema_decay must be in [0, 1) (0: off), got {self.ema_decay}")

    def epoch_value(self, steps, epoch: int):
        """The entry of a [[first epoch, ...], ...] schedule in force at `epoch` (1-based): its values after the epoch."""
        current = steps[0]
        for entry in steps:
            if entry[0] > epoch:
                break
            current = entry
        return current[1:]

    def loss_weights(self, epoch: int) -> tuple[float, float]:
        """(spike, voltage) loss weights of `epoch` (1-based): loss_weight_steps if given, else the fixed weights."""
        if self.loss_weight_steps:
            return tuple(self.epoch_value(self.loss_weight_steps, epoch))
        return self.spike_loss_weight, self.voltage_loss_weight


OPTIMIZERS = ("adam", "nadam", "adamw")
LR_SCHEDULES = ("cosine", "step")


def _check_steps(name: str, steps) -> None:
    """A [[first epoch, ...], ...] schedule starts at epoch 1 and its epochs increase."""
    if not steps:
        return
    epochs = [entry[0] for entry in steps]
    _require(epochs[0] == 1, f"{name} must start at epoch 1 (epochs count from 1), got {epochs[0]}")
    _require(all(a < b for a, b in zip(epochs, epochs[1:])), f"{name}: the first epochs must increase, got {epochs}")


@dataclass(frozen=True)
class TrainingConfig:
    """Everything `fit` needs for one model: data, training recipe and the model's own config."""

    model_kind: str  # "elm", "branch-elm" or "tcn"
    data: DataConfig
    train: TrainConfig
    model: Any  # surrogate.elm.ELMConfig or surrogate.tcn.TCNConfig

    def to_dict(self) -> dict[str, Any]:
        return {"model_kind": self.model_kind, "data": dataclasses.asdict(self.data),
                "train": dataclasses.asdict(self.train), "model": config_as_dict(self.model)}


def train_config_for(raw_train: dict[str, Any] | None, kind: str, where: str) -> TrainConfig:
    """[train] with [train.<model>] overrides applied."""
    table = dict(raw_train or {})
    overrides = {name: table.pop(name) for name in list(table) if name in MODEL_TABLES}
    for name, sub in overrides.items():
        if not isinstance(sub, dict):
            raise ConfigError(f"{where} [train].{name}: expected a table of overrides, got {sub!r}")
        from_table(TrainConfig, {**table, **sub}, f"{where} [train.{name}]")  # check every model's overrides
    merged = {**table, **overrides.get(model_kind(kind).table, {})}
    return from_table(TrainConfig, merged, f"{where} [train]")


def load_training_config(path: str | Path | Sequence[str | Path], kind: str) -> TrainingConfig:
    """Read [data], [train] (with [train.<model>] overrides) and the model table of `kind`.

    `path` may be several files, layered (common.config.read_toml_layers): a recipe overlay on
    configs/neuronio.toml, say.
    """
    entry = model_kind(kind)
    raw, where = read_toml_layers(path)
    data = from_table(DataConfig, raw.get("data"), f"{where} [data]")
    train = train_config_for(raw.get("train"), kind, where)
    for other in MODELS.values():  # a typo in any model table fails, not only in the one used
        if other.table in raw and other is not entry:
            model_config_from_table(other.name, raw[other.table], f"{where} [{other.table}]")
    model = model_config_from_table(kind, raw.get(entry.table), f"{where} [{entry.table}]")
    return TrainingConfig(model_kind=kind, data=data, train=train, model=model)
