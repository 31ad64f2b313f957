"""The ELM neuron as a sequence model: classifiers for the long-horizon tasks of the ELM paper.

Spieler et al. (ICLR 2024) evaluate the ELM and Branch-ELM beyond NeuronIO on the Long Range
Arena (ListOps, Pathfinder, Pathfinder-X) and on SHD-Adding. Here the same neuron
(surrogate.elm.ELM: the same equations, the same reference recurrence and fused kernel) reads
any input width and writes any number of outputs:

    inputs (B, T) tokens / pixels, or (B, T, C) spikes / real values
      -> input encoding            encoding "learned": tokens nn.Embedding(vocab, E, padding_idx=0),
                                                       pixels nn.Linear(1, E) on value / 255
                                   encoding "one-hot" (the paper's LRA setup, its appendix B: "pixel
                                   and token sequences were encoded categorically"): tokens one-hot
                                   over the vocabulary (padding all zero), pixels one-hot over
                                   `grey_levels` bins of the 256 grey values (16; Pathfinder-X 8)
                                   spikes, real: the C channels as they are
      -> optional input dropout
      -> core                      ELM / Branch-ELM (surrogate.elm.ELM, num_input = E or C,
                                   num_output = classes), or an LSTM + linear readout
      -> per-step logits (B, T, classes)
      -> readout                   "per-step": all T steps; "last": the step length - 1 of each
                                   sequence; "mean": the mean over its valid steps t < length

The ELM's readout y_t = W_y m_t is linear, so pooling its per-step outputs is pooling the
memory first. Nothing NeuronIO-specific is left in the model: every synapse is excitatory
(NeuronIO's +1 / -1 input signs are a property of its data; surrogate.elm applies them to
the second half of the inputs, which is switched off here), and a Branch-ELM's synapses read
either overlapping windows of consecutive inputs or random inputs (`branch_routing`) instead
of NeuronIO's interleaved segments.

`lstm_hidden_for_budget` sizes the LSTM baseline to a parameter count (the paper compares
with LSTMs of the same number of parameters).

Memory at long T (Pathfinder-X: T = 16384). On CUDA the recurrence runs in the fused kernel
(surrogate.kernels.fused): one program per batch row walks the whole time axis with the state
in registers, so the kernel itself needs O(1) memory per row beyond its inputs and outputs;
for the backward pass it saves, per step and batch row, p_t (H floats), u_t (d_m) and the
output m_t (d_m): (H + 2 d_m) x 4 bytes, e.g. 1.6 kB at d_m = 100, H = 200. With the encoder,
the synaptic filter and the readout the whole model saves a fixed number of bytes per step
(`saved_activation_bytes` counts them; 1.73 kB for the Pathfinder-X ELM), so training memory
grows linearly in B x T and nothing else grows with T. On the CPU the reference recurrence
steps through time in PyTorch and autograd keeps a few H- and d_m-vectors per step (2.5 kB for
the same model): slower, same linear growth (docs/long_horizon.md, "Long sequences and memory").
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F

from common.config import require as _require

from .elm import ELM, ELMConfig, num_parameters
from .lstm import LSTM, LSTMConfig

INPUT_KINDS = ("tokens", "pixels", "spikes", "real")
READOUTS = ("last", "mean", "per-step")
ENCODINGS = ("learned", "one-hot")  # tokens and pixels: a learned linear encoding, or categorical (one-hot)
SEQUENCE_MODELS = ("elm", "branch-elm", "lstm")  # --model of fit-task
ROUTINGS = ("windows", "random")
PIXEL_SCALE = 255.0  # pixel values 0..255 enter the learned encoding as value / 255
GREY_VALUES = 256  # pixel values 0..255: the one-hot encoding bins them into grey_levels equal bins


@dataclass(frozen=True)
class SequenceModelConfig:
    """[model]: what every sequence model shares (encoding, readout)."""

    readout: str = "last"  # "last", "mean" or "per-step"
    encoding: str = "learned"  # tokens and pixels: "learned" (width embedding_dim) or "one-hot"
    embedding_dim: int = 32  # encoding "learned": width E (spikes and real values: the channels themselves)
    grey_levels: int = 16  # pixels with encoding "one-hot": the 256 grey values binned into this many levels
    input_dropout: float = 0.0  # dropout on the encoded inputs (training only)
    branch_routing: str = "windows"  # Branch-ELM: "windows" (overlapping runs of consecutive inputs) or "random"
    routing_seed: int = 0  # branch_routing = "random": the draw

    def __post_init__(self):
        _require(self.readout in READOUTS, f"readout must be one of {', '.join(READOUTS)}, got {self.readout!r}")
        _require(self.encoding in ENCODINGS, f"encoding must be one of {', '.join(ENCODINGS)}, got {self.encoding!r}")
        _require(self.embedding_dim >= 1, f"embedding_dim must be >= 1, got {self.embedding_dim}")
        _require(2 <= self.grey_levels <= GREY_VALUES and GREY_VALUES % self.grey_levels == 0,
                 f"grey_levels must divide 256 (2, 4, ..., 256), got {self.grey_levels}")
        _require(0.0 <= self.input_dropout < 1.0, f"input_dropout must be in [0, 1), got {self.input_dropout}")
        _require(self.branch_routing in ROUTINGS,
                 f"branch_routing must be one of {', '.join(ROUTINGS)}, got {self.branch_routing!r}")
        _require(self.routing_seed >= 0, f"routing_seed must be >= 0, got {self.routing_seed}")


@dataclass(frozen=True)
class LSTMBaselineConfig:
    """[lstm] of a task config: the baseline (surrogate.lstm.LSTM). hidden_size 0: sized to the parameter budget."""

    hidden_size: int = 0  # 0: the size whose whole classifier comes closest to parameter_budget
    num_layers: int = 1
    parameter_budget: int = 0  # 0: the parameter count of the `match` model of the same config
    match: str = "elm"  # which ELM sets the budget when parameter_budget = 0: "elm" or "branch-elm"
    chrono_max_steps: float = 0.0  # > 2: Chrono-LSTM gate biases for memory spans up to this many steps (the paper's baseline); 0: off

    def __post_init__(self):
        _require(self.hidden_size >= 0, f"hidden_size must be >= 0 (0: from the parameter budget), got {self.hidden_size}")
        _require(self.num_layers >= 1, f"num_layers must be >= 1, got {self.num_layers}")
        _require(self.parameter_budget >= 0, f"parameter_budget must be >= 0, got {self.parameter_budget}")
        _require(self.match in ("elm", "branch-elm"), f"match must be 'elm' or 'branch-elm', got {self.match!r}")
        _require(self.chrono_max_steps == 0 or self.chrono_max_steps > 2,
                 f"chrono_max_steps must be 0 (off) or > 2, got {self.chrono_max_steps}")


# --------------------------------------------------------------------------- pieces

class InputEncoding(nn.Module):
    """Tokens / pixels (B, T) -> (B, T, width), learned or one-hot; spikes, real (B, T, C) as they are.

    learned: tokens nn.Embedding(vocab, E, padding_idx=0), pixels nn.Linear(1, E)(value / 255);
    one-hot: tokens one-hot over the vocabulary with padding (id 0) all zero, pixels one-hot over
    grey_levels equal bins of the values 0..255 (value * grey_levels // 256).
    """

    def __init__(self, input_kind: str, input_size: int, embedding_dim: int, encoding: str = "learned",
                 grey_levels: int = 16):
        super().__init__()
        if input_kind not in INPUT_KINDS:
            raise ValueError(f"input_kind must be one of {', '.join(INPUT_KINDS)}, got {input_kind!r}")
        if encoding not in ENCODINGS:
            raise ValueError(f"encoding must be one of {', '.join(ENCODINGS)}, got {encoding!r}")
        self.input_kind, self.input_size, self.one_hot = input_kind, input_size, encoding == "one-hot"
        self.grey_levels = grey_levels
        self.encode = None
        if input_kind == "tokens":
            self.width = input_size if self.one_hot else embedding_dim
            if not self.one_hot:
                self.encode = nn.Embedding(input_size, embedding_dim, padding_idx=0)
        elif input_kind == "pixels":
            self.width = grey_levels if self.one_hot else embedding_dim
            if not self.one_hot:
                self.encode = nn.Linear(1, embedding_dim)
        else:
            self.width = input_size

    @classmethod
    def for_model(cls, input_kind: str, input_size: int, model: SequenceModelConfig) -> "InputEncoding":
        return cls(input_kind, input_size, model.embedding_dim, model.encoding, model.grey_levels)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        if self.input_kind == "tokens":
            if self.one_hot:  # padding (id 0) -> the zero vector
                ids = inputs.long()
                return F.one_hot(ids, self.input_size).float() * (ids != 0).unsqueeze(-1)
            return self.encode(inputs.long())
        if self.input_kind == "pixels":
            if self.one_hot:
                level = inputs.long() * self.grey_levels // GREY_VALUES
                return F.one_hot(level, self.grey_levels).float()
            return self.encode(inputs.float().unsqueeze(-1) / PIXEL_SCALE)
        if inputs.dim() != 3 or inputs.shape[-1] != self.input_size:
            raise ValueError(f"expected inputs (B, T, {self.input_size}), got {tuple(inputs.shape)}")
        return inputs.float()


def window_routing(num_input: int, num_branch: int, num_synapse_per_branch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Branch b reads inputs b * ceil(num_input / num_branch) + 0 .. num_synapse_per_branch - 1 (entries past the end masked)."""
    stride = math.ceil(num_input / num_branch)
    position = torch.arange(num_branch)[:, None] * stride + torch.arange(num_synapse_per_branch)[None, :]
    valid = position < num_input
    return position.clamp(max=num_input - 1).flatten(), valid.flatten()


def random_routing(num_input: int, num_branch: int, num_synapse_per_branch: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Every synapse reads an input drawn uniformly (the published "random_routing"), reproducibly from `seed`."""
    generator = torch.Generator().manual_seed(seed)
    indices = torch.randint(num_input, (num_branch * num_synapse_per_branch,), generator=generator)
    return indices, torch.ones_like(indices, dtype=torch.bool)


def sequence_elm(config: ELMConfig, routing: str = "windows", routing_seed: int = 0) -> ELM:
    """surrogate.elm.ELM for general inputs: all synapses excitatory, generic branch routing."""
    wiring = None
    if config.num_branch:
        if routing == "windows":
            wiring = window_routing(config.num_input, config.num_branch, config.num_synapse_per_branch)
        else:
            wiring = random_routing(config.num_input, config.num_branch, config.num_synapse_per_branch, routing_seed)
    elm = ELM(config, routing=wiring)
    elm.synapse_type.fill_(1.0)  # NeuronIO's inhibitory half is a property of its data, not of the neuron
    return elm


def lstm_parameters(input_size: int, hidden_size: int, num_layers: int, num_classes: int) -> int:
    """Trainable parameters of surrogate.lstm.LSTM with this input width and readout (PyTorch's LSTM has two bias vectors per layer)."""
    first = 4 * hidden_size * (input_size + hidden_size) + 8 * hidden_size
    later = (num_layers - 1) * (4 * hidden_size * 2 * hidden_size + 8 * hidden_size)
    return first + later + hidden_size * num_classes + num_classes


def lstm_hidden_for_budget(budget: int, input_size: int, num_classes: int, num_layers: int = 1, fixed: int = 0) -> int:
    """The hidden size whose LSTM plus `fixed` other parameters (the encoding) comes closest to `budget`."""
    a = 4 + 8 * (num_layers - 1)
    b = 4 * input_size + 8 + num_classes + 8 * (num_layers - 1)
    c = fixed + num_classes - budget
    root = (-b + math.sqrt(max(b * b - 4 * a * c, 0.0))) / (2 * a)
    candidates = {max(1, math.floor(root)), max(1, math.ceil(root))}
    return min(candidates, key=lambda h: (abs(fixed + lstm_parameters(input_size, h, num_layers, num_classes) - budget), h))


def pool_readout(per_step: torch.Tensor, lengths: torch.Tensor | None, readout: str) -> torch.Tensor:
    """(B, T, C) per-step outputs -> (B, C) at each sequence's last valid step or its mean; "per-step" unchanged.

    lengths (B,) ints in 1..T, or None for sequences of full length T.
    """
    if readout == "per-step":
        return per_step
    batch, steps, _ = per_step.shape
    if lengths is None:
        lengths = torch.full((batch,), steps, dtype=torch.long, device=per_step.device)
    lengths = lengths.to(per_step.device).long().clamp(1, steps)
    if readout == "last":
        return per_step[torch.arange(batch, device=per_step.device), lengths - 1]
    if readout == "mean":
        valid = torch.arange(steps, device=per_step.device)[None, :] < lengths[:, None]  # (B, T)
        return (per_step * valid[..., None]).sum(1) / lengths[:, None].to(per_step.dtype)
    raise ValueError(f"readout must be one of {', '.join(READOUTS)}, got {readout!r}")


# --------------------------------------------------------------------------- the classifier

class SequenceClassifier(nn.Module):
    """Encoding -> ELM / Branch-ELM / LSTM -> readout. `forward(inputs, lengths)` -> (B, classes) or (B, T, classes)."""

    def __init__(self, kind: str, input_kind: str, input_size: int, num_classes: int,
                 model: SequenceModelConfig, core: ELMConfig | LSTMBaselineConfig):
        super().__init__()
        if kind not in SEQUENCE_MODELS:
            raise ValueError(f"kind must be one of {', '.join(SEQUENCE_MODELS)}, got {kind!r}")
        self.kind, self.input_kind, self.input_size, self.num_classes = kind, input_kind, input_size, num_classes
        self.model_config, self.core_config = model, core
        self.encoding = InputEncoding.for_model(input_kind, input_size, model)
        self.dropout = nn.Dropout(model.input_dropout) if model.input_dropout > 0 else nn.Identity()
        width = self.encoding.width
        if kind == "lstm":
            if core.hidden_size < 1:
                raise ValueError("LSTMBaselineConfig.hidden_size must be set (see build_sequence_model)")
            self.core = LSTM(LSTMConfig(num_input=width, num_output=num_classes, hidden_size=core.hidden_size,
                                        num_layers=core.num_layers, chrono_max_steps=core.chrono_max_steps))
        else:
            if core.num_input != width or core.num_output != num_classes:
                raise ValueError(f"ELMConfig must have num_input {width}, num_output {num_classes}; "
                                 f"got {core.num_input}, {core.num_output}")
            self.core = sequence_elm(core, model.branch_routing, model.routing_seed)

    def per_step(self, inputs: torch.Tensor, recurrence: str = "auto") -> torch.Tensor:
        """Logits at every step, (B, T, classes)."""
        encoded = self.dropout(self.encoding(inputs))
        if self.kind == "lstm":
            return self.core(encoded)
        return self.core(encoded, recurrence=recurrence)

    def forward(self, inputs: torch.Tensor, lengths: torch.Tensor | None = None, recurrence: str = "auto") -> torch.Tensor:
        return pool_readout(self.per_step(inputs, recurrence), lengths, self.model_config.readout)

    def describe(self) -> dict[str, Any]:
        """The plain dict that `sequence_model_from_dict` builds this model back from (checkpoints store it)."""
        return {"kind": self.kind, "input_kind": self.input_kind, "input_size": self.input_size,
                "num_classes": self.num_classes, "model": dataclasses.asdict(self.model_config),
                "core": dataclasses.asdict(self.core_config)}


def elm_config_for(table: Mapping[str, Any], width: int, num_classes: int) -> ELMConfig:
    """ELMConfig from an [elm] / [branch_elm] table (or dict) for an input width and a number of classes."""
    fixed = {"num_input", "num_output"} & set(table)
    if fixed:
        raise ValueError(f"{sorted(fixed)[0]} is set by the task (the encoding width and the number of classes)")
    return ELMConfig(**{**table, "num_input": width, "num_output": num_classes})


def build_sequence_model(kind: str, input_kind: str, input_size: int, num_classes: int,
                         model: SequenceModelConfig | None = None, core: ELMConfig | LSTMBaselineConfig | None = None,
                         budget_core: ELMConfig | None = None) -> SequenceClassifier:
    """A fresh SequenceClassifier. `core`: ELMConfig (its num_input / num_output are set from the task) or LSTMBaselineConfig.

    An LSTM with hidden_size 0 is sized to parameter_budget, or, when that is 0, to the
    parameter count of the classifier with the ELM `budget_core` (same encoding and readout).
    """
    model = model or SequenceModelConfig()
    width = InputEncoding.for_model(input_kind, input_size, model).width
    if kind == "lstm":
        core = core or LSTMBaselineConfig()
        if core.hidden_size == 0:
            budget = core.parameter_budget
            if budget == 0:
                if budget_core is None:
                    raise ValueError("an LSTM with hidden_size 0 needs parameter_budget or an ELM config to match")
                reference = build_sequence_model(core.match, input_kind, input_size, num_classes, model, budget_core)
                budget = num_parameters(reference)
            encoding = num_parameters(InputEncoding.for_model(input_kind, input_size, model))
            hidden = lstm_hidden_for_budget(budget, width, num_classes, core.num_layers, fixed=encoding)
            core = dataclasses.replace(core, hidden_size=hidden, parameter_budget=budget)
    else:
        core = core or ELMConfig(num_branch=0)
        core = dataclasses.replace(core, num_input=width, num_output=num_classes)
        if (kind == "branch-elm") != (core.num_branch > 0):
            raise ValueError(f"{kind}: num_branch must be {'> 0' if kind == 'branch-elm' else '0'}, got {core.num_branch}")
    return SequenceClassifier(kind, input_kind, input_size, num_classes, model, core)


def sequence_model_from_dict(description: Mapping[str, Any]) -> SequenceClassifier:
    """The model `SequenceClassifier.describe()` described (weights not included)."""
    kind = description["kind"]
    core_type = LSTMBaselineConfig if kind == "lstm" else ELMConfig
    return SequenceClassifier(kind, description["input_kind"], description["input_size"], description["num_classes"],
                              SequenceModelConfig(**description["model"]), core_type(**description["core"]))


def saved_activation_bytes(model: nn.Module, inputs: torch.Tensor, lengths: torch.Tensor | None = None,
                           recurrence: str = "auto") -> int:
    """Bytes autograd keeps for the backward pass of one forward (distinct storages, parameters excluded)."""
    parameters = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in parameters:
            seen[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        output = model(inputs, lengths, recurrence=recurrence) if isinstance(model, SequenceClassifier) else model(inputs)
    del output
    return sum(seen.values())
