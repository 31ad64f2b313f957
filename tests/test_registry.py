"""The model registry: one list of kinds, each built from its table and recognised back."""

from __future__ import annotations

import argparse

import pytest

from simulation.errors import ConfigError
from surrogate.config import CONFIG_TABLES
from surrogate.registry import (MODEL_KINDS, MODEL_TABLES, MODELS, build_model, config_as_dict, model_config_of,
                                model_kind_of)


@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_every_kind_builds_from_its_table_and_is_recognised(kind):
    small = {"tcn": {"depth": 1, "width": 2}, "lstm": {"hidden_size": 3}}.get(kind, {"num_memory": 2})
    model = build_model(kind, small)
    entry = MODELS[kind]
    assert isinstance(model, entry.model_type()) and isinstance(model.config, entry.config_type())
    assert model_kind_of(model) == kind
    # the stored dict builds the same config back
    assert build_model(kind, model_config_of(model)).config == model.config
    assert config_as_dict(model.config) == model_config_of(model)


def test_kinds_and_tables_are_written_once():
    assert MODEL_KINDS == ("elm", "branch-elm", "tcn", "lstm")
    assert MODEL_TABLES == ("elm", "branch_elm", "tcn", "lstm")
    assert set(MODEL_TABLES) <= set(CONFIG_TABLES)
    # the command line offers exactly the registry's kinds
    from pipelines import fit

    parser = argparse.ArgumentParser()
    fit.add_arguments(parser)
    choices = next(a.choices for a in parser._actions if a.dest == "model")
    assert tuple(choices) == MODEL_KINDS


def test_the_branch_elm_is_the_elm_with_branches():
    assert build_model("branch-elm", {}).config.num_branch == 45
    assert build_model("elm", {}).config.num_branch == 0
    with pytest.raises(ConfigError, match="branch_elm.*num_branch"):
        build_model("branch-elm", {"num_branch": 0})
    with pytest.raises(ConfigError, match=r"\[elm\]\.num_branch"):
        build_model("elm", {"num_branch": 45})
    with pytest.raises(ConfigError, match="unknown model 'gru'.*elm, branch-elm, tcn, lstm"):
        build_model("gru", {})
