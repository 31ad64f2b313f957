"""Training a sequence classifier (surrogate.sequence) on a long-horizon task, with checkpoints and resume.

The recipe: cross-entropy, Adam with per-step cosine decay (surrogate.train's schedule),
gradient clipping. Every epoch draws `batches_per_epoch` batches from the training split in
an order that depends only on (seed, epoch); dropout is reseeded per epoch. After every
epoch the model is scored on the validation split, and the run directory gets, each written
atomically (common.files),
  checkpoint_best.pt   when the validation accuracy improved (ties: lower validation loss),
  checkpoint_last.pt   always: model, optimiser, epoch, step, history, configs,
  metrics.csv / metrics.json   the per-epoch history,
so a run killed at any moment resumes from its last finished epoch, and on the CPU a resumed
run reproduces an uninterrupted one exactly. A new run may start from the weights of another
run of the same model (`init_from`: fine-tuning, with a fresh optimiser and schedule, e.g.
under another recipe); it records where it started (`initialized_from`) and resumes as any run.
After the last epoch the best checkpoint is scored on the test split and summary.json gets the
result (task, model, parameters, best epoch, validation and test accuracy, training time, device).

Readouts (surrogate.sequence): "last" and "mean" give one prediction per sequence;
"per-step" trains on the label at every valid step (the loss averaged over them) and
predicts from the last valid step.

Config files (configs/tasks/*.toml; several files may be layered, later keys win) hold the
tables [task] (name: the task the file is for), [train] (SequenceTrainConfig, with
[train.elm] / [train.branch_elm] / [train.lstm] overrides per model), [model]
(surrogate.sequence.SequenceModelConfig), [elm] / [branch_elm] (surrogate.elm.ELMConfig
without num_input and num_output, which the task sets) and [lstm] (LSTMBaselineConfig).
"""

from __future__ import annotations

import dataclasses
import io
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
import torch.nn.functional as F

from common.config import from_table, merge_tables, parse_toml
from common.config import require as _require
from common.errors import ConfigError, DatasetError, UserInputError
from common.files import as_output_error, check_writable, write_bytes_atomic
from common.jsonio import write_json
from common.locks import DirectoryLock

from .checkpoints import BEST_CHECKPOINT as BEST
from .checkpoints import LAST_CHECKPOINT as LAST
from .checkpoints import load_weights_only
from .devices import resolve_device
from .elm import ELMConfig, num_parameters
from .tasks import TaskSpec
from .tasks.datasets import DIHEDRAL_VIEWS, dihedral_views
from .tasks.settings import RUN_TABLES as TASK_CONFIG_TABLES
from .tasks.settings import SPLITS
from .tasks.settings import TABLE as DATA_TABLE  # [tasks.<name>]: the data settings of prepare-task, passed over here
from .train import (SUMMARY_JSON, RunMismatchError, TrainingDivergedError, check_started_from, cosine_learning_rate,
                    seed_for, write_metrics)
from .sequence import (SEQUENCE_MODELS, InputEncoding, LSTMBaselineConfig, SequenceClassifier, SequenceModelConfig,
                       build_sequence_model, sequence_model_from_dict)

MODEL_TABLES = {"elm": "elm", "branch-elm": "branch_elm", "lstm": "lstm"}  # each one of TASK_CONFIG_TABLES
CHECKPOINT_FORMAT = "l5pc-sequence-checkpoint"
# [train] keys that may change between a run and its resumption (they change neither the data order nor the model)
RESUMABLE_KEYS = {"epochs", "device", "num_threads", "loader_workers", "eval_batch_size", "max_test_examples",
                  "max_time_s"}
# [model] keys that shape no weights: a run may start (init_from) from a model trained with other values of them
WEIGHTLESS_MODEL_KEYS = {"input_dropout"}

AUGMENTATIONS = ("none", "dihedral")

Progress = Callable[[str, dict], None]


# --------------------------------------------------------------------------- configuration

@dataclass(frozen=True)
class SequenceTrainConfig:
    """[train] of a task config: optimiser, schedule, batches, device."""

    batch_size: int = 32
    epochs: int = 10
    batches_per_epoch: int = 0  # 0: one pass over the training split per epoch
    learning_rate: float = 1e-3
    lr_min: float = 0.0  # cosine decay per step from learning_rate to lr_min over all epochs
    weight_decay: float = 0.0
    grad_clip_norm: float = 1.0  # 0 turns clipping off
    eval_batch_size: int = 0  # 0: batch_size
    max_train_examples: int = 0  # 0: the whole training split (smaller: smoke runs)
    max_valid_examples: int = 0  # validation after every epoch on the first N examples; 0: the whole split
    max_test_examples: int = 0  # the final test on the first N examples; 0: the whole split (the result)
    device: str = "auto"  # "auto", "cpu", "cuda", "cuda:N"
    recurrence: str = "auto"  # the ELM recurrence: "auto" (fused kernel on CUDA), "reference", "fused"
    seed: int = 0
    num_threads: int = 0  # torch CPU threads; 0 keeps torch's default
    loader_workers: int = 0  # DataLoader worker processes
    # "dihedral" (pixel tasks): each training image in a random one of its 8 rotations / reflections, drawn from
    # (seed, epoch); the label of Pathfinder does not change under them (surrogate.tasks.datasets.dihedral_views)
    augment: str = "none"
    # 0: no limit. Else each invocation runs at least one epoch, then starts none that it expects (from the last one)
    # to end past max_time_s seconds of training; the best epoch so far is then scored on the test split
    # (summary.json: finished false) and the same command resumes. The cosine schedule still spans all `epochs`.
    max_time_s: float = 0.0

    def __post_init__(self):
        for name in ("batch_size", "epochs"):
            _require(getattr(self, name) >= 1, f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("batches_per_epoch", "eval_batch_size", "max_train_examples", "max_valid_examples",
                     "max_test_examples",
                     "seed", "num_threads", "loader_workers"):
            _require(getattr(self, name) >= 0, f"{name} must be >= 0, got {getattr(self, name)}")
        _require(self.learning_rate > 0, f"learning_rate must be positive, got {self.learning_rate}")
        _require(0 <= self.lr_min <= self.learning_rate, f"lr_min must be in [0, learning_rate], got {self.lr_min}")
        _require(self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}")
        _require(self.grad_clip_norm >= 0, f"grad_clip_norm must be >= 0, got {self.grad_clip_norm}")
        _require(self.max_time_s >= 0, f"max_time_s must be >= 0 (0: no limit), got {self.max_time_s}")
        _require(self.device == "auto" or self.device == "cpu" or self.device.startswith("cuda"),
                 f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {self.device!r}")
        _require(self.recurrence in ("auto", "reference", "fused"),
                 f"recurrence must be 'auto', 'reference' or 'fused', got {self.recurrence!r}")
        _require(self.augment in AUGMENTATIONS, f"augment must be one of {', '.join(AUGMENTATIONS)}, got {self.augment!r}")


@dataclass(frozen=True)
class TaskRunConfig:
    """Everything one fit-task run needs besides the data: the model kind, its config, the recipe."""

    task: str
    kind: str
    train: SequenceTrainConfig
    model: SequenceModelConfig
    core: ELMConfig | LSTMBaselineConfig
    budget_core: ELMConfig | None = None  # the LSTM's parameter budget comes from this ELM (LSTMBaselineConfig.match)


def read_task_tables(paths: list[str | os.PathLike]) -> dict[str, dict]:
    """The tables of one or more task config files, later files overriding earlier ones key by key."""
    merged: dict[str, dict] = {}
    for path in map(Path, paths):
        raw = parse_toml(path)
        for name, table in raw.items():
            if name == DATA_TABLE:
                continue
            if name not in TASK_CONFIG_TABLES:
                known = ", ".join((*TASK_CONFIG_TABLES, DATA_TABLE))
                raise ConfigError(f"{path}: unknown table [{name}] (known: {known})")
        merge_tables(merged, {k: v for k, v in raw.items() if k != DATA_TABLE}, str(path))
    return merged


def _train_config(table: Mapping[str, Any], kind: str, where: str) -> SequenceTrainConfig:
    """[train] with the [train.<model>] overrides of `kind`; every model's overrides are checked."""
    shared = {k: v for k, v in table.items() if k not in MODEL_TABLES.values()}
    from_table(SequenceTrainConfig, shared, f"{where} [train]")  # a mistake in the shared keys is named as such
    for name, sub in table.items():
        if name in MODEL_TABLES.values():
            if not isinstance(sub, dict):
                raise ConfigError(f"{where} [train].{name}: expected a table of overrides, got {sub!r}")
            from_table(SequenceTrainConfig, {**shared, **sub}, f"{where} [train.{name}]")
    return from_table(SequenceTrainConfig, {**shared, **table.get(MODEL_TABLES[kind], {})}, f"{where} [train]")


def _elm_config(table: Mapping[str, Any] | None, kind: str, width: int, num_classes: int, where: str) -> ELMConfig:
    table = dict(table or {})
    for fixed in ("num_input", "num_output"):
        if fixed in table:
            raise ConfigError(f"{where}.{fixed}: set by the task (the encoding width and the number of classes); remove it")
    if "spike_bias_init" in table:  # NeuronIO's spike-logit initialisation (surrogate.elm), not a classifier's
        raise ConfigError(f"{where}.spike_bias_init: NeuronIO's spike-logit initialisation, not used for tasks; remove it")
    config = from_table(ELMConfig, {**table, "num_input": width, "num_output": num_classes}, where)
    if (kind == "branch-elm") != (config.num_branch > 0):
        raise ConfigError(f"{where}.num_branch: {'the Branch-ELM needs num_branch > 0' if kind == 'branch-elm' else 'the plain ELM has num_branch = 0'}")
    return config


def load_task_config(paths: list[str | os.PathLike], spec, kind: str) -> TaskRunConfig:
    """The run config of model `kind` on task `spec` from task config files; every table is checked strictly."""
    if kind not in SEQUENCE_MODELS:
        raise ConfigError(f"unknown model {kind!r} (expected one of: {', '.join(SEQUENCE_MODELS)})")
    tables = read_task_tables(paths)
    where = " + ".join(str(p) for p in paths)
    task_table = dict(tables.get("task", {}))
    unknown = sorted(set(task_table) - {"name"})
    if unknown:
        raise ConfigError(f"{where} [task]: unknown key '{unknown[0]}' (known: name)")
    if task_table.get("name", spec.name) != spec.name:
        raise ConfigError(f"{where} is a config for task {task_table['name']!r}, not {spec.name!r}")
    train = _train_config(tables.get("train", {}), kind, where)
    if train.augment == "dihedral" and spec.input_kind != "pixels":
        raise ConfigError(f"{where} [train] augment = 'dihedral' turns images; task {spec.name} has {spec.input_kind}, "
                          "not pixels (use 'none')")
    model = from_table(SequenceModelConfig, tables.get("model"), f"{where} [model]")
    try:
        width = InputEncoding.for_model(spec.input_kind, spec.input_size, model).width
    except ValueError as err:
        raise ConfigError(f"task {spec.name}: {err}") from None
    elms = {name: _elm_config(tables.get(MODEL_TABLES[name]), name, width, spec.num_classes,
                              f"{where} [{MODEL_TABLES[name]}]")
            for name in ("elm", "branch-elm") if name == kind or MODEL_TABLES[name] in tables}
    lstm = from_table(LSTMBaselineConfig, tables.get("lstm"), f"{where} [lstm]")
    if kind == "lstm":
        budget_core = None
        if lstm.hidden_size == 0 and lstm.parameter_budget == 0:
            budget_core = elms.get(lstm.match) or _elm_config(None, lstm.match, width, spec.num_classes,
                                                              f"{where} [{MODEL_TABLES[lstm.match]}]")
        return TaskRunConfig(spec.name, kind, train, model, lstm, budget_core)
    return TaskRunConfig(spec.name, kind, train, model, elms[kind])


# --------------------------------------------------------------------------- data

@dataclass
class TaskData:
    """A task's spec and its three splits (torch Datasets of {"inputs", "length", "label"})."""

    spec: TaskSpec
    splits: dict[str, torch.utils.data.Dataset]


def task_spec(task: str):
    """surrogate.tasks.TASKS[task]; an unknown name is a ConfigError listing the known ones."""
    from surrogate.tasks import TASKS

    if task not in TASKS:
        raise ConfigError(f"unknown task {task!r} (expected one of: {', '.join(TASKS)})")
    return TASKS[task]


def open_task_split(task: str, data_dir: str | os.PathLike, split: str) -> torch.utils.data.Dataset:
    """surrogate.tasks' prepared `split` of `task` in `data_dir`; missing or unreadable data -> DatasetError."""
    from surrogate.tasks import open_split

    task_spec(task)
    try:
        return open_split(task, data_dir, split)
    except UserInputError:
        raise
    except (OSError, KeyError, ValueError) as err:
        raise DatasetError(f"cannot open the {split} split of {task} in {data_dir}: {err}; "
                           f"make it with `python -m pipelines prepare-task --task {task} --data-dir {data_dir}`") from None


def open_task_data(task: str, data_dir: str | os.PathLike) -> TaskData:
    """surrogate.tasks' prepared splits of `task` in `data_dir`; missing or unreadable data -> DatasetError."""
    return TaskData(task_spec(task), {split: open_task_split(task, data_dir, split) for split in SPLITS})


def collate_examples(items: list[dict]) -> dict[str, torch.Tensor]:
    """Stack examples, zero-padding inputs along time to the longest in the batch."""
    inputs = [torch.as_tensor(item["inputs"]) for item in items]
    steps = max(x.shape[0] for x in inputs)
    batch = inputs[0].new_zeros((len(inputs), steps, *inputs[0].shape[1:]))
    for i, x in enumerate(inputs):
        batch[i, :x.shape[0]] = x
    lengths = torch.tensor([int(item.get("length", x.shape[0])) for item, x in zip(items, inputs)], dtype=torch.long)
    labels = torch.tensor([int(item["label"]) for item in items], dtype=torch.long)
    return {"inputs": batch, "length": lengths, "label": labels}


def epoch_batches(num_examples: int, batch_size: int, batches: int, seed: int, epoch: int) -> list[list[int]]:
    """The training batches of an epoch (indices), from (seed, epoch) only; batches 0: one pass."""
    if batches == 0:
        order = torch.randperm(num_examples, generator=torch.Generator().manual_seed(seed_for(seed, epoch, 0)))
        return [order[i:i + batch_size].tolist() for i in range(0, num_examples, batch_size)]
    needed, parts, k = batches * batch_size, [], 0
    while sum(len(p) for p in parts) < needed:
        parts.append(torch.randperm(num_examples, generator=torch.Generator().manual_seed(seed_for(seed, epoch, k))))
        k += 1
    order = torch.cat(parts)[:needed]
    return [order[i:i + batch_size].tolist() for i in range(0, needed, batch_size)]


# --------------------------------------------------------------------------- loss and scoring

def classification_loss(logits: torch.Tensor, labels: torch.Tensor, lengths: torch.Tensor,
                        readout: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean cross-entropy, predicted classes). Per-step logits (B, T, C): the label at every valid step."""
    if readout != "per-step":
        return F.cross_entropy(logits.float(), labels), logits.argmax(-1)
    batch, steps, classes = logits.shape
    lengths = lengths.clamp(1, steps)
    valid = torch.arange(steps, device=logits.device)[None, :] < lengths[:, None]
    per_step = F.cross_entropy(logits.float().reshape(-1, classes), labels.repeat_interleave(steps), reduction="none")
    loss = ((per_step.view(batch, steps) * valid).sum(1) / lengths).mean()
    return loss, logits[torch.arange(batch, device=logits.device), lengths - 1].argmax(-1)


def _limited(dataset, limit: int):
    return dataset if limit == 0 or limit >= len(dataset) else torch.utils.data.Subset(dataset, range(limit))


def dihedral_view_log_probs(model: SequenceClassifier, images: torch.Tensor, lengths: torch.Tensor,
                            recurrence: str = "auto") -> torch.Tensor:
    """The class log-probabilities of each flattened square image in each of its 8 rotations / reflections
    (surrogate.tasks.datasets.dihedral_views), (8, B, classes): 8 forward passes."""
    return torch.stack([torch.log_softmax(model(dihedral_views(images, torch.full_like(lengths, view)), lengths,
                                                recurrence=recurrence).float(), -1) for view in range(DIHEDRAL_VIEWS)])


def dihedral_averaged_log_probs(model: SequenceClassifier, images: torch.Tensor, lengths: torch.Tensor,
                                recurrence: str = "auto") -> torch.Tensor:
    """Test-time augmentation: log of the class probabilities averaged over the 8 views of each image, (B, classes).
    The label of Pathfinder is the same in every view, and a pixel-by-pixel reader sees each view as another
    sequence, so the mean is an 8-member ensemble of one model's answers."""
    return torch.logsumexp(dihedral_view_log_probs(model, images, lengths, recurrence), 0) - math.log(DIHEDRAL_VIEWS)


@torch.no_grad()
def evaluate(model: SequenceClassifier, dataset, batch_size: int, device: torch.device, recurrence: str = "auto",
             loader_workers: int = 0, keep_predictions: bool = False,
             on_batch: Callable[[int], None] | None = None, test_time_augment: str = "none") -> dict[str, Any]:
    """Mean loss and accuracy of `model` on every example of `dataset`, in order; with `keep_predictions` also each
    example's predicted class and label ("predicted", "labels": CPU tensors). `on_batch(n)` after each batch of n.
    test_time_augment "dihedral" (square images, a pooled readout): classify each image from its 8 views
    (dihedral_averaged_log_probs); the loss is then that of the averaged probabilities."""
    if test_time_augment not in AUGMENTATIONS:
        raise ValueError(f"test_time_augment must be one of {', '.join(AUGMENTATIONS)}, got {test_time_augment!r}")
    if test_time_augment == "dihedral" and model.model_config.readout == "per-step":
        raise ValueError("test_time_augment 'dihedral' averages one answer per image; this model's readout is per-step")
    model.eval()
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate_examples,
                                         num_workers=loader_workers, pin_memory=device.type == "cuda")
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    count, kept = 0, []
    for batch in loader:
        inputs, lengths, labels = (batch[k].to(device, non_blocking=True) for k in ("inputs", "length", "label"))
        if test_time_augment == "dihedral":  # log-probabilities summing to 1: cross-entropy takes them as logits
            logits = dihedral_averaged_log_probs(model, inputs, lengths, recurrence)
        else:
            logits = model(inputs, lengths, recurrence=recurrence)
        loss, predicted = classification_loss(logits, labels, lengths, model.model_config.readout)
        loss_sum += loss * labels.shape[0]
        correct += (predicted == labels).sum()
        count += labels.shape[0]
        if keep_predictions:
            kept.append((predicted.cpu(), labels.cpu()))
        if on_batch is not None:
            on_batch(labels.shape[0])
    scores = {"loss": loss_sum.item() / max(count, 1), "accuracy": correct.item() / max(count, 1), "examples": count}
    if keep_predictions:
        scores["predicted"] = torch.cat([p for p, _ in kept]) if kept else torch.zeros(0, dtype=torch.long)
        scores["labels"] = torch.cat([y for _, y in kept]) if kept else torch.zeros(0, dtype=torch.long)
    return scores


# --------------------------------------------------------------------------- the run

@dataclass
class SequenceRunState:
    """How far a run has come: stored in checkpoint_last.pt, restored when the run resumes."""

    epoch: int = 0
    global_step: int = 0
    history: list[dict] = field(default_factory=list)
    best_epoch: int | None = None
    best_key: list[float] | None = None  # [valid accuracy, -valid loss] of the best epoch
    training_time_s: float = 0.0
    resumed_at_epochs: list[int] = field(default_factory=list)
    initialized_from: dict | None = None  # init_from: the source run's checkpoint, epoch, steps and training time


@dataclass
class SequenceRun:
    config: TaskRunConfig
    data: TaskData
    model: SequenceClassifier
    optimizer: torch.optim.Optimizer
    device: torch.device
    out_dir: Path
    train_set: Any
    valid_set: Any
    test_set: Any
    state: SequenceRunState = field(default_factory=SequenceRunState)
    resumed: bool = False

    @property
    def batches_per_epoch(self) -> int:
        train = self.config.train
        return train.batches_per_epoch or math.ceil(len(self.train_set) / train.batch_size)

    @property
    def total_steps(self) -> int:
        return self.config.train.epochs * self.batches_per_epoch

    def learning_rate(self, step: int) -> float:
        train = self.config.train
        return cosine_learning_rate(step, self.total_steps, train.learning_rate, train.lr_min)

    def identity(self) -> dict:
        """What a resumed run must share with the run in its directory."""
        train = {k: v for k, v in dataclasses.asdict(self.config.train).items() if k not in RESUMABLE_KEYS}
        return {"task": self.config.task, "model": self.model.describe(), "train": train,
                "split_sizes": {name: len(self.data.splits[name]) for name in SPLITS}}


def fit_sequence(data: TaskData, config: TaskRunConfig, out_dir: str | os.PathLike,
                 progress: Progress | None = None, init_from: str | os.PathLike | None = None) -> dict:
    """Train `config.kind` on `data`, writing the run to `out_dir`; returns the summary (summary.json).

    Re-running the same call resumes from out_dir/checkpoint_last.pt; a finished run returns its
    summary at once (with "already_finished": True). `init_from` (a new run only): start from the
    weights of that fit-task run directory (its best checkpoint) or checkpoint file. progress(event,
    info) receives "start", "steps", "validate", "epoch", "stopped" (max_time_s reached), "test" and
    "finished".
    """
    report = progress or (lambda event, info: None)
    out_dir = Path(out_dir)
    train = config.train
    device = resolve_device(train.device)
    threads_before = torch.get_num_threads()
    if train.num_threads:
        torch.set_num_threads(train.num_threads)
    try:
        check_writable(out_dir)
        with DirectoryLock(out_dir, "fit-task"):
            run = start_sequence_run(data, config, device, out_dir, init_from)
            summary_path = out_dir / SUMMARY_JSON
            if run.state.epoch >= train.epochs and summary_path.is_file():
                from common.jsonio import read_json

                summary = read_json(summary_path)
                if (summary.get("epochs_completed") == run.state.epoch and summary.get("test_accuracy") is not None
                        and summary.get("test_examples") == len(run.test_set)):
                    summary["already_finished"] = True
                    report("finished", summary)
                    return summary
            return train_sequence_run(run, report)
    finally:
        torch.set_num_threads(threads_before)


def start_sequence_run(data: TaskData, config: TaskRunConfig, device: torch.device, out_dir: Path,
                       init_from: str | os.PathLike | None = None) -> SequenceRun:
    """Build the model and optimiser once (seeded), and resume if out_dir holds a run (else start from
    `init_from`'s weights, if given)."""
    for split in SPLITS:
        if len(data.splits[split]) == 0:
            raise DatasetError(f"the {split} split of {config.task} is empty")
    train = config.train
    torch.manual_seed(train.seed)
    spec = data.spec
    model = build_sequence_model(config.kind, spec.input_kind, spec.input_size, spec.num_classes,
                                 config.model, config.core, config.budget_core).to(device)
    run = SequenceRun(
        config=config, data=data, model=model,
        optimizer=torch.optim.Adam(model.parameters(), lr=train.learning_rate, weight_decay=train.weight_decay),
        device=device, out_dir=out_dir,
        train_set=_limited(data.splits["train"], train.max_train_examples),
        valid_set=_limited(data.splits["valid"], train.max_valid_examples),
        test_set=_limited(data.splits["test"], train.max_test_examples),
    )
    if (out_dir / LAST).is_file():
        checkpoint = load_sequence_checkpoint(out_dir / LAST)
        _check_resumable(run, checkpoint)
        run.model.load_state_dict(checkpoint["model_state"])
        run.optimizer.load_state_dict(checkpoint["optimizer_state"])
        run.state = SequenceRunState(**checkpoint["state"])
        run.resumed = True
        check_started_from(run.state.initialized_from, init_from, out_dir)
    elif init_from is not None:
        run.state.initialized_from = initialise_sequence_model(run, Path(init_from))
    return run


def initialise_sequence_model(run: SequenceRun, source: Path) -> dict:
    """Load the weights of `source` (a fit-task run directory: its best checkpoint; or a checkpoint file) into the
    new run's model, which must be the same model (WEIGHTLESS_MODEL_KEYS aside). Returns what the run records."""
    checkpoint = load_sequence_checkpoint(source)
    where = f"--init-from {source}"
    changed = [k for k in _changed_keys(checkpoint["identity"]["model"], run.model.describe())
               if k.removeprefix("model.") not in WEIGHTLESS_MODEL_KEYS]
    if changed:
        raise RunMismatchError(f"{where}: another model than this run's (differs in: {', '.join(changed)})")
    run.model.load_state_dict(checkpoint["model_state"])
    state = checkpoint["state"]
    return {"source": str(source.resolve()), "task": checkpoint["identity"]["task"], "epoch": state["epoch"],
            "global_step": state["global_step"], "training_time_s": state["training_time_s"]}


def _check_resumable(run: SequenceRun, checkpoint: dict) -> None:
    hint = f"use another --out, or delete {run.out_dir} to start over"
    before, now = dict(checkpoint.get("identity", {})), run.identity()
    if isinstance(before.get("train"), dict):  # a [train] key added since the run began held its default there
        defaults = {f.name: f.default for f in dataclasses.fields(SequenceTrainConfig) if f.name not in RESUMABLE_KEYS}
        before["train"] = {**defaults, **before["train"]}
    for key, what in (("task", "task"), ("model", "model config"), ("train", "[train] settings"),
                      ("split_sizes", "dataset (split sizes differ)")):
        if before.get(key) != now[key]:
            changed = ""
            if isinstance(now[key], dict) and isinstance(before.get(key), dict):
                names = _changed_keys(before[key], now[key])
                changed = f" (changed: {', '.join(names)})" if names else ""
            raise RunMismatchError(f"{run.out_dir} holds a run with another {what}{changed}; {hint}")


def _changed_keys(before: dict, now: dict) -> list[str]:
    """The dotted names of the (nested) keys whose values differ between two dicts, sorted."""
    before, now = _flatten(before), _flatten(now)
    return sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k))


def _flatten(value: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in value.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def train_sequence_run(run: SequenceRun, report: Progress) -> dict:
    """The remaining epochs (validate and save after each), then the test score of the best epoch."""
    train, state = run.config.train, run.state
    if run.resumed and state.epoch < train.epochs:
        state.resumed_at_epochs.append(state.epoch)
    report("start", {"task": run.config.task, "model_kind": run.config.kind, "epochs": train.epochs,
                     "first_epoch": state.epoch + 1, "batches_per_epoch": run.batches_per_epoch,
                     "device": str(run.device), "num_parameters": num_parameters(run.model), "resumed": run.resumed,
                     "train_examples": len(run.train_set), "valid_examples": len(run.valid_set)})
    eval_batch = train.eval_batch_size or train.batch_size
    invocation_started, last_epoch_s = time.perf_counter(), 0.0
    while state.epoch < train.epochs:
        expected_end_s = time.perf_counter() - invocation_started + last_epoch_s  # if one more epoch ran
        if train.max_time_s and last_epoch_s and expected_end_s > train.max_time_s:
            report("stopped", {"epoch": state.epoch, "epochs": train.epochs, "max_time_s": train.max_time_s})
            break
        epoch = state.epoch + 1
        started = time.perf_counter()
        train_loss, train_accuracy = train_sequence_epoch(run, epoch, report)
        train_seconds = time.perf_counter() - started
        report("validate", {"epoch": epoch})
        valid = evaluate(run.model, run.valid_set, eval_batch, run.device, train.recurrence, train.loader_workers)
        seconds = last_epoch_s = time.perf_counter() - started
        state.training_time_s += seconds
        row = {"epoch": epoch, "step": state.global_step, "train_loss": train_loss, "train_accuracy": train_accuracy,
               "valid_loss": valid["loss"], "valid_accuracy": valid["accuracy"],
               "lr": run.learning_rate(state.global_step), "epoch_time_s": seconds, "elapsed_s": state.training_time_s,
               "examples_per_s": run.batches_per_epoch * train.batch_size / max(train_seconds, 1e-9)}
        state.history.append(row)
        state.epoch = epoch
        key = [valid["accuracy"], -valid["loss"] if math.isfinite(valid["loss"]) else -math.inf]
        improved = state.best_key is None or key > state.best_key
        if improved:
            state.best_key, state.best_epoch = key, epoch
        save_sequence_run(run, improved)
        report("epoch", {**row, "improved": improved, "epochs": train.epochs})

    best = load_sequence_checkpoint(run.out_dir / BEST)
    run.model.load_state_dict(best["model_state"])
    report("test", {"epoch": state.best_epoch, "examples": len(run.test_set)})
    test = evaluate(run.model, run.test_set, eval_batch, run.device, train.recurrence, train.loader_workers)
    summary = summarise_sequence_run(run, test)
    with as_output_error(run.out_dir / SUMMARY_JSON):
        write_json(run.out_dir / SUMMARY_JSON, summary)
    report("finished", summary)
    return summary


def train_sequence_epoch(run: SequenceRun, epoch: int, report: Progress) -> tuple[float, float]:
    """One epoch of Adam steps on the cosine schedule; returns (mean training loss, training accuracy)."""
    model, optimizer, train, device, state = run.model, run.optimizer, run.config.train, run.device, run.state
    torch.manual_seed(seed_for(train.seed, epoch, 1))  # dropout: the same whether resumed or not
    model.train()
    batches = epoch_batches(len(run.train_set), train.batch_size, train.batches_per_epoch, train.seed, epoch)
    views = None
    if train.augment == "dihedral":  # drawn from (seed, epoch) alone, so a resumed run sees the same images
        views = torch.randint(0, DIHEDRAL_VIEWS, (len(batches), train.batch_size),
                              generator=torch.Generator().manual_seed(seed_for(train.seed, epoch, 2))).to(device)
    loader = torch.utils.data.DataLoader(run.train_set, batch_sampler=batches, collate_fn=collate_examples,
                                         num_workers=train.loader_workers, pin_memory=device.type == "cuda")
    sync_every = 1 if device.type == "cpu" else 25
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    seen, reported = 0, 0
    for step, batch in enumerate(loader):
        inputs, lengths, labels = (batch[k].to(device, non_blocking=True) for k in ("inputs", "length", "label"))
        if views is not None:
            inputs = dihedral_views(inputs, views[step, :inputs.shape[0]])
        lr = run.learning_rate(state.global_step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        logits = model(inputs, lengths, recurrence=train.recurrence)
        loss, predicted = classification_loss(logits, labels, lengths, model.model_config.readout)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if train.grad_clip_norm > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), train.grad_clip_norm)
        optimizer.step()
        state.global_step += 1
        loss_sum += loss.detach() * labels.shape[0]
        correct += (predicted == labels).sum()
        seen += labels.shape[0]
        if (step + 1) % sync_every == 0 or step + 1 == len(batches):
            running = loss_sum.item() / seen
            if not math.isfinite(running):
                raise TrainingDivergedError(f"training loss became {running} at epoch {epoch}, step {step + 1}: "
                                            "the model diverged; lower [train] learning_rate or set grad_clip_norm")
            report("steps", {"epoch": epoch, "steps": step + 1 - reported, "step_in_epoch": step + 1,
                             "global_step": state.global_step, "loss": running, "lr": lr})
            reported = step + 1
    return loss_sum.item() / max(seen, 1), correct.item() / max(seen, 1)


# --------------------------------------------------------------------------- files

def save_sequence_checkpoint(path: Path, **fields) -> None:
    """A weights-only torch file (tensors and plain containers), written atomically."""
    buffer = io.BytesIO()
    torch.save({"format": CHECKPOINT_FORMAT, "version": 1, **fields}, buffer)
    with as_output_error(path):
        write_bytes_atomic(path, buffer.getvalue())


def load_sequence_checkpoint(path: str | os.PathLike) -> dict:
    """A fit-task checkpoint file, or a run directory's best checkpoint."""
    path = Path(path)
    if path.is_dir():
        path = path / BEST
    checkpoint = load_weights_only(path)
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise UserInputError(f"{path}: not a fit-task checkpoint")
    return checkpoint


def load_sequence_model(path: str | os.PathLike, device: str | torch.device = "cpu",
                        task: str | None = None) -> tuple[SequenceClassifier, dict]:
    """A trained classifier from a checkpoint file or a run directory (its best checkpoint); with `task`, one trained
    on another task is refused (UserInputError)."""
    checkpoint = load_sequence_checkpoint(path)
    if task is not None and checkpoint["identity"]["task"] != task:
        raise UserInputError(f"{path} was trained on {checkpoint['identity']['task']}, not {task}")
    model = sequence_model_from_dict(checkpoint["identity"]["model"])
    model.load_state_dict(checkpoint["model_state"])
    return model.to(device).eval(), checkpoint


def save_sequence_run(run: SequenceRun, improved: bool) -> None:
    """checkpoint_best.pt (if improved), checkpoint_last.pt, metrics.csv / metrics.json."""
    fields = dict(identity=run.identity(), model_state=run.model.state_dict(),
                  optimizer_state=run.optimizer.state_dict(), state=dataclasses.asdict(run.state),
                  train_config=dataclasses.asdict(run.config.train), device=str(run.device))
    for name in ((BEST, LAST) if improved else (LAST,)):
        save_sequence_checkpoint(run.out_dir / name, **fields)
    write_metrics(run.out_dir, run.state.history)


def summarise_sequence_run(run: SequenceRun, test: dict) -> dict:
    state, config = run.state, run.config
    best = next((row for row in state.history if row["epoch"] == state.best_epoch), None)
    return {
        "task": config.task,
        "model_kind": config.kind,
        "num_parameters": num_parameters(run.model),
        "model": run.model.describe(),
        "finished": state.epoch >= config.train.epochs,
        "epochs_completed": state.epoch,
        "global_step": state.global_step,
        "best_epoch": state.best_epoch,
        "best_valid_accuracy": best["valid_accuracy"] if best else None,
        "best_valid_loss": best["valid_loss"] if best else None,
        "test_accuracy": test["accuracy"],
        "test_loss": test["loss"],
        "test_examples": test["examples"],
        "valid_examples": len(run.valid_set),
        "train_examples": len(run.train_set),
        "training_time_s": state.training_time_s,
        "device": str(run.device),
        "device_name": torch.cuda.get_device_name(run.device) if run.device.type == "cuda" else "cpu",
        "train_config": dataclasses.asdict(config.train),
        "resumed_at_epochs": state.resumed_at_epochs,
        "initialized_from": state.initialized_from,
        "checkpoints": {"last": str(run.out_dir / LAST), "best": str(run.out_dir / BEST)},
    }
