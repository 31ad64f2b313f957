"""[train] epoch_checkpoints keeps every epoch's weights; bench/time_to_accuracy.py scores them on the test split.

Tiny synthetic shards (tests/test_data.py), an ELM of 4 memory units, 3 short epochs on the CPU.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from simulation.errors import UserInputError
from surrogate.checkpoints import epoch_checkpoint_path, load_checkpoint, load_model, run_dir_of
from surrogate.config import load_training_config
from surrogate.data import find_shards
from surrogate.evaluation import evaluate_model, load_evaluation_config
from surrogate.train import fit
from test_data import write_synthetic_dataset
from test_train import CONFIG_TOML

ROOT = Path(__file__).resolve().parents[1]


def _bench():
    spec = importlib.util.spec_from_file_location("time_to_accuracy", ROOT / "bench" / "time_to_accuracy.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """A 3-epoch ELM run with epoch checkpoints on 4 synthetic shards (train, train, valid, test)."""
    root = tmp_path_factory.mktemp("time_to_accuracy")
    data = root / "data"
    write_synthetic_dataset(data, n_shards=4, simulations_per_shard=2, duration_ms=1500, seed=1)
    config = root / "fit.toml"
    config.write_text(CONFIG_TOML.format(epochs=3).replace("num_threads = 1", "num_threads = 1\nepoch_checkpoints = true")
                      + "\n[evaluate]\nmax_spike_bins = 1000        # the synthetic cells fire far more than 24 times\n")
    cfg = load_training_config(config, "elm")
    assert cfg.train.epoch_checkpoints is True
    run = root / "run"
    fit("elm", cfg.train, cfg.model, data, run, data_config=cfg.data)
    return data, config, run


def test_every_epoch_keeps_its_weights_and_metrics_row(fitted):
    _, _, run = fitted
    history = json.loads((run / "metrics.json").read_text())
    last = load_checkpoint(run / "checkpoint_last.pt")
    for epoch in (1, 2, 3):
        path = epoch_checkpoint_path(run, epoch)
        assert path.name == f"epoch_{epoch:04d}.pt" and path.is_file()
        checkpoint = load_checkpoint(path)
        assert checkpoint["epoch"] == epoch and checkpoint["optimizer_state"] is None  # the model alone
        assert checkpoint["extra"]["history"] == [history[epoch - 1]]
        assert checkpoint["extra"]["batch_size"] == 4
        assert run_dir_of(path) == run
        model, info = load_model(path)
        assert info["model_kind"] == "elm" and model(torch.zeros(1, 10, 1278)).shape == (1, 10, 2)
    for name, tensor in last["model_state"].items():  # the last epoch's weights are the run's last
        assert torch.equal(load_checkpoint(epoch_checkpoint_path(run, 3))["model_state"][name], tensor), name
    first = load_checkpoint(epoch_checkpoint_path(run, 1))["model_state"]
    assert any(not torch.equal(first[name], tensor) for name, tensor in last["model_state"].items())  # trained on


def test_without_the_option_no_epoch_checkpoints_are_written(fitted, tmp_path):
    data, config, _ = fitted
    cfg = load_training_config(config, "elm")
    plain = tmp_path / "plain"
    fit("elm", cfg.train.__class__(**{**cfg.train.__dict__, "epoch_checkpoints": False, "epochs": 1}),
        cfg.model, data, plain, data_config=cfg.data)
    assert (plain / "checkpoint_last.pt").is_file() and not (plain / "epochs").exists()


def test_evaluate_names_an_epoch_checkpoint_after_its_run_and_epoch(fitted, tmp_path):
    data, config, run = fitted
    done = subprocess.run([sys.executable, "-m", "pipelines", "evaluate", "--config", str(config), "--data", str(data),
                           "--runs", str(tmp_path / "evals"), "--checkpoint", str(epoch_checkpoint_path(run, 2))],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    evaluation = json.loads((tmp_path / "evals" / "run-epoch_0002" / "evaluation.json").read_text())
    assert evaluation["name"] == "run-epoch_0002" and evaluation["test"]["shards"] == ["shard_00003.h5"]
    assert evaluation["training"]["best_epoch"] >= 1  # the run's summary.json, found two levels up


def test_an_epoch_checkpoint_is_refused_on_shards_its_run_trained_on(fitted, tmp_path):
    data, config, run = fitted
    data_config, evaluate_config = load_evaluation_config(config)
    train_shard = find_shards(data)[0]
    with pytest.raises(UserInputError, match="used to train or validate"):
        evaluate_model(epoch_checkpoint_path(run, 2), tmp_path / "eval", [train_shard], data_config, evaluate_config)


def test_time_to_accuracy_scores_every_epoch_on_the_test_split(fitted, tmp_path):
    data, config, run = fitted
    bench = _bench()
    out, figure = tmp_path / "tta.json", tmp_path / "tta.png"
    bench.main(["--run", str(run), "--data", str(data), "--config", str(config), "--label", "tiny",
                "--target-auc", "0.0", "--target-rmse", "1000", "--out", str(out), "--figure", str(figure)])
    result = json.loads(out.read_text())
    (row,) = result["rows"]
    assert row["label"] == "tiny" and row["model_kind"] == "elm" and row["test"]["shards"] == ["shard_00003.h5"]
    epochs = row["epochs"]
    assert [e["epoch"] for e in epochs] == [1, 2, 3]
    times = [e["training_time_s"] for e in epochs]
    assert times == sorted(times) and times[0] > 0
    assert [e["windows_seen"] for e in epochs] == [32, 64, 96]  # 8 batches of 4 an epoch
    for e in epochs:
        assert 0.0 <= e["test_auc"] <= 1.0 and e["test_rmse_aligned_mV"] > 0
    # targets every epoch meets: the first epoch's time; unreachable ones: None
    assert row["time_to_target_s"] == {"auc_0": times[0], "rmse_1000_mV": times[0], "both": times[0]}
    assert bench.time_to_targets(epochs, 1.01, 0.0) == {"auc_1.01": None, "rmse_0_mV": None, "both": None}
    assert figure.is_file() and figure.stat().st_size > 10_000

    # the epochs score as `evaluate` scores the same checkpoint
    data_config, evaluate_config = load_evaluation_config(config)
    evaluation = evaluate_model(epoch_checkpoint_path(run, 2), tmp_path / "eval", find_shards(data)[3:],
                                data_config, evaluate_config, modes=("windowed",))
    assert evaluation["windowed"]["spike"]["auc"] == pytest.approx(epochs[1]["test_auc"], abs=1e-9)

    # another label keeps the first row
    bench.main(["--run", str(run), "--data", str(data), "--config", str(config), "--label", "again", "--out", str(out)])
    assert [r["label"] for r in json.loads(out.read_text())["rows"]] == ["tiny", "again"]


def _run_bench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "bench" / "time_to_accuracy.py"), *args], capture_output=True,
                          text=True, timeout=120)


def test_bad_input_is_a_one_line_error(fitted, tmp_path):
    data, config, run = fitted
    (tmp_path / "run").mkdir()
    bare = _run_bench("--run", str(tmp_path / "run"), "--data", str(data))
    assert bare.returncode == 2 and bare.stderr.strip().splitlines() == [
        f"error: no epoch checkpoints in {tmp_path / 'run' / 'epochs'} (fit the run with [train] epoch_checkpoints = true)"]
    no_data = _run_bench("--run", str(run), "--data", str(tmp_path / "nowhere"), "--config", str(config))
    assert no_data.returncode == 2 and len(no_data.stderr.strip().splitlines()) == 1
    assert no_data.stderr.startswith("error: ") and "nowhere" in no_data.stderr
    no_run = _run_bench("--run", str(tmp_path / "missing"), "--data", str(data))
    assert no_run.returncode == 2 and no_run.stderr.strip() == f"error: run directory not found: {tmp_path / 'missing'}"
