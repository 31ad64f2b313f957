"""The model registry: every kind of surrogate, written once.

Each kind maps its name (the command line's --model, checkpoints, run directories) to the
module that defines it, its config dataclass and its config table. Everything that lists,
configures, builds or recognises models reads this table: `fit --model`, the config tables
(surrogate.config), checkpoints, `evaluate`'s run directories. The classes are named, not
imported, so the command-line verbs list the kinds without importing torch.

The ELM and the Branch-ELM are one class (surrogate.elm.ELM): the Branch-ELM routes its
synapses onto branches (num_branch > 0; Spieler et al. 2024 use 45 branches of 100
synapses, its table's defaults), the plain ELM has one synapse per input (num_branch = 0).
"""

from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from simulation.errors import ConfigError


def _plain_elm(config: Mapping[str, Any]) -> str | None:
    if config.get("num_branch", 0) != 0:
        return "num_branch: the plain ELM has num_branch = 0 (branches: use [branch_elm] and --model branch-elm)"
    return None


def _branch_elm(config: Mapping[str, Any]) -> str | None:
    if config.get("num_branch", 0) == 0:
        return "num_branch: the Branch-ELM needs num_branch > 0 (0 is the plain ELM, --model elm)"
    return None


@dataclass(frozen=True)
class ModelKind:
    """One kind of surrogate: where it lives and how it is configured."""

    name: str  # "branch-elm": --model, checkpoints, run directory names
    table: str  # "branch_elm": its config table
    module: str  # "surrogate.elm"
    model_class: str  # "ELM"
    config_class: str  # "ELMConfig"
    defaults: Mapping[str, Any] = field(default_factory=dict)  # table defaults over the config class's own
    check: Callable[[Mapping[str, Any]], str | None] = lambda config: None  # what else a config of this kind needs

    def config_type(self) -> type:
        return getattr(importlib.import_module(self.module), self.config_class)

    def model_type(self) -> type:
        return getattr(importlib.import_module(self.module), self.model_class)


MODELS: dict[str, ModelKind] = {kind.name: kind for kind in (
    ModelKind("elm", "elm", "surrogate.elm", "ELM", "ELMConfig", check=_plain_elm),
    ModelKind("branch-elm", "branch_elm", "surrogate.elm", "ELM", "ELMConfig",
              defaults={"num_branch": 45, "num_synapse_per_branch": 100}, check=_branch_elm),
    ModelKind("tcn", "tcn", "surrogate.tcn", "TCN", "TCNConfig"),
    ModelKind("lstm", "lstm", "surrogate.lstm", "LSTM", "LSTMConfig"),
)}
MODEL_KINDS = tuple(MODELS)  # ("elm", "branch-elm", "tcn", "lstm"), in the order reports list them
MODEL_TABLES = tuple(kind.table for kind in MODELS.values())


def model_kind(name: str) -> ModelKind:
    """The registry entry of `name`; an unknown name is a ConfigError listing the known ones."""
    if name not in MODELS:
        raise ConfigError(f"unknown model {name!r} (expected one of: {', '.join(MODEL_KINDS)})")
    return MODELS[name]


def sized_name(kind: str, model_config: Mapping[str, Any] | None) -> str:
    """A model kind with its memory size, "branch-elm-d20" (released checkpoint folders, data-efficiency curves);
    the kind alone for models without num_memory."""
    memory = (model_config or {}).get("num_memory")
    return f"{kind}-d{memory}" if memory else kind


def config_as_dict(model_config) -> dict[str, Any]:
    """A model config dataclass as a plain JSON-able dict (tuples become lists): what checkpoints store."""
    from common.jsonio import plain  # here, not at the top: the command line lists the kinds without numpy

    return plain(dataclasses.asdict(model_config))


def model_config_from_table(kind: str, table: Mapping[str, Any] | None, where: str | None = None):
    """The config dataclass of `kind` from its table (a TOML table or a stored dict), read strictly.

    Unknown keys, wrong types and out-of-range values raise ConfigError naming the key.
    """
    from simulation.config import from_table

    entry = model_kind(kind)
    where = where or f"[{entry.table}]"
    table = {**entry.defaults, **(table or {})}
    problem = entry.check(table)
    if problem:
        raise ConfigError(f"{where}.{problem}")
    return from_table(entry.config_type(), table, where)


def build_model(kind: str, config=None):
    """A fresh model of `kind` from its config: the dataclass, or a plain dict read as its table."""
    entry = model_kind(kind)
    if not isinstance(config, entry.config_type()):
        config = model_config_from_table(kind, config)
    else:
        problem = entry.check(dataclasses.asdict(config))
        if problem:
            raise ConfigError(f"[{entry.table}].{problem}")
    return entry.model_type()(config)


def model_kind_of(model) -> str:
    """The kind of a model built from the registry."""
    for kind in MODELS.values():
        if isinstance(model, kind.model_type()) and kind.check(dataclasses.asdict(model.config)) is None:
            return kind.name
    raise TypeError(f"not a surrogate model: {type(model).__name__}")


def model_config_of(model) -> dict[str, Any]:
    """The plain dict of a model's config, which `build_model(kind, dict)` takes back."""
    return config_as_dict(model.config)
