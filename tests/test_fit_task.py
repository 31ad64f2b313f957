"""Training on a long-horizon task (surrogate/sequence_train.py, `python -m pipelines fit-task`): selection, resume, errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from common.errors import ConfigError, UserInputError
from surrogate.sequence import LSTMBaselineConfig
from surrogate.tasks import TaskSpec
from surrogate.sequence_train import (TaskData, TaskRunConfig, collate_examples,
                                      epoch_batches, fit_sequence, load_sequence_checkpoint, load_sequence_model,
                                      load_task_config, MODEL_TABLES, TASK_CONFIG_TABLES)
from test_checkpoints import RunsACommand  # tests/ is on sys.path under pytest

ROOT = Path(__file__).resolve().parents[1]
SPEC = TaskSpec("sign-of-sum", "tokens", 4, 2, 24)
SMALL = """
[task]
name = "sign-of-sum"

[train]
batch_size = 8
epochs = 3
batches_per_epoch = 6
learning_rate = 0.01
device = "cpu"
recurrence = "reference"
num_threads = 1

[train.lstm]
learning_rate = 0.02

[model]
readout = "mean"
embedding_dim = 6

[elm]
num_memory = 6
memory_tau_max = 50.0

[branch_elm]
num_memory = 6
num_branch = 3
num_synapse_per_branch = 2

[lstm]
match = "elm"
"""


class SignOfSum(torch.utils.data.Dataset):
    """Tokens 1 (= -1) and 2 (= +1), padded with 0 after a random length; label: is their sum positive."""

    def __init__(self, n: int, seed: int, steps: int = 24):
        g = torch.Generator().manual_seed(seed)
        self.lengths = torch.randint(steps // 2, steps + 1, (n,), generator=g)
        self.inputs = torch.randint(1, 3, (n, steps), generator=g)
        for i, length in enumerate(self.lengths.tolist()):
            self.inputs[i, length:] = 0
            if (self.inputs[i, :length] == 2).sum() * 2 == length:  # no ties
                self.inputs[i, 0] = 3 - self.inputs[i, 0]
        values = (self.inputs == 2).long() - (self.inputs == 1).long()
        self.labels = (values.sum(1) > 0).long()

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return {"inputs": self.inputs[i], "length": int(self.lengths[i]), "label": int(self.labels[i])}


@pytest.fixture(scope="module")
def data():
    return TaskData(SPEC, {"train": SignOfSum(96, 0), "valid": SignOfSum(48, 1), "test": SignOfSum(48, 2)})


@pytest.fixture
def config_file(tmp_path):
    path = tmp_path / "task.toml"
    path.write_text(SMALL)
    return path


def run_config(config_file, kind="elm", **train) -> TaskRunConfig:
    config = load_task_config([config_file], SPEC, kind)
    if train:
        import dataclasses

        config = dataclasses.replace(config, train=dataclasses.replace(config.train, **train))
    return config


class Interrupt(Exception):
    pass


# --------------------------------------------------------------------------- the loop

def test_fit_selects_on_validation_accuracy_and_scores_the_test_split(data, config_file, tmp_path):
    events = []
    summary = fit_sequence(data, run_config(config_file, epochs=4), tmp_path / "run",
                           progress=lambda event, info: events.append(event))
    history = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert [row["epoch"] for row in history] == [1, 2, 3, 4]
    best = max(history, key=lambda row: (row["valid_accuracy"], -row["valid_loss"]))
    assert summary["best_epoch"] == best["epoch"]
    assert summary["best_valid_accuracy"] == best["valid_accuracy"]
    assert summary["test_accuracy"] > 0.8 and summary["test_examples"] == 48  # it learnt the task (chance 0.5)
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["test_accuracy"] == summary["test_accuracy"]
    assert events[0] == "start" and events[-2:] == ["test", "finished"]
    # the best checkpoint is the model the test score came from
    model, checkpoint = load_sequence_model(tmp_path / "run")
    assert checkpoint["state"]["epoch"] == summary["best_epoch"]
    again = fit_sequence(data, run_config(config_file, epochs=4), tmp_path / "run")
    assert again["already_finished"] and again["test_accuracy"] == summary["test_accuracy"]


@pytest.mark.parametrize("kind", ["elm", "lstm"])
def test_an_interrupted_run_resumes_to_the_same_result(data, config_file, tmp_path, kind):
    config = run_config(config_file, kind)
    straight = fit_sequence(data, config, tmp_path / "straight")

    def stop_in_epoch_2(event, info):
        if event == "steps" and info["epoch"] == 2 and info["step_in_epoch"] == 3:
            raise Interrupt  # a kill in the middle of epoch 2: epoch 1's checkpoint is the last
    with pytest.raises(Interrupt):
        fit_sequence(data, config, tmp_path / "resumed", progress=stop_in_epoch_2)
    assert load_sequence_checkpoint(tmp_path / "resumed" / "checkpoint_last.pt")["state"]["epoch"] == 1
    resumed = fit_sequence(data, config, tmp_path / "resumed")
    assert resumed["resumed_at_epochs"] == [1]
    for key in ("test_accuracy", "test_loss", "best_epoch", "best_valid_accuracy", "global_step"):
        assert resumed[key] == straight[key], key
    a = load_sequence_checkpoint(tmp_path / "straight" / "checkpoint_last.pt")["model_state"]
    b = load_sequence_checkpoint(tmp_path / "resumed" / "checkpoint_last.pt")["model_state"]
    for name in a:
        assert torch.equal(a[name], b[name]), name
    ha = json.loads((tmp_path / "straight" / "metrics.json").read_text())
    hb = json.loads((tmp_path / "resumed" / "metrics.json").read_text())
    assert [r["valid_loss"] for r in ha] == [r["valid_loss"] for r in hb]


def test_a_time_limited_run_is_scored_where_it_stopped_and_resumes_to_the_same_result(data, config_file, tmp_path):
    """[train] max_time_s: each call runs at least one epoch, stops before one it expects to end past the limit,
    tests the best epoch so far (finished: false) and resumes; the epochs are those of an uninterrupted run."""
    straight = fit_sequence(data, run_config(config_file), tmp_path / "straight")
    limited = run_config(config_file, max_time_s=1e-6)  # every call: one epoch, then stop
    calls = []
    for call in range(3):
        events = []
        calls.append(fit_sequence(data, limited, tmp_path / "limited", progress=lambda e, i: events.append(e)))
        assert calls[-1]["epochs_completed"] == call + 1
        assert events.count("epoch") == 1 and ("stopped" in events) == (call < 2)
        assert calls[-1]["finished"] == (call == 2) and calls[-1]["test_examples"] == 48
    assert calls[0]["best_epoch"] == 1 and 0 <= calls[0]["test_accuracy"] <= 1
    assert json.loads((tmp_path / "limited" / "summary.json").read_text())["finished"] is True
    assert calls[-1]["resumed_at_epochs"] == [1, 2]
    for key in ("test_accuracy", "best_epoch", "best_valid_accuracy", "global_step"):
        assert calls[-1][key] == straight[key], key
    with pytest.raises(ValueError, match="max_time_s must be >= 0"):
        run_config(config_file, max_time_s=-1.0)


def test_a_run_of_another_model_or_recipe_is_refused(data, config_file, tmp_path):
    fit_sequence(data, run_config(config_file, epochs=1), tmp_path / "run")
    with pytest.raises(UserInputError, match="another model config.*num_memory"):
        import dataclasses

        config = run_config(config_file, epochs=2)
        config = dataclasses.replace(config, core=dataclasses.replace(config.core, num_memory=7))
        fit_sequence(data, config, tmp_path / "run")
    with pytest.raises(UserInputError, match=r"another \[train\] settings.*learning_rate"):
        fit_sequence(data, run_config(config_file, epochs=2, learning_rate=0.5), tmp_path / "run")
    more = fit_sequence(data, run_config(config_file, epochs=2), tmp_path / "run")  # more epochs: allowed
    assert more["epochs_completed"] == 2 and more["resumed_at_epochs"] == [1]


def test_batches_depend_on_seed_and_epoch_only():
    a = epoch_batches(10, 4, 5, seed=3, epoch=2)
    assert a == epoch_batches(10, 4, 5, seed=3, epoch=2) and a != epoch_batches(10, 4, 5, seed=3, epoch=3)
    assert [len(b) for b in a] == [4] * 5 and sorted(sum(a, [])[:10]) == list(range(10))
    one_pass = epoch_batches(10, 4, 0, seed=3, epoch=1)
    assert [len(b) for b in one_pass] == [4, 4, 2] and sorted(sum(one_pass, [])) == list(range(10))
    batch = collate_examples([{"inputs": torch.tensor([1, 2, 3]), "length": 3, "label": 1},
                              {"inputs": torch.tensor([4]), "length": 1, "label": 0}])
    assert batch["inputs"].tolist() == [[1, 2, 3], [4, 0, 0]] and batch["length"].tolist() == [3, 1]


# --------------------------------------------------------------------------- config files

def test_task_config_layers_and_checks(config_file, tmp_path):
    lstm = load_task_config([config_file], SPEC, "lstm")
    assert lstm.train.learning_rate == 0.02 and lstm.core == LSTMBaselineConfig(match="elm")
    assert lstm.budget_core.num_memory == 6 and lstm.budget_core.num_input == 6  # the embedding width
    smoke = tmp_path / "smoke.toml"
    smoke.write_text("[train]\nepochs = 1\n[train.lstm]\nbatch_size = 2\n[elm]\nnum_memory = 3\n[tasks.listops]\nseed = 1\n")
    layered = load_task_config([config_file, smoke], SPEC, "lstm")
    assert (layered.train.epochs, layered.train.batch_size, layered.train.learning_rate) == (1, 2, 0.02)
    assert layered.budget_core.num_memory == 3 and layered.budget_core.memory_tau_max == 50.0
    branch = load_task_config([config_file], SPEC, "branch-elm")
    assert branch.core.num_branch == 3

    def refused(text, match, kind="elm"):
        bad = tmp_path / "bad.toml"
        bad.write_text(text)
        with pytest.raises(ConfigError, match=match):
            load_task_config([config_file, bad], SPEC, kind)
    refused("[train]\nbatchsize = 3\n", r"\[train\]: unknown key 'batchsize'")
    refused("[elm]\nnum_input = 3\n", "num_input: set by the task")
    refused("[elm]\nnum_memorys = 3\n", "unknown key 'num_memorys'")
    refused("[branch_elm]\nnum_branch = 0\n", "Branch-ELM needs num_branch > 0", "branch-elm")
    refused("[model]\nreadout = \"first\"\n", "readout must be one of")
    refused("[trian]\n", r"unknown table \[trian\]")
    refused("[task]\nname = \"listops\"\n", "config for task 'listops'")
    refused("[lstm]\nnum_layers = 0\n", "num_layers must be >= 1", "lstm")


# --------------------------------------------------------------------------- the command line

def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipelines", "fit-task", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)


def test_cli_errors_exit_2(tmp_path, capsys, monkeypatch):
    pytest.importorskip("surrogate.tasks")
    from pipelines.__main__ import main

    monkeypatch.chdir(ROOT)
    bad = tmp_path / "bad.toml"
    bad.write_text("[train]\nlearning_rat = 0.1\n")
    base = ["--data-dir", str(tmp_path / "data"), "--out", str(tmp_path / "run")]

    def user_error(match: str, *args: str) -> None:
        assert main(["fit-task", *args, *base]) == 2
        errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and match in errors[0], errors
    user_error("unknown key 'learning_rat'", "--task", "listops", "--config", "configs/tasks/listops.toml", "--config", str(bad))
    user_error("config for task 'listops'", "--task", "pathfinder32", "--config", "configs/tasks/listops.toml")
    user_error("config file not found", "--task", "listops", "--config", str(tmp_path / "missing.toml"))
    user_error("prepare-task", "--task", "listops", "--config", "configs/tasks/listops.toml")  # no data yet
    user_error("epochs must be >= 1", "--task", "listops", "--config", "configs/tasks/listops.toml", "--epochs", "0")
    assert not (tmp_path / "run").exists()  # nothing written


def test_every_shipped_task_config_loads_for_every_model():
    tasks = pytest.importorskip("surrogate.tasks")
    assert set(MODEL_TABLES.values()) <= set(TASK_CONFIG_TABLES)  # each model's table is a known one
    names = {"listops": "listops", "pathfinder32": "pathfinder32", "pathfinder128": "pathfinder128",
             "shd-adding": "shd_adding"}
    overlays = ([], ["configs/tasks/smoke.toml"], ["configs/tasks/mean_readout.toml"], ["configs/tasks/dm128.toml"],
                ["configs/tasks/higher_lr.toml"], ["configs/tasks/lstm_plain_init.toml"],
                ["configs/tasks/short_listops_cpu.toml"])
    for task, file in names.items():
        for kind in ("elm", "branch-elm", "lstm"):
            for overlay in overlays:
                layers = [ROOT / p for p in [f"configs/tasks/{file}.toml", *overlay]]
                config = load_task_config(layers, tasks.TASKS[task], kind)
                assert config.task == task
        assert tasks.settings_from_file(ROOT / "configs/tasks/device_data.toml", task) is not None  # device runs' sizes
        # prepare-task takes a fit-task config too: its run tables are known, not misspelt
        assert tasks.settings_from_file(ROOT / f"configs/tasks/{file}.toml", task) is not None
    short = tasks.settings_from_file(ROOT / "configs/tasks/short_listops_cpu.toml", "listops")
    assert (short.train_size, short.max_length) == (10000, 100)
    assert load_task_config([ROOT / "configs/tasks/listops.toml", ROOT / "configs/tasks/lstm_plain_init.toml"],
                            tasks.TASKS["listops"], "lstm").core.chrono_max_steps == 0
    assert load_task_config([ROOT / "configs/tasks/pathfinder32.toml", ROOT / "configs/tasks/mean_readout.toml"],
                            tasks.TASKS["pathfinder32"], "elm").model.readout == "mean"


def test_cli_trains_listops_end_to_end_and_resumes(tmp_path, cli_on_a_full_disk):
    tasks = pytest.importorskip("surrogate.tasks")
    tasks.prepare_task("listops", tmp_path / "data", {"train_size": 48, "valid_size": 16, "test_size": 16,
                                                       "min_length": 10, "max_length": 120, "max_depth": 4})
    args = ["--task", "listops", "--config", "configs/tasks/listops.toml", "--config", "configs/tasks/smoke.toml",
            "--data-dir", str(tmp_path / "data"), "--out", str(tmp_path / "run"), "--model", "lstm"]
    first = cli(*args)
    assert first.returncode == 0, first.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["task"] == "listops" and summary["model_kind"] == "lstm" and summary["test_examples"] == 16
    assert 0.0 <= summary["test_accuracy"] <= 1.0
    again = cli(*args)
    assert again.returncode == 0 and "already finished" in again.stdout
    # a full disk stops the run with one line, exit code 2, and leaves no partial checkpoint
    full = [*args[:-4], "--out", str(tmp_path / "full"), "--model", "elm"]
    error = cli_on_a_full_disk("fit-task", *full, max_file_bytes=4000)
    assert "cannot write" in error and "checkpoint" in error
    assert not list((tmp_path / "full").glob("checkpoint_*.pt"))


def test_per_step_readout_trains_on_every_valid_step(data, config_file, tmp_path):
    from surrogate.sequence_train import classification_loss

    logits = torch.randn(2, 5, 3)
    labels, lengths = torch.tensor([2, 0]), torch.tensor([5, 2])
    loss, predicted = classification_loss(logits, labels, lengths, "per-step")
    ce = torch.nn.functional.cross_entropy
    expected = (ce(logits[0], labels[0].repeat(5)) + ce(logits[1, :2], labels[1].repeat(2))) / 2
    torch.testing.assert_close(loss, expected)
    assert predicted.tolist() == [logits[0, 4].argmax().item(), logits[1, 1].argmax().item()]
    per_step = tmp_path / "per_step.toml"
    per_step.write_text("[model]\nreadout = \"per-step\"\n")
    config = load_task_config([config_file, per_step], SPEC, "elm")
    summary = fit_sequence(data, config, tmp_path / "run")
    assert summary["finished"] and 0.0 <= summary["test_accuracy"] <= 1.0


def test_fit_task_verb_lists_the_sequence_models_of_surrogate_sequence():
    from pipelines.fit_task import MODEL_NAMES
    from surrogate.sequence import SEQUENCE_MODELS

    assert tuple(MODEL_NAMES) == tuple(SEQUENCE_MODELS)


def test_a_refused_fit_task_checkpoint_is_one_line_naming_what_was_refused(tmp_path):
    import os

    from surrogate.checkpoints import CheckpointError

    marker = tmp_path / "payload_ran"
    malicious = tmp_path / "checkpoint_last.pt"
    torch.save({"format": "l5pc-sequence-checkpoint", "hook": RunsACommand(f"touch {marker}")}, malicious)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(malicious.read_bytes()[:200])
    for path, reason in ((malicious, f"{os.system.__module__}.system"), (truncated, "truncated or corrupt")):
        with pytest.raises(CheckpointError) as err:
            load_sequence_checkpoint(path)
        assert "\n" not in str(err.value) and path.name in str(err.value) and reason in str(err.value), str(err.value)
    assert not marker.exists()  # no payload ran


# --------------------------------------------------------------------------- image augmentation

def test_dihedral_views_are_the_eight_symmetries_of_the_square():
    import numpy as np

    from surrogate.tasks.datasets import DIHEDRAL_VIEWS, dihedral_views

    image = np.arange(16).reshape(4, 4)
    expected = {tuple(np.rot90(m, k).reshape(-1)) for m in (image, image.T) for k in range(4)}
    assert len(expected) == DIHEDRAL_VIEWS
    batch = torch.as_tensor(image.reshape(1, -1)).repeat(DIHEDRAL_VIEWS, 1)
    views = dihedral_views(batch, torch.arange(DIHEDRAL_VIEWS))
    assert {tuple(v) for v in views.tolist()} == expected  # all 8, each once
    assert torch.equal(views[0], batch[0])  # view 0 is the image itself
    assert views[4].view(4, 4).tolist() == image.T.tolist()  # bit 2 transposes
    assert views[1].view(4, 4).tolist() == image[:, ::-1].tolist()  # bit 0 flips the columns
    with pytest.raises(ValueError, match="not a flattened square image"):
        dihedral_views(torch.zeros(2, 15, dtype=torch.long), torch.zeros(2, dtype=torch.long))


BRIGHT = TaskSpec("bright", "pixels", 256, 2, 16)


class BrightImages(torch.utils.data.Dataset):
    """4 x 4 images; label: are more than half of the pixels bright (unchanged by turning the image)."""

    def __init__(self, n: int, seed: int):
        g = torch.Generator().manual_seed(seed)
        self.inputs = torch.where(torch.rand(n, 16, generator=g) < torch.rand(n, 1, generator=g), 255, 0)
        self.labels = ((self.inputs > 0).sum(1) > 8).long()

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return {"inputs": self.inputs[i], "length": 16, "label": int(self.labels[i])}


def test_an_augmented_run_turns_its_training_images_and_resumes_to_the_same_result(tmp_path):
    path = tmp_path / "bright.toml"
    path.write_text(SMALL.replace("sign-of-sum", "bright").replace('readout = "mean"', 'readout = "mean"\n'
                                                                   'encoding = "one-hot"\ngrey_levels = 2'))
    data = TaskData(BRIGHT, {"train": BrightImages(96, 0), "valid": BrightImages(48, 1), "test": BrightImages(48, 2)})
    plain = load_task_config([path], BRIGHT, "elm")
    assert plain.train.augment == "none"
    import dataclasses

    augmented = dataclasses.replace(plain, train=dataclasses.replace(plain.train, augment="dihedral"))
    original = data.splits["train"].inputs.clone()
    straight = fit_sequence(data, augmented, tmp_path / "straight")
    without = fit_sequence(data, plain, tmp_path / "plain")
    assert straight["train_config"]["augment"] == "dihedral" and without["train_config"]["augment"] == "none"
    assert straight["test_accuracy"] > 0.7  # it learns through the turned images
    a = load_sequence_checkpoint(tmp_path / "straight" / "checkpoint_last.pt")["model_state"]
    b = load_sequence_checkpoint(tmp_path / "plain" / "checkpoint_last.pt")["model_state"]
    assert any(not torch.equal(a[name], b[name]) for name in a)  # the turned images changed the training
    assert torch.equal(data.splits["train"].inputs, original)  # the dataset itself is left as it was

    def stop_in_epoch_2(event, info):
        if event == "steps" and info["epoch"] == 2 and info["step_in_epoch"] == 3:
            raise Interrupt
    with pytest.raises(Interrupt):
        fit_sequence(data, augmented, tmp_path / "resumed", progress=stop_in_epoch_2)
    resumed = fit_sequence(data, augmented, tmp_path / "resumed")
    assert resumed["resumed_at_epochs"] == [1]
    for key in ("test_accuracy", "test_loss", "best_epoch", "best_valid_accuracy", "global_step"):
        assert resumed[key] == straight[key], key
    # a run begun before [train] augment existed (its identity lacks the key) resumes as augment = "none"
    last = tmp_path / "plain" / "checkpoint_last.pt"
    checkpoint = load_sequence_checkpoint(last)
    del checkpoint["identity"]["train"]["augment"]
    torch.save(checkpoint, last)
    more = fit_sequence(data, dataclasses.replace(plain, train=dataclasses.replace(plain.train, epochs=4)),
                        tmp_path / "plain")
    assert more["epochs_completed"] == 4 and more["resumed_at_epochs"] == [3]
    with pytest.raises(UserInputError, match=r"another \[train\] settings.*augment"):
        fit_sequence(data, dataclasses.replace(augmented, train=dataclasses.replace(augmented.train, epochs=5)),
                     tmp_path / "plain")


def test_dihedral_augmentation_is_for_image_tasks_only(tmp_path):
    tasks = pytest.importorskip("surrogate.tasks")
    overlay = [ROOT / "configs/tasks/dihedral.toml"]
    for task, file in (("pathfinder32", "pathfinder32"), ("pathfinder128", "pathfinder128")):
        assert load_task_config([ROOT / f"configs/tasks/{file}.toml", *overlay], tasks.TASKS[task],
                                "elm").train.augment == "dihedral"
    for task, file in (("listops", "listops"), ("shd-adding", "shd_adding")):
        with pytest.raises(ConfigError, match="augment = 'dihedral' turns images"):
            load_task_config([ROOT / f"configs/tasks/{file}.toml", *overlay], tasks.TASKS[task], "elm")
    typo = tmp_path / "typo.toml"
    typo.write_text('[train]\naugment = "dihedal"\n')
    with pytest.raises(ConfigError, match="augment must be one of none, dihedral, got 'dihedal'"):
        load_task_config([ROOT / "configs/tasks/pathfinder32.toml", typo], tasks.TASKS["pathfinder32"], "elm")


# --------------------------------------------------------------------------- fine-tuning

def test_a_run_started_from_another_runs_weights_records_it_and_resumes(data, config_file, tmp_path):
    import dataclasses

    source = fit_sequence(data, run_config(config_file, epochs=2), tmp_path / "source")
    best = load_sequence_checkpoint(tmp_path / "source" / "checkpoint_best.pt")
    # another recipe (a lower rate, input dropout: no weights of its own) from the source's best weights
    config = run_config(config_file, epochs=2, learning_rate=0.001)
    config = dataclasses.replace(config, model=dataclasses.replace(config.model, input_dropout=0.2))
    tuned = fit_sequence(data, config, tmp_path / "tuned", init_from=tmp_path / "source")
    origin = tuned["initialized_from"]
    assert origin["source"] == str((tmp_path / "source").resolve()) and origin["epoch"] == source["best_epoch"]
    assert origin["task"] == "sign-of-sum" and origin["global_step"] == best["state"]["global_step"]
    assert tuned["global_step"] == 2 * 6 and tuned["resumed_at_epochs"] == []  # a fresh schedule
    # it started from those weights: at a rate of 0 it would end exactly there
    frozen = dataclasses.replace(config, train=dataclasses.replace(config.train, learning_rate=1e-12, lr_min=0.0))
    still = fit_sequence(data, frozen, tmp_path / "frozen", init_from=tmp_path / "source" / "checkpoint_best.pt")
    weights = load_sequence_checkpoint(tmp_path / "frozen" / "checkpoint_last.pt")["model_state"]
    for name, value in best["model_state"].items():
        assert torch.allclose(weights[name], value, atol=1e-8), name
    assert still["test_accuracy"] == source["test_accuracy"]
    # the same command resumes it (and a finished one says so); another start is refused
    again = fit_sequence(data, config, tmp_path / "tuned", init_from=tmp_path / "source")
    assert again["already_finished"] and again["initialized_from"] == origin
    with pytest.raises(UserInputError, match="started from .*source, not from .*frozen"):
        fit_sequence(data, config, tmp_path / "tuned", init_from=tmp_path / "frozen")
    with pytest.raises(UserInputError, match="started from random weights"):
        fit_sequence(data, run_config(config_file, epochs=2), tmp_path / "source", init_from=tmp_path / "tuned")
    # another model, or no checkpoint there: one line naming it
    other = run_config(config_file, epochs=1)
    other = dataclasses.replace(other, core=dataclasses.replace(other.core, num_memory=7))
    with pytest.raises(UserInputError, match=r"another model than this run's \(differs in: core.num_memory"):
        fit_sequence(data, other, tmp_path / "other", init_from=tmp_path / "source")
    with pytest.raises(UserInputError, match="checkpoint not found"):
        fit_sequence(data, config, tmp_path / "nothing", init_from=tmp_path / "missing")
    assert not (tmp_path / "other" / "checkpoint_last.pt").exists()
