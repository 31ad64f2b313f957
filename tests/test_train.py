"""The training loop: a short fit learns, writes its run directory, and resumes after a stop or a kill.

Runs on tiny synthetic shards (tests/test_data.py): 1500-ms simulations, 200-ms windows.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from simulation.errors import DatasetError, UserInputError
from surrogate.checkpoints import load_checkpoint, load_model
from surrogate.config import DataConfig, TrainConfig, load_training_config
from surrogate.elm import ELMConfig
from surrogate.inference import outputs_to_predictions
from surrogate.targets import SomaTransform
from simulation.errors import ConfigError
from surrogate.data import load_split_arrays
from surrogate.tcn import TCN, TCNConfig
from surrogate.train import (RunMismatchError, TrainingDivergedError, WeightAverage, cosine_learning_rate, fit,
                             make_optimizer, step_learning_rate, validate)
from test_common import damage_hdf5_groups
from test_data import write_synthetic_dataset

ROOT = Path(__file__).resolve().parents[1]
DATA = DataConfig(window_ms=200, burn_in_ms=50, ignore_first_ms=300, simulations_per_load=4)
TRAIN = TrainConfig(batch_size=4, epochs=3, batches_per_epoch=8, learning_rate=5e-3, valid_simulations=2,
                    num_threads=1, seed=0)
ELM = ELMConfig(num_memory=4)

CONFIG_TOML = """
[data]
window_ms = 200
burn_in_ms = 50
ignore_first_ms = 300
simulations_per_load = 4

[train]
batch_size = 4
epochs = {epochs}
batches_per_epoch = 8
learning_rate = 0.005
valid_simulations = 2
num_threads = 1

[elm]
num_memory = 4
"""


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("train_shards")
    write_synthetic_dataset(directory, n_shards=4, simulations_per_shard=2, duration_ms=1500, seed=1)
    return directory


def _cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipelines", "fit", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


def _history(run: Path) -> list[dict]:
    return json.loads((run / "metrics.json").read_text())


def test_cosine_schedule_decays_from_lr_to_lr_min():
    assert cosine_learning_rate(0, 100, 1e-3, 1e-5) == pytest.approx(1e-3)
    assert cosine_learning_rate(50, 100, 1e-3, 1e-5) == pytest.approx(0.5 * (1e-3 + 1e-5))
    assert cosine_learning_rate(100, 100, 1e-3, 1e-5) == pytest.approx(1e-5)


def test_step_schedule_and_loss_weight_steps_hold_from_their_first_epoch():
    train = TrainConfig(lr_schedule="step", lr_steps=((1, 1e-4), (3, 3e-5), (5, 1e-6)),
                        loss_weight_steps=((1, 1.0, 2.0), (2, 9.0, 0.3)))
    assert [step_learning_rate(e, train) for e in (1, 2, 3, 4, 5, 9)] == [1e-4, 1e-4, 3e-5, 3e-5, 1e-6, 1e-6]
    assert [train.loss_weights(e) for e in (1, 2, 7)] == [(1.0, 2.0), (9.0, 0.3), (9.0, 0.3)]
    assert TrainConfig().loss_weights(4) == (0.5, 0.5)  # no steps: the fixed weights


@pytest.mark.parametrize("name, kind", [("adam", torch.optim.Adam), ("nadam", torch.optim.NAdam),
                                        ("adamw", torch.optim.AdamW)])
def test_optimizer_choice(name, kind):
    optimizer = make_optimizer([torch.nn.Parameter(torch.zeros(2))], TrainConfig(optimizer=name, weight_decay=0.1))
    assert type(optimizer) is kind and optimizer.param_groups[0]["weight_decay"] == 0.1


@pytest.mark.parametrize("table, message", [
    ('optimizer = "nadma"', "optimizer must be one of 'adam', 'nadam', 'adamw', got 'nadma'"),
    ('lr_schedule = "steps"', "lr_schedule must be one of 'cosine', 'step'"),
    ('lr_schedule = "step"', "lr_schedule = 'step' needs lr_steps"),
    ('lr_steps = [[1, 1e-4]]', "lr_steps is read only with lr_schedule = 'step'"),
    ('lr_schedule = "step"\nlr_steps = [[2, 1e-4]]', "lr_steps must start at epoch 1"),
    ('lr_schedule = "step"\nlr_steps = [[1, 1e-4], [1, 1e-5]]', "the first epochs must increase"),
    ('lr_schedule = "step"\nlr_steps = [[1, 0.0]]', "every learning rate must be positive"),
    ('lr_schedule = "step"\nlr_steps = [[1, "fast"]]', "lr_steps\\[0\\]\\[1\\]: expected a number"),
    ('loss_weight_steps = [[1, 1.0]]', "loss_weight_steps\\[0\\]: expected a list of 3 values"),
    ('loss_weight_steps = [[1, 0.0, 0.0]]', "not both 0"),
    ('ema_decay = 1.0', "ema_decay must be in \\[0, 1\\) \\(0: off\\), got 1.0"),
])
def test_recipe_typos_are_one_line_config_errors(tmp_path, table, message):
    config = tmp_path / "c.toml"
    config.write_text(f"[train.tcn]\n{table}\n")
    with pytest.raises(ConfigError, match=message) as err:
        load_training_config(config, "elm")
    assert "\n" not in str(err.value) and "[train.tcn]" in str(err.value)


def test_the_published_tcn_recipe_trains_on_its_schedule(dataset_dir, tmp_path):
    """Nadam, a step schedule and per-epoch loss weights: each epoch runs at its rate, validates with its weights."""
    train = TrainConfig(**{**TRAIN.__dict__, "epochs": 3, "batches_per_epoch": 2, "optimizer": "nadam",
                           "lr_schedule": "step", "lr_steps": ((1, 1e-3), (2, 1e-4), (3, 1e-5)),
                           "loss_weight_steps": ((1, 1.0, 2.0), (3, 9.0, 0.3))})
    tcn = {"depth": 2, "width": 4, "first_kernel_size": 9, "kernel_size": 5, "spike_bias_init": -2.0}
    lrs = []
    summary = fit("tcn", train, tcn, dataset_dir, tmp_path / "run", data_config=DATA,
                  progress=lambda e, i: lrs.append((i["epoch"], i["lr"])) if e == "steps" else None)
    assert sorted(set(lrs)) == [(1, 1e-3), (2, 1e-4), (3, 1e-5)]
    history = _history(tmp_path / "run")
    for row, (spike_weight, voltage_weight) in zip(history, [(1.0, 2.0), (1.0, 2.0), (9.0, 0.3)]):
        assert row["valid_loss"] == pytest.approx(spike_weight * row["valid_spike_loss"]
                                                  + voltage_weight * row["valid_soma_loss"])
    last = load_checkpoint(tmp_path / "run" / "checkpoint_last.pt")
    assert last["scheduler_state"] == {"kind": "step_per_epoch", "lr_steps": [[1, 1e-3], [2, 1e-4], [3, 1e-5]]}
    assert "momentum_decay" in last["optimizer_state"]["param_groups"][0]  # NAdam's
    assert summary["train_config"]["optimizer"] == "nadam"
    assert summary["time_to_best_valid_s"] == history[summary["best_epoch"] - 1]["elapsed_s"] > 0
    # resuming with the same recipe continues; another optimizer is refused
    more = TrainConfig(**{**train.__dict__, "epochs": 4})
    assert fit("tcn", more, tcn, dataset_dir, tmp_path / "run", data_config=DATA)["epochs_completed"] == 4
    with pytest.raises(RunMismatchError, match="optimizer"):
        fit("tcn", TrainConfig(**{**more.__dict__, "epochs": 5, "optimizer": "adam"}), tcn, dataset_dir,
            tmp_path / "run", data_config=DATA)


def test_fit_learns_and_writes_the_run(dataset_dir, tmp_path):
    run = tmp_path / "elm"
    events = []
    summary = fit("elm", TRAIN, ELM, dataset_dir, run, data_config=DATA, progress=lambda e, i: events.append(e))

    for name in ("checkpoint_last.pt", "checkpoint_best.pt", "metrics.csv", "metrics.json", "summary.json"):
        assert (run / name).is_file(), name
    history = _history(run)
    assert [row["epoch"] for row in history] == [1, 2, 3]
    assert [row["step"] for row in history] == [8, 16, 24]
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert history[-1]["valid_loss"] < history[0]["valid_loss"]
    csv_lines = (run / "metrics.csv").read_text().splitlines()
    assert csv_lines[0].startswith("epoch,step,train_loss") and len(csv_lines) == 4
    for key in ("valid_auc", "valid_soma_rmse_mV", "lr", "elapsed_s", "windows_per_s", "train_spike_loss"):
        assert key in history[0]

    on_disk = json.loads((run / "summary.json").read_text())
    assert on_disk["model_kind"] == "elm" and on_disk["model_config"]["num_memory"] == 4
    assert on_disk["num_parameters"] == summary["num_parameters"] > 0
    assert on_disk["shards"] == {"train": ["shard_00000.h5", "shard_00001.h5"], "valid": ["shard_00002.h5"],
                                 "test": ["shard_00003.h5"]}
    assert on_disk["training_simulations"] == 4 and on_disk["training_simulated_ms"] == 4 * 1500
    assert on_disk["valid_simulations"] == 2  # the validation shard's 2, as validated every epoch
    assert on_disk["device"] == "cpu" and on_disk["finished"] is True
    best = max(history, key=lambda row: row["valid_auc"])
    assert on_disk["best_epoch"] == best["epoch"] and on_disk["best_valid_auc"] == pytest.approx(best["valid_auc"])
    assert events[0] == "start" and events[-1] == "finished" and events.count("epoch") == 3

    # the checkpoints hold what resuming and inference need
    last = load_checkpoint(run / "checkpoint_last.pt")
    assert (last["epoch"], last["global_step"]) == (3, 24)
    assert last["optimizer_state"]["state"]  # Adam moments
    assert load_checkpoint(run / "checkpoint_best.pt")["epoch"] == on_disk["best_epoch"]
    model, info = load_model(run)
    assert info["model_kind"] == "elm" and model(torch.zeros(1, 10, 1278)).shape == (1, 10, 2)
    assert torch.get_num_threads() >= 1  # restored after num_threads = 1


def test_rerun_continues_from_the_last_epoch(dataset_dir, tmp_path):
    run = tmp_path / "elm"
    fit("elm", TrainConfig(**{**TRAIN.__dict__, "epochs": 2}), ELM, dataset_dir, run, data_config=DATA)
    first_two = _history(run)
    starts = []
    summary = fit("elm", TrainConfig(**{**TRAIN.__dict__, "epochs": 4}), ELM, dataset_dir, run, data_config=DATA,
                  progress=lambda e, i: starts.append(i) if e == "start" else None)
    history = _history(run)
    assert [row["epoch"] for row in history] == [1, 2, 3, 4]
    assert history[:2] == first_two  # not retrained from scratch
    assert starts[0]["first_epoch"] == 3 and starts[0]["resumed"] is True
    assert summary["resumed_at_epochs"] == [2] and summary["global_step"] == 4 * 8

    # a finished run returns at once
    again = fit("elm", TrainConfig(**{**TRAIN.__dict__, "epochs": 4}), ELM, dataset_dir, run, data_config=DATA)
    assert again["already_finished"] is True and _history(run) == history

    # another model config in the same directory is refused, not mixed in
    with pytest.raises(RunMismatchError, match="num_memory"):
        fit("elm", TrainConfig(**{**TRAIN.__dict__, "epochs": 5}), ELMConfig(num_memory=5), dataset_dir, run,
            data_config=DATA)
    with pytest.raises(RunMismatchError, match="batch_size"):
        fit("elm", TrainConfig(**{**TRAIN.__dict__, "epochs": 5, "batch_size": 2}), ELM, dataset_dir, run,
            data_config=DATA)


def test_killed_run_resumes_from_the_last_finished_epoch(dataset_dir, tmp_path):
    """SIGKILL during training; the same command finishes the run, as if never interrupted."""
    epochs = 8
    config = tmp_path / "fit.toml"
    config.write_text(CONFIG_TOML.format(epochs=epochs))
    run = tmp_path / "killed"
    args = ["--model", "elm", "--config", str(config), "--data", str(dataset_dir), "--out", str(run)]
    process = subprocess.Popen([sys.executable, "-m", "pipelines", "fit", *args], cwd=ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 240
        while not (run / "summary.json").exists() and process.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait()
    assert process.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    killed_at = load_checkpoint(run / "checkpoint_last.pt")["epoch"]
    assert 1 <= killed_at < epochs
    # a run stopped between epochs says how far it got
    stopped = json.loads((run / "summary.json").read_text())
    assert not stopped["finished"] and 1 <= stopped["epochs_completed"] <= killed_at

    result = _cli(*args)
    assert result.returncode == 0, result.stderr
    history = _history(run)
    assert [row["epoch"] for row in history] == list(range(1, epochs + 1))
    summary = json.loads((run / "summary.json").read_text())
    assert summary["resumed_at_epochs"] == [killed_at] and summary["finished"]

    # the resumed run ends exactly where an uninterrupted one does (data depend only on seed and epoch)
    reference = tmp_path / "uninterrupted"
    cfg = load_training_config(config, "elm")
    fit("elm", cfg.train, cfg.model, dataset_dir, reference, data_config=cfg.data)
    resumed_state = load_checkpoint(run / "checkpoint_last.pt")["model_state"]
    reference_state = load_checkpoint(reference / "checkpoint_last.pt")["model_state"]
    for name, tensor in reference_state.items():
        assert torch.equal(resumed_state[name], tensor), name

    # running the finished command again says so and exits 0
    again = _cli(*args)
    assert again.returncode == 0 and "already finished" in again.stdout


def test_fit_with_windows_on_device_learns_and_resumes_exactly(dataset_dir, tmp_path):
    """[data] windows_on_device: the whole training set on the device; a run resumed after epoch 2 ends as an
    uninterrupted one (the windows depend only on seed and epoch)."""
    data = DataConfig(**{**DATA.__dict__, "windows_on_device": True})
    train = TrainConfig(**{**TRAIN.__dict__, "lr_schedule": "step", "lr_steps": ((1, 5e-3),)})  # not tied to epochs
    whole = fit("elm", train, ELM, dataset_dir, tmp_path / "whole", data_config=data)
    history = _history(tmp_path / "whole")
    assert whole["finished"] and history[-1]["train_loss"] < history[0]["train_loss"]
    fit("elm", TrainConfig(**{**train.__dict__, "epochs": 2}), ELM, dataset_dir, tmp_path / "resumed", data_config=data)
    fit("elm", train, ELM, dataset_dir, tmp_path / "resumed", data_config=data)
    a = load_checkpoint(tmp_path / "whole" / "checkpoint_last.pt")["model_state"]
    b = load_checkpoint(tmp_path / "resumed" / "checkpoint_last.pt")["model_state"]
    assert all(torch.equal(a[name], b[name]) for name in a)
    # a run cannot switch between the loaders halfway: the windows would differ
    with pytest.raises(RunMismatchError, match="windows_on_device"):
        fit("elm", TrainConfig(**{**train.__dict__, "epochs": 4}), ELM, dataset_dir, tmp_path / "whole",
            data_config=DATA)


@pytest.mark.parametrize("kind, config", [
    ("branch-elm", {"num_memory": 4, "num_branch": 45, "num_synapse_per_branch": 100}),
    ("tcn", {"depth": 2, "width": 4, "first_kernel_size": 9, "kernel_size": 5}),
    ("lstm", {"hidden_size": 6, "spike_bias_init": -5.0}),
])
def test_other_models_fit(dataset_dir, tmp_path, kind, config):
    train = TrainConfig(**{**TRAIN.__dict__, "epochs": 1, "batches_per_epoch": 3})
    summary = fit(kind, train, config, dataset_dir, tmp_path / kind, data_config=DATA)
    assert summary["model_kind"] == kind and summary["epochs_completed"] == 1
    assert load_checkpoint(tmp_path / kind / "checkpoint_best.pt")["model_kind"] == kind


def test_cli_reports_bad_input_in_one_line(dataset_dir, tmp_path):
    config = tmp_path / "fit.toml"
    config.write_text(CONFIG_TOML.format(epochs=1))
    missing = _cli("--model", "elm", "--config", str(config), "--data", str(tmp_path / "nowhere"),
                   "--out", str(tmp_path / "run"))
    assert missing.returncode == 2 and "data directory not found" in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1
    config.write_text(CONFIG_TOML.format(epochs=1) + "\n[tcn]\nwidht = 3\n")
    typo = _cli("--model", "elm", "--config", str(config), "--data", str(dataset_dir), "--out", str(tmp_path / "run"))
    assert typo.returncode == 2 and "widht" in typo.stderr
    with pytest.raises(DatasetError, match="data directory not found"):
        fit("elm", TRAIN, ELM, tmp_path / "nowhere", tmp_path / "run2", data_config=DATA)


def _copy_dataset(source: Path, target: Path) -> Path:
    target.mkdir(parents=True)
    for shard in sorted(source.glob("shard_*.h5")):
        shutil.copy(shard, target / shard.name)
    return target


def test_a_stray_file_among_the_shards_is_refused_not_split(dataset_dir, tmp_path):
    """`echo junk > D/shard_00009.h5` would silently become the test split: fit refuses it, naming it."""
    data = _copy_dataset(dataset_dir, tmp_path / "data")
    (data / "shard_00009.h5").write_text("junk\n")
    with pytest.raises(DatasetError, match="shard_00009.h5"):
        fit("elm", TRAIN, ELM, data, tmp_path / "run", data_config=DATA)
    config = tmp_path / "fit.toml"
    config.write_text(CONFIG_TOML.format(epochs=1))
    result = _cli("--model", "elm", "--config", str(config), "--data", str(data), "--out", str(tmp_path / "run"))
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "shard_00009.h5" in result.stderr and "not a readable HDF5 file" in result.stderr
    assert not (tmp_path / "run").exists()


def test_a_shard_with_damaged_metadata_is_refused_in_one_line(dataset_dir, tmp_path):
    """Bytes overwritten in place (the file opens): h5py's RuntimeError used to end fit with a traceback."""
    data = _copy_dataset(dataset_dir, tmp_path / "data")
    damage_hdf5_groups(data / "shard_00001.h5")
    config = tmp_path / "fit.toml"
    config.write_text(CONFIG_TOML.format(epochs=1))
    result = _cli("--model", "elm", "--config", str(config), "--data", str(data), "--out", str(tmp_path / "run"))
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert result.stderr.startswith(f"error: {data / 'shard_00001.h5'}: cannot read shard (corrupt?)")
    assert not (tmp_path / "run").exists()


def test_nan_in_training_data_is_refused_up_front(dataset_dir, tmp_path):
    """Not a diverged loss and a hint to lower the learning rate: the shard and simulation are named first."""
    data = _copy_dataset(dataset_dir, tmp_path / "data")
    with h5py.File(data / "shard_00001.h5", "r+") as f:  # a training shard
        f["soma_voltage"][1, 800] = np.nan
    config = tmp_path / "fit.toml"
    config.write_text(CONFIG_TOML.format(epochs=1))
    result = _cli("--model", "elm", "--config", str(config), "--data", str(data), "--out", str(tmp_path / "run"))
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "shard_00001.h5" in result.stderr and "finite" in result.stderr.lower()
    assert "learning_rate" not in result.stderr
    assert not (tmp_path / "run").exists()


def test_a_diverging_run_is_a_one_line_error(dataset_dir, tmp_path):
    train = TrainConfig(**{**TRAIN.__dict__, "epochs": 1, "batches_per_epoch": 4, "learning_rate": 1e35,
                           "grad_clip_norm": 0.0})
    with pytest.raises(TrainingDivergedError, match="learning_rate") as err:
        fit("tcn", train, {"depth": 1, "width": 2, "first_kernel_size": 3, "kernel_size": 3, "batch_norm": False},
            dataset_dir, tmp_path / "run", data_config=DATA)
    assert "\n" not in str(err.value) and isinstance(err.value, UserInputError)


def test_the_data_soma_transform_is_stored_and_decodes(dataset_dir, tmp_path):
    """Another [data] voltage_bias_mV / voltage_scale: the checkpoint carries it and predictions decode with it."""
    data = DataConfig(**{**DATA.__dict__, "voltage_bias_mV": -72.0, "voltage_scale": 0.05})
    train = TrainConfig(**{**TRAIN.__dict__, "epochs": 1, "batches_per_epoch": 2})
    summary = fit("elm", train, ELM, dataset_dir, tmp_path / "run", data_config=data)
    stored = load_checkpoint(tmp_path / "run" / "checkpoint_last.pt")["soma_transform"]
    assert stored == {"voltage_cap_mV": -55.0, "voltage_bias_mV": -72.0, "voltage_scale": 0.05}
    assert summary["soma_transform"] == stored
    model, info = load_model(tmp_path / "run")
    assert info["soma_transform"] == SomaTransform.of(data)
    x = torch.zeros(1, 30, 1278)
    x[0, 5, :50] = 1.0
    with torch.no_grad():
        _, volt = outputs_to_predictions(model(x), info["soma_transform"])
        assert torch.allclose(volt, model(x)[..., 1] / 0.05 - 72.0)


def test_fit_with_non_ascii_paths(dataset_dir, tmp_path):
    root = tmp_path / "Données ü 数据"
    data = _copy_dataset(dataset_dir, root / "données")
    config = root / "konfig é.toml"
    config.write_text(CONFIG_TOML.format(epochs=1), encoding="utf-8")
    run = root / "läufe" / "elm"
    result = _cli("--model", "elm", "--config", str(config), "--data", str(data), "--out", str(run))
    assert result.returncode == 0, result.stderr
    assert json.loads((run / "summary.json").read_text(encoding="utf-8"))["data_dir"] == str(data)


def test_a_full_disk_stops_fit_in_one_line_and_the_run_resumes(dataset_dir, tmp_path, cli_on_a_full_disk):
    """Issue 9, item 4: a full disk at an epoch's checkpoint (about 150 kB here) is exit 2 and one line naming
    the file; the previous epoch's files stay whole, and the same command resumes once there is room."""
    config = tmp_path / "fit.toml"
    run = tmp_path / "run"
    args = ["--model", "elm", "--config", str(config), "--data", str(dataset_dir), "--out", str(run)]
    config.write_text(CONFIG_TOML.format(epochs=1))
    assert _cli(*args).returncode == 0
    before = {p.name: p.read_bytes() for p in run.iterdir()}

    config.write_text(CONFIG_TOML.format(epochs=2))  # one epoch more, on a disk that is full
    error = cli_on_a_full_disk("fit", *args, max_file_bytes=20_000)
    assert error.startswith(f"error: cannot write {run}{os.sep}checkpoint_"), error
    assert "File too large" in error and "intact" in error
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before  # epoch 1 whole, nothing half-written

    result = _cli(*args)
    assert result.returncode == 0, result.stderr
    assert [row["epoch"] for row in _history(run)] == [1, 2]
    assert json.loads((run / "summary.json").read_text())["resumed_at_epochs"] == [1]


def test_weight_averaging_saves_the_moving_average_and_resumes_exactly(dataset_dir, tmp_path):
    """[train] ema_decay: the checkpoints hold the moving average of the trained weights (validated and handed on),
    the trained weights travel beside it, and a run resumed after epoch 1 ends exactly as an uninterrupted one."""
    one_step = {**TRAIN.__dict__, "batches_per_epoch": 1, "lr_schedule": "step", "lr_steps": ((1, 5e-3),)}
    plain = [load_checkpoint(fit("elm", TrainConfig(**{**one_step, "epochs": e}), ELM, dataset_dir, tmp_path / f"plain{e}",
                                 data_config=DATA)["checkpoints"]["last"])["model_state"] for e in (1, 2)]
    averaged = TrainConfig(**{**one_step, "epochs": 2, "ema_decay": 0.5})
    summary = fit("elm", averaged, ELM, dataset_dir, tmp_path / "ema", data_config=DATA)
    checkpoint = load_checkpoint(summary["checkpoints"]["last"])
    assert checkpoint["extra"]["ema_updates"] == 2
    for name, w2 in plain[1].items():  # the trained weights are those of the plain run; the saved ones their average
        assert torch.equal(checkpoint["extra"]["training_model_state"][name], w2), name
        assert torch.allclose(checkpoint["model_state"][name], 0.5 * plain[0][name] + 0.5 * w2, atol=1e-7), name
    assert not all(torch.equal(checkpoint["model_state"][n], w) for n, w in plain[1].items())
    # later stages load the average, and validation scored it: the loaded model validates to the recorded AUC
    model, _ = load_model(tmp_path / "ema" / "checkpoint_last.pt")
    assert all(torch.equal(p, checkpoint["model_state"][n]) for n, p in model.state_dict().items())
    arrays = load_split_arrays([dataset_dir / name for name in summary["shards"]["valid"]], averaged.valid_simulations)
    rescored = validate(model, arrays, DATA, averaged, torch.device("cpu"), epoch=2)
    assert rescored["valid_auc"] == _history(tmp_path / "ema")[-1]["valid_auc"]

    fit("elm", TrainConfig(**{**averaged.__dict__, "epochs": 1}), ELM, dataset_dir, tmp_path / "resumed", data_config=DATA)
    resumed = fit("elm", averaged, ELM, dataset_dir, tmp_path / "resumed", data_config=DATA)
    assert resumed["resumed_at_epochs"] == [1]
    again = load_checkpoint(resumed["checkpoints"]["last"])
    for name, tensor in checkpoint["model_state"].items():
        assert torch.equal(again["model_state"][name], tensor), name
    for key in ("train_loss", "valid_loss", "valid_auc"):
        assert [r[key] for r in _history(tmp_path / "resumed")] == [r[key] for r in _history(tmp_path / "ema")], key

    # a run trained without averaging is not resumed with it
    with pytest.raises(RunMismatchError, match="ema_decay"):
        fit("elm", TrainConfig(**{**one_step, "epochs": 3, "ema_decay": 0.5}), ELM, dataset_dir, tmp_path / "plain2",
            data_config=DATA)


def test_weight_average_matches_torchs_moving_average_without_syncing():
    """WeightAverage (no host-device round trip per step) averages exactly as torch's AveragedModel with
    get_ema_multi_avg_fn: a TCN with batch norm, five training steps, parameters and running statistics."""
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
    torch.manual_seed(0)
    model = TCN(TCNConfig(num_input=12, depth=2, width=8, first_kernel_size=5, kernel_size=3, dropout=0.1))
    ours, theirs = WeightAverage(model, 0.9), AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.9), use_buffers=True)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(5):
        loss = model((torch.rand(3, 40, 12) < 0.2).float()).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        ours.update_parameters(model)
        theirs.update_parameters(model)
    assert ours.n_averaged.device.type == "cpu" and int(ours.n_averaged) == 5
    expected = theirs.module.state_dict()
    for name, tensor in ours.module.state_dict().items():
        assert torch.allclose(tensor, expected[name], rtol=1e-6, atol=1e-7), name
    assert not torch.equal(ours.module.state_dict()["layers.0.norm.running_mean"], model.state_dict()["layers.0.norm.running_mean"])


def test_a_run_started_from_trained_weights_fine_tunes_them_and_resumes(dataset_dir, tmp_path):
    """--init-from: the new run's model starts from the trained weights (not a random draw), records where they
    came from and how long they had trained, resumes like any run; a model of another config is a one-line error."""
    base = tmp_path / "base"
    base_summary = fit("elm", TRAIN, ELM, dataset_dir, base, data_config=DATA)
    trained = load_checkpoint(base / "checkpoint_best.pt")["model_state"]

    # at a learning rate of 1e-12 Adam moves no weight by more than a few 1e-12: the run ends where it started
    still = TrainConfig(**{**TRAIN.__dict__, "epochs": 1, "batches_per_epoch": 2, "learning_rate": 1e-12, "seed": 7})
    tuned = tmp_path / "tuned"
    summary = fit("elm", still, ELM, dataset_dir, tuned, data_config=DATA, init_from=base)
    state = load_checkpoint(tuned / "checkpoint_last.pt")["model_state"]
    for name, tensor in trained.items():
        assert torch.allclose(state[name], tensor, atol=1e-9), name
    fresh = tmp_path / "fresh"
    fit("elm", still, ELM, dataset_dir, fresh, data_config=DATA)
    fresh_state = load_checkpoint(fresh / "checkpoint_last.pt")["model_state"]
    assert not all(torch.allclose(fresh_state[n], t, atol=1e-6) for n, t in trained.items())
    started = summary["initialized_from"]
    assert started["source"] == str(base.resolve()) and not started["published"]
    assert started["epoch"] == base_summary["best_epoch"]
    best_row = next(r for r in _history(base) if r["epoch"] == base_summary["best_epoch"])
    assert started["training_time_s"] == pytest.approx(best_row["elapsed_s"], rel=0.2)
    assert started["windows_seen"] == base_summary["best_epoch"] * TRAIN.batches_per_epoch * TRAIN.batch_size
    # its first epoch validates near the trained model's AUC, far from a fresh model's
    assert _history(tuned)[0]["valid_auc"] == pytest.approx(base_summary["best_valid_auc"], abs=1e-3)

    # more epochs: the run resumes (from the same weights or with no --init-from), keeping its origin
    more = TrainConfig(**{**still.__dict__, "epochs": 2})
    again = fit("elm", more, ELM, dataset_dir, tuned, data_config=DATA, init_from=base)
    assert again["resumed_at_epochs"] == [1] and again["initialized_from"] == started
    # a run started from the fine-tuned one counts both trainings behind it
    chained = fit("elm", still, ELM, dataset_dir, tmp_path / "chained", data_config=DATA, init_from=tuned)
    behind = chained["initialized_from"]
    assert behind["windows_seen"] == again["best_epoch"] * 2 * TRAIN.batch_size + started["windows_seen"]
    assert behind["training_time_s"] > started["training_time_s"]
    with pytest.raises(RunMismatchError, match="started from .*base, not from .*fresh"):
        fit("elm", TrainConfig(**{**still.__dict__, "epochs": 3}), ELM, dataset_dir, tuned, data_config=DATA,
            init_from=fresh)

    with pytest.raises(RunMismatchError, match=r"differs in: num_memory\)") as err:
        fit("elm", still, ELMConfig(num_memory=5), dataset_dir, tmp_path / "other", data_config=DATA, init_from=base)
    assert "\n" not in str(err.value)
    with pytest.raises(RunMismatchError, match="holds a model of kind elm, not branch-elm"):
        fit("branch-elm", still, {"num_memory": 4}, dataset_dir, tmp_path / "kind", data_config=DATA, init_from=base)
    # the CLI: a missing checkpoint is exit 2 and one line, and no run directory is left behind
    config = tmp_path / "fit.toml"
    config.write_text(CONFIG_TOML.format(epochs=1))
    result = _cli("--model", "elm", "--config", str(config), "--data", str(dataset_dir), "--out",
                  str(tmp_path / "cli"), "--init-from", str(tmp_path / "missing"))
    assert result.returncode == 2 and result.stderr.strip().count("\n") == 0, result.stderr
    assert "checkpoint not found" in result.stderr and "missing" in result.stderr
    assert not (tmp_path / "cli" / "checkpoint_last.pt").exists()


def test_the_published_branch_elm_fine_tunes_from_its_folder(dataset_dir, tmp_path):
    """--init-from a published elmneuron folder (../shared/pretrained): its weights, recorded as published."""
    from test_checkpoints import PRETRAINED

    folder = PRETRAINED / "num_memory_20"
    if not folder.is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"published ELM checkpoints not found at {PRETRAINED}")
        pytest.skip(f"published ELM checkpoints not found at {PRETRAINED}")
    still = TrainConfig(**{**TRAIN.__dict__, "epochs": 1, "batches_per_epoch": 1, "learning_rate": 1e-12})
    summary = fit("branch-elm", still, {"num_memory": 20}, dataset_dir, tmp_path / "run", data_config=DATA,
                  init_from=folder)
    published, _ = load_model(folder)
    state = load_checkpoint(tmp_path / "run" / "checkpoint_last.pt")["model_state"]
    for name, tensor in published.state_dict().items():
        assert torch.allclose(state[name], tensor, atol=1e-9), name
    assert summary["initialized_from"] == {"source": str(folder.resolve()), "published": True, "epoch": None,
                                           "global_step": None, "training_time_s": None, "windows_seen": None}


def _surrogate_accuracy_bench():
    """bench/surrogate_accuracy.py as a module (bench/ is not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("surrogate_accuracy", ROOT / "bench" / "surrogate_accuracy.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_stopped_runs_summary_is_read_back_from_its_checkpoint(dataset_dir, tmp_path):
    """bench/surrogate_accuracy.py reports a run without summary.json from its checkpoint, with summary.json's numbers."""
    accuracy = _surrogate_accuracy_bench()

    config = tmp_path / "fit.toml"
    config.write_text(CONFIG_TOML.format(epochs=2))
    cfg = load_training_config(config, "elm")
    run = tmp_path / "run"
    fit("elm", cfg.train, cfg.model, dataset_dir, run, data_config=cfg.data)
    summary = json.loads((run / "summary.json").read_text())
    (run / "summary.json").unlink()
    read_back = accuracy.summary_of_stopped_run(run)
    for key in ("model_kind", "num_parameters", "training_time_s", "time_to_best_valid_s", "best_epoch",
                "best_valid_auc", "epochs_completed", "finished", "windows_seen", "device", "shards"):
        assert read_back[key] == summary[key], key
    assert read_back["epochs_planned"] == 2


def test_time_to_valid_auc_is_the_first_epoch_at_each_mark():
    """Time to accuracy (issue 8): the elapsed time of the first epoch at or above each mark, None if never."""
    accuracy = _surrogate_accuracy_bench()
    history = [{"epoch": 1, "valid_auc": 0.985, "elapsed_s": 10.0}, {"epoch": 2, "valid_auc": None, "elapsed_s": 20.0},
               {"epoch": 3, "valid_auc": 0.9915, "elapsed_s": 30.0}, {"epoch": 4, "valid_auc": 0.9901, "elapsed_s": 40.0},
               {"epoch": 5, "valid_auc": 0.9925, "elapsed_s": 50.0}]
    assert accuracy.time_to_valid_auc(history, (0.99, 0.992, 0.9946)) == {"0.99": 30.0, "0.992": 50.0, "0.9946": None}
