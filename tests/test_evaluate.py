"""`evaluate`: test-split scoring of trained runs, the files it writes, and its one-line errors.

The dataset here is a few short synthetic shards written through simulation.dataset (no
NEURON needed: evaluation only reads shards); the models are small real ELM / TCN
checkpoints saved through surrogate.checkpoints.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from pipelines.__main__ import main as _cli_main
from simulation.dataset import shard_path, write_shard
from simulation.errors import DatasetError
from surrogate import metrics
from surrogate.checkpoints import save_checkpoint
from surrogate.config import DataConfig
from surrogate.evaluation import EvaluateConfig, choose_examples, thin_roc
from surrogate.inference import predict_whole, predict_windowed
from surrogate.registry import build_model, model_config_of
from surrogate.targets import PUBLISHED_SOMA_TRANSFORM, SomaTransform

REPO = Path(__file__).resolve().parents[1]
N_SEGMENTS = 639
DURATION_MS = 1200  # > ignore_first_ms (500) + one window (500)


def fake_segments() -> dict:
    return {
        "index": np.arange(N_SEGMENTS),
        "section": np.array([f"dend[{i // 3}]" for i in range(262)] + [f"apic[{i // 3}]" for i in range(377)]),
        "x": np.full(N_SEGMENTS, 0.5),
        "region": np.array(["basal"] * 262 + ["apical"] * 377),
        "distance_um": np.linspace(5, 1300, N_SEGMENTS),
        "length_um": np.full(N_SEGMENTS, 20.0),
    }


def write_fake_dataset(directory: Path, n_shards: int = 3, simulations_per_shard: int = 3,
                       duration_ms: int = DURATION_MS, seed: int = 0) -> list[Path]:
    """Shards of random inputs with a soma voltage that follows the net excitation and a few spikes."""
    rng = np.random.default_rng(seed)
    paths = []
    for s in range(n_shards):
        n = simulations_per_shard
        inputs = rng.random((n, 2 * N_SEGMENTS, duration_ms)) < 0.004
        drive = inputs[:, :N_SEGMENTS].sum(1) - inputs[:, N_SEGMENTS:].sum(1)
        kernel = np.exp(-np.arange(40) / 10.0)
        soma = np.stack([-75.0 + 0.8 * np.convolve(d, kernel)[:duration_ms] for d in drive]).astype(np.float32)
        spikes = np.zeros((n, duration_ms), bool)
        times = []
        for i in range(n):
            t_spike = np.sort(rng.choice(np.arange(100, duration_ms - 5), size=i + 1, replace=False)) + 0.625
            spikes[i, np.trunc(t_spike - 0.5).astype(int)] = True
            soma[i, np.trunc(t_spike - 0.5).astype(int)] = 20.0  # a spike peak, clipped to -55 by the target
            times.append(t_spike)
        paths.append(write_shard(
            shard_path(directory, s), input_spikes=inputs, soma_voltage=soma, output_spikes=spikes,
            output_spike_times=times, nexus_voltage=soma, simulation_index=np.arange(s * n, (s + 1) * n),
            segments=fake_segments(),
            attrs={"config": {"fake": True}, "master_seed": seed, "shard_index": s, "created_by": "simulate",
                   "neuron_version": "none", "mechanisms_sha256": "0", "morphology_sha256": "0"},
            compression_level=1))
    return paths


def cli(argv: list[str]) -> int:
    """`python -m pipelines ...` in this process (the real dispatcher: user errors -> exit code 2)."""
    return _cli_main(argv)


SMALL_MODELS = {
    "elm": {"num_memory": 4},
    "tcn": {"depth": 2, "width": 8, "first_kernel_size": 9, "kernel_size": 5},
}
# the soma transform each fake run was "trained" with: the TCN's is not the published one, so
# decoding it with the published transform would give other millivolts
SOMA_TRANSFORMS = {"elm": PUBLISHED_SOMA_TRANSFORM,
                   "tcn": SomaTransform(voltage_cap_mV=-50.0, voltage_bias_mV=-72.0, voltage_scale=0.05)}


def write_fake_run(run_dir: Path, kind: str, seed: int = 0) -> torch.nn.Module:
    """A run directory as `fit` leaves it: checkpoint_best.pt, summary.json, metrics.csv."""
    torch.manual_seed(seed)
    model = build_model(kind, SMALL_MODELS[kind]).eval()
    save_checkpoint(run_dir / "checkpoint_best.pt", model_kind=kind, model_config=model_config_of(model),
                    soma_transform=SOMA_TRANSFORMS[kind], model_state=model.state_dict(), epoch=2)
    (run_dir / "summary.json").write_text(json.dumps({
        "model_kind": kind, "num_parameters": sum(p.numel() for p in model.parameters()),
        "training_time_s": 12.5, "best_epoch": 2, "training_simulations": 3, "training_simulated_ms": 3600}))
    (run_dir / "metrics.csv").write_text(
        "epoch,step,train_loss,train_spike_loss,train_soma_loss,valid_loss,valid_auc,valid_soma_rmse_mV,lr\n"
        "1,10,0.9,0.5,0.4,0.8,0.7,3.1,0.0005\n2,20,0.6,0.3,0.3,0.55,0.8,2.4,0.0002\n")
    return model


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    """A fake dataset, two trained-looking runs, and `python -m pipelines evaluate` run over them."""
    root = tmp_path_factory.mktemp("evaluate")
    data, runs = root / "data", root / "runs"
    shards = write_fake_dataset(data)
    models = {kind: write_fake_run(runs / kind, kind, seed=i) for i, kind in enumerate(SMALL_MODELS)}
    config = root / "config.toml"
    config.write_text("[data]\nvalid_shards = 1\ntest_shards = 1\n\n[evaluate]\nbatch_size = 2\ndevice = \"cpu\"\n")
    code = cli(["evaluate", "--config", str(config), "--data", str(data), "--runs", str(runs)])
    assert code == 0
    return {"root": root, "data": data, "runs": runs, "shards": shards, "models": models, "config": config}


def read_test_shard(path: Path):
    with h5py.File(path, "r") as f:
        return f["input_spikes"][()], f["soma_voltage"][()], f["output_spikes"][()]


@pytest.mark.parametrize("kind", list(SMALL_MODELS))
def test_evaluation_json_matches_direct_computation(evaluated, kind):
    result = json.loads((evaluated["runs"] / kind / "evaluation.json").read_text())
    model = evaluated["models"][kind]
    inputs, soma, spikes = read_test_shard(evaluated["shards"][-1])  # the split's test shard is the last

    assert result["model_kind"] == kind
    assert result["num_parameters"] == sum(p.numel() for p in model.parameters())
    assert result["training_time_s"] == 12.5 and result["training"]["training_simulations"] == 3
    assert result["test"]["shards"] == [evaluated["shards"][-1].name]
    assert result["test"]["simulations"] == 3

    # the model's outputs decode with the soma transform stored in its checkpoint
    assert result["settings"]["model_soma_transform"] == SOMA_TRANSFORMS[kind].as_dict()
    # the same numbers from the library pieces, called directly
    for mode in ("windowed", "whole"):
        if mode == "windowed":
            prob, volt = predict_windowed(model, inputs, SOMA_TRANSFORMS[kind], window_ms=500, burn_in_ms=150)
        else:
            prob, volt = predict_whole(model, inputs, SOMA_TRANSFORMS[kind])
        expected = metrics.evaluate_predictions(soma, spikes, volt, prob)
        got = result[mode]
        assert got["simulations_kept"] == 3 and got["spike_bins_evaluated"] == expected["spike_bins_evaluated"]
        assert got["spike"]["auc"] == pytest.approx(expected["spike"]["auc"], abs=1e-6)
        assert got["spike"]["tp_at_fp"]["0.0100"] == pytest.approx(expected["spike"]["tp_at_fp"]["0.0100"], abs=1e-6)
        for label in ("raw", "aligned"):
            for key in ("rmse_mV", "mae_mV", "explained_variance_percent"):
                assert got["soma"][label][key] == pytest.approx(expected["soma"][label][key], rel=1e-4, abs=1e-3)
    # windowed and whole really are two different runs of the model
    assert result["windowed"]["soma"]["raw"]["rmse_mV"] != result["whole"]["soma"]["raw"]["rmse_mV"]


def test_predictions_file_holds_rocs_and_examples(evaluated):
    run = evaluated["runs"] / "elm"
    model = evaluated["models"]["elm"]
    inputs, soma, spikes = read_test_shard(evaluated["shards"][-1])
    with h5py.File(run / "predictions.h5", "r") as f:
        assert set(f["roc"]) == {"windowed", "whole"}
        fpr, tpr = f["roc/windowed/fpr"][()], f["roc/windowed/tpr"][()]
        assert fpr[0] == 0 and fpr[-1] == 1 and np.all(np.diff(fpr) >= 0)
        index = f["examples/simulation_index"][()]
        assert list(f["examples/shard"].asstr()[()]) == [evaluated["shards"][-1].name] * len(index)
        np.testing.assert_array_equal(f["examples/soma_voltage_mV"][()], soma[index])
        stored = f["examples/windowed/soma_voltage_mV"][()]
    _, volt = predict_windowed(model, inputs[index], PUBLISHED_SOMA_TRANSFORM)
    np.testing.assert_allclose(stored, volt, atol=1e-4)
    with h5py.File(run / "predictions.h5", "r") as f:  # every test simulation, for comparisons on the same bins
        np.testing.assert_array_equal(f["all/output_spikes"][()], spikes)
        np.testing.assert_array_equal(f["all/soma_voltage_mV"][()], soma)
        assert list(f["all/simulation_index"][()]) == list(range(len(spikes)))
        np.testing.assert_allclose(f["all/windowed/soma_voltage_mV"][()][index], stored)
        assert f["all/whole/spike_probability"].shape == spikes.shape
    # the AUC of the stored ROC is the reported AUC (few points: nothing was thinned)
    auc = json.loads((run / "evaluation.json").read_text())["windowed"]["spike"]["auc"]
    assert metrics.trapezoid_auc(fpr, tpr) == pytest.approx(auc)


def test_checkpoint_option_writes_under_its_folder_name(evaluated, tmp_path):
    runs = tmp_path / "runs"
    code = cli(["evaluate", "--config", str(evaluated["config"]), "--data", str(evaluated["data"]),
                "--runs", str(runs), "--checkpoint", str(evaluated["runs"] / "tcn" / "checkpoint_best.pt")])
    assert code == 0
    result = json.loads((runs / "tcn" / "evaluation.json").read_text())
    original = json.loads((evaluated["runs"] / "tcn" / "evaluation.json").read_text())
    assert result["windowed"]["spike"]["auc"] == original["windowed"]["spike"]["auc"]


def test_all_shards_scores_a_separate_test_dataset(evaluated, tmp_path):
    """--all-shards: every shard of --data is test data (a CVode test set beside the training data)."""
    test_set = tmp_path / "cvode_test"
    test_set.mkdir()
    shutil.copy(evaluated["shards"][-1], test_set / "shard_00000.h5")  # one shard: no split could hold it
    shutil.copy(evaluated["shards"][-2], test_set / "shard_00001.h5")
    runs = tmp_path / "eval_cvode"
    config = tmp_path / "one_thread.toml"
    config.write_text(evaluated["config"].read_text().replace("[evaluate]\n", "[evaluate]\nnum_threads = 1\n"))
    threads = torch.get_num_threads()
    code = cli(["evaluate", "--config", str(config), "--data", str(test_set), "--runs", str(runs),
                "--all-shards", "--checkpoint", str(evaluated["runs"] / "elm")])
    assert code == 0 and torch.get_num_threads() == threads  # [evaluate] num_threads applied, then restored
    result = json.loads((runs / "elm" / "evaluation.json").read_text())
    assert result["test"]["shards"] == ["shard_00000.h5", "shard_00001.h5"]
    with h5py.File(evaluated["shards"][-1], "r") as f:
        per_shard = f["input_spikes"].shape[0]
    assert result["test"]["simulations"] == 2 * per_shard


def test_several_data_directories_pool_into_one_test_set(evaluated, tmp_path, capsys):
    """--data repeated with --all-shards: one test set of every shard of each, scored in one pass."""
    first, second = tmp_path / "seed_a", tmp_path / "seed_b"
    for folder, shard in ((first, evaluated["shards"][-1]), (second, evaluated["shards"][-2])):
        folder.mkdir()
        shutil.copy(shard, folder / "shard_00000.h5")  # the same name in both: pooled by path, not by name
    runs = tmp_path / "pooled"
    code = cli(["evaluate", "--config", str(evaluated["config"]), "--all-shards", "--data", str(first),
                "--data", str(second), "--runs", str(runs), "--checkpoint", str(evaluated["runs"] / "elm")])
    assert code == 0
    result = json.loads((runs / "elm" / "evaluation.json").read_text())
    assert result["test"]["shard_paths"] == [str(first / "shard_00000.h5"), str(second / "shard_00000.h5")]
    with h5py.File(evaluated["shards"][-1], "r") as f:
        per_shard = f["input_spikes"].shape[0]
    assert result["test"]["simulations"] == 2 * per_shard
    # bench/surrogate_accuracy.py records such a pooled set by its paths (its names repeat); one folder by names alone
    spec = importlib.util.spec_from_file_location("surrogate_accuracy", REPO / "bench" / "surrogate_accuracy.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.scores_of(result)["test_shard_paths"] == result["test"]["shard_paths"]
    single = json.loads((evaluated["runs"] / "elm" / "evaluation.json").read_text())
    assert "test_shard_paths" not in bench.scores_of(single)
    # and so does the report: two shards, by path, not one name
    assert cli(["report", "--runs", str(runs), "--out", str(tmp_path / "report")]) == 0
    assert f"2 shard(s) ({first / 'shard_00000.h5'}, {second / 'shard_00000.h5'})" in (tmp_path / "report" / "report.md").read_text()
    capsys.readouterr()

    # without --all-shards a split would mix datasets; the same file twice would count its simulations twice
    assert cli(["evaluate", "--config", str(evaluated["config"]), "--data", str(first), "--data", str(second),
                "--runs", str(runs), "--checkpoint", str(evaluated["runs"] / "elm")]) == 2
    assert "add --all-shards" in capsys.readouterr().err
    (tmp_path / "again").mkdir()
    (tmp_path / "again" / "shard_00000.h5").symlink_to(first / "shard_00000.h5")
    assert cli(["evaluate", "--config", str(evaluated["config"]), "--all-shards", "--data", str(first),
                "--data", str(tmp_path / "again"), "--runs", str(runs), "--checkpoint",
                str(evaluated["runs"] / "elm")]) == 2
    assert "same shard file" in capsys.readouterr().err


def test_a_linked_training_shard_in_a_pooled_test_set_is_refused(evaluated, tmp_path, capsys):
    runs = tmp_path / "runs"
    write_fake_run(runs / "elm", "elm")
    summary = json.loads((runs / "elm" / "summary.json").read_text())
    summary.update(data_dir=str(evaluated["data"]),
                   shards={"train": ["shard_00000.h5"], "valid": ["shard_00001.h5"], "test": ["shard_00002.h5"]})
    (runs / "elm" / "summary.json").write_text(json.dumps(summary))
    pooled = tmp_path / "pooled"
    pooled.mkdir()
    (pooled / "shard_00007.h5").symlink_to(evaluated["data"] / "shard_00000.h5")  # another name, the training file
    assert cli(["evaluate", "--config", str(evaluated["config"]), "--all-shards", "--data", str(pooled),
                "--runs", str(tmp_path / "eval"), "--checkpoint", str(runs / "elm")]) == 2
    assert "was used to train or validate this run" in capsys.readouterr().err


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipelines", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=300)


def test_missing_run_directory_is_a_one_line_error(evaluated):
    proc = run_cli("evaluate", "--config", str(evaluated["config"]), "--data", str(evaluated["data"]),
                   "--runs", str(evaluated["runs"]), "--models", "branch-elm")
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error: run directory not found")
    assert len(proc.stderr.strip().splitlines()) == 1


def test_missing_checkpoint_and_empty_split_are_user_errors(evaluated, tmp_path, capsys):
    runs = tmp_path / "runs"
    (runs / "elm").mkdir(parents=True)
    assert cli(["evaluate", "--config", str(evaluated["config"]), "--data", str(evaluated["data"]),
                "--runs", str(runs)]) == 2
    assert "no checkpoint in" in capsys.readouterr().err

    config = tmp_path / "no_test.toml"
    config.write_text("[data]\ntest_shards = 0\n")
    assert cli(["evaluate", "--config", str(config), "--data", str(evaluated["data"]),
                "--runs", str(evaluated["runs"])]) == 2
    err = capsys.readouterr().err
    assert "test split" in err and "empty" in err


def test_run_trained_on_a_test_shard_is_refused(evaluated, tmp_path, capsys):
    runs = tmp_path / "runs"
    write_fake_run(runs / "elm", "elm")
    summary = json.loads((runs / "elm" / "summary.json").read_text())
    summary.update(data_dir=str(evaluated["data"]),
                   shards={"train": ["shard_00000.h5", "shard_00002.h5"], "valid": ["shard_00001.h5"], "test": []})
    (runs / "elm" / "summary.json").write_text(json.dumps(summary))
    assert cli(["evaluate", "--config", str(evaluated["config"]), "--data", str(evaluated["data"]),
                "--runs", str(runs)]) == 2
    assert "test shard shard_00002.h5 was used to train" in capsys.readouterr().err
    assert not (runs / "elm" / "evaluation.json").exists()


def _copy_dataset(source: Path, target: Path) -> Path:
    target.mkdir(parents=True)
    for shard in sorted(source.glob("shard_*.h5")):
        shutil.copy(shard, target / shard.name)
    return target


def test_a_stray_file_among_the_shards_is_refused_not_split(evaluated, tmp_path, capsys):
    """`echo junk > D/shard_00009.h5` would become the test split; evaluate refuses it instead."""
    data = _copy_dataset(evaluated["data"], tmp_path / "data")
    (data / "shard_00009.h5").write_text("junk\n")
    runs = tmp_path / "runs"
    write_fake_run(runs / "elm", "elm")
    assert cli(["evaluate", "--config", str(evaluated["config"]), "--data", str(data), "--runs", str(runs)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "shard_00009.h5" in err and "not a readable HDF5 file" in err
    assert not (runs / "elm" / "evaluation.json").exists()


def test_nan_in_a_test_shard_is_refused_not_scored_as_null(evaluated, tmp_path, capsys):
    data = _copy_dataset(evaluated["data"], tmp_path / "data")
    with h5py.File(data / "shard_00002.h5", "r+") as f:  # the test shard
        f["soma_voltage"][1, 700] = np.nan
    runs = tmp_path / "runs"
    write_fake_run(runs / "elm", "elm")
    assert cli(["evaluate", "--config", str(evaluated["config"]), "--data", str(data), "--runs", str(runs)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "shard_00002.h5" in err and "finite" in err.lower()
    assert not (runs / "elm" / "evaluation.json").exists()


def test_non_ascii_paths(evaluated, tmp_path):
    """Data, runs and config under non-ASCII names (a project in ~/Données, say) evaluate as any other."""
    root = tmp_path / "Données ü 数据"
    data = _copy_dataset(evaluated["data"], root / "données")
    runs = root / "läufe"
    write_fake_run(runs / "elm", "elm")
    config = root / "konfig é.toml"
    config.write_text(evaluated["config"].read_text())
    proc = run_cli("evaluate", "--config", str(config), "--data", str(data), "--runs", str(runs))
    assert proc.returncode == 0, proc.stderr
    result = json.loads((runs / "elm" / "evaluation.json").read_text(encoding="utf-8"))
    assert result["test"]["shard_paths"] == [str(data / "shard_00002.h5")]
    original = json.loads((evaluated["runs"] / "elm" / "evaluation.json").read_text())
    assert result["windowed"]["spike"]["auc"] == original["windowed"]["spike"]["auc"]


def test_a_full_disk_is_one_line_and_keeps_the_earlier_evaluation(evaluated, tmp_path, cli_on_a_full_disk):
    """Issue 9, item 4: a full disk while writing predictions.h5 (about 90 kB here) is exit 2 and one line
    naming it; the earlier evaluation's files stay as they were and no partial file is left."""
    runs = tmp_path / "runs"
    shutil.copytree(evaluated["runs"] / "elm", runs / "elm")  # evaluated before: evaluation.json, predictions.h5
    before = {p.name: p.read_bytes() for p in (runs / "elm").iterdir()}
    assert {"evaluation.json", "predictions.h5"} <= set(before)
    error = cli_on_a_full_disk("evaluate", "--config", str(evaluated["config"]), "--data", str(evaluated["data"]),
                               "--runs", str(runs), max_file_bytes=20_000)
    assert error.startswith(f"error: cannot write {runs / 'elm' / 'predictions.h5'}: File too large; "), error
    assert "intact" in error
    assert {p.name: p.read_bytes() for p in (runs / "elm").iterdir()} == before  # nothing half-written, nothing left


def test_choose_examples_prefers_kept_simulations_with_most_spikes():
    spikes = np.zeros((5, 50), bool)
    spikes[0, :3] = True
    spikes[1, :30] = True  # 30 spike bins: filtered out by spec 7.4
    spikes[3, :5] = True
    np.testing.assert_array_equal(choose_examples(spikes, 2), [0, 3])
    np.testing.assert_array_equal(choose_examples(spikes, 10), [0, 2, 3, 4])


def test_thin_roc_keeps_its_own_vertices_and_the_ends():
    fpr = np.r_[0.0, np.sort(np.random.default_rng(0).random(50_000)), 1.0]
    tpr = np.sqrt(fpr)
    thin_fpr, thin_tpr = thin_roc(fpr, tpr, max_points=2000)
    assert len(thin_fpr) < 5000 and thin_fpr[0] == 0 and thin_fpr[-1] == 1
    np.testing.assert_array_equal(thin_tpr, np.sqrt(thin_fpr))  # only original points
    assert metrics.trapezoid_auc(thin_fpr, thin_tpr) == pytest.approx(metrics.trapezoid_auc(fpr, tpr), abs=1e-3)


def test_evaluate_config_rejects_bad_values(tmp_path):
    from simulation.errors import ConfigError
    from surrogate.evaluation import load_evaluation_config

    config = tmp_path / "bad.toml"
    config.write_text("[evaluate]\nbatch_size = 0\n")
    with pytest.raises(ConfigError, match="batch_size"):
        load_evaluation_config(config)
    config.write_text("[evaluate]\nbatchsize = 4\n")
    with pytest.raises(ConfigError, match="unknown key 'batchsize'"):
        load_evaluation_config(config)
    config.write_text("[evaluate]\nnum_threads = -1\n")
    with pytest.raises(ConfigError, match="num_threads must be >= 0"):
        load_evaluation_config(config)
    assert EvaluateConfig().fp_rates == (0.0025, 0.01) and DataConfig().ignore_first_ms == 500


# --------------------------------------------------------------------------- validate: published checkpoints

PRETRAINED = Path(os.environ.get("ELMNEURON_CHECKPOINTS", REPO.parent / "shared" / "pretrained" / "elmneuron"))


@pytest.fixture(scope="module")
def pretrained_dir() -> Path:
    if not PRETRAINED.is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"published ELM checkpoints not found at {PRETRAINED}")
        pytest.skip(f"published ELM checkpoints not found at {PRETRAINED} (set $ELMNEURON_CHECKPOINTS)")
    return PRETRAINED


def test_find_published_checkpoints_orders_by_memory(pretrained_dir, tmp_path):
    from simulation.errors import UserInputError
    from surrogate.evaluation import find_published_checkpoints

    folders = find_published_checkpoints(pretrained_dir)
    names = [f.name for f in folders]
    assert names[0] == "num_memory_1" and names[-1] == "best_elm_neuron"
    assert names.index("num_memory_2") < names.index("num_memory_10") < names.index("num_memory_100")
    with pytest.raises(UserInputError, match="not found"):
        find_published_checkpoints(tmp_path / "nowhere")
    with pytest.raises(UserInputError, match="no published model folders"):
        find_published_checkpoints(tmp_path)


def test_score_published_checkpoints_on_a_tiny_shard(pretrained_dir, tmp_path):
    from surrogate.checkpoints import load_model
    from surrogate.evaluation import score_published_checkpoints

    shards = write_fake_dataset(tmp_path / "data", n_shards=1, simulations_per_shard=2, seed=3)
    folders = [pretrained_dir / "num_memory_2", pretrained_dir / "best_elm_neuron"]
    rows = score_published_checkpoints(folders, shards, DataConfig(), EvaluateConfig(device="cpu"))
    inputs, soma, spikes = read_test_shard(shards[0])
    for folder, row in zip(folders, rows):
        published = json.loads((folder / "eval_results.json").read_text())["test_results"]
        stats = json.loads((folder / "model_stats.json").read_text())
        assert row["model"] == folder.name and row["model_kind"] == "branch-elm"
        assert row["num_parameters"] == stats["model_param_count"]
        assert row["published_test"]["auc"] == published["AUC"]
        assert row["published_test"]["soma_rmse_mV"] == published["soma_RMSE"]
        assert row["published_test"]["tp_at_fp"]["0.0100"] == published["TP @ 0.0100 FP"]
        model, _ = load_model(folder)
        prob, volt = predict_windowed(model, inputs, PUBLISHED_SOMA_TRANSFORM, window_ms=500, burn_in_ms=150)
        expected = metrics.evaluate_predictions(soma, spikes, volt, prob)
        assert row["ours"]["spike"]["auc"] == pytest.approx(expected["spike"]["auc"], abs=1e-6)
        assert row["ours"]["soma"]["aligned"]["rmse_mV"] == pytest.approx(expected["soma"]["aligned"]["rmse_mV"], rel=1e-5)
    assert [r["num_memory"] for r in rows] == [2, 100]

    damaged = tmp_path / "published" / "num_memory_2"  # a cut-short eval_results.json: one line, not a traceback
    shutil.copytree(pretrained_dir / "num_memory_2", damaged)
    (damaged / "eval_results.json").write_text('{"test_results": {"AUC": 0.9')
    with pytest.raises(DatasetError, match=r"num_memory_2/eval_results\.json: not valid JSON \(") as err:
        score_published_checkpoints([damaged], shards, DataConfig(), EvaluateConfig(device="cpu"))
    assert "\n" not in str(err.value)


def test_validate_refuses_a_damaged_published_model_config_before_simulating(morphology_path, tmp_path, capsys):
    """A cut-short model_config.json ended `validate` with a JSONDecodeError traceback."""
    from surrogate.checkpoints import PUBLISHED_CONFIG, PUBLISHED_STATE

    published = tmp_path / "published" / "num_memory_1"
    published.mkdir(parents=True)
    (published / PUBLISHED_CONFIG).write_text('{"num_memory": ')
    (published / PUBLISHED_STATE).write_bytes(b"")
    out = tmp_path / "validate"
    assert cli(["validate", "--config", str(REPO / "configs" / "validate.toml"), "--out", str(out),
                "--morphology", str(morphology_path), "--checkpoints", str(published.parent), "--workers", "1"]) == 2
    captured = capsys.readouterr()
    assert "local cluster" not in captured.out  # refused before simulating
    assert captured.err.count("\n") == 1
    assert captured.err.startswith(f"error: {published / PUBLISHED_CONFIG}: unreadable model config (")
    assert not out.exists()


def test_validate_refuses_a_directory_another_run_writes_into(morphology_path, tmp_path, capsys):
    """`validate` writes shards and validation.json into --out: one run at a time, as `simulate`,
    refused before any dask worker starts."""
    import socket

    from surrogate.checkpoints import PUBLISHED_CONFIG, PUBLISHED_STATE

    published = tmp_path / "published" / "num_memory_1"  # only found, never loaded: the refusal comes first
    published.mkdir(parents=True)
    (published / PUBLISHED_CONFIG).write_text('{"num_input": 1278, "num_output": 2, "num_memory": 1}')
    (published / PUBLISHED_STATE).write_bytes(b"")
    out = tmp_path / "validate"
    code = ("import time; from common.locks import DirectoryLock; "
            f"DirectoryLock({str(out)!r}, 'simulate').acquire(); print('held', flush=True); time.sleep(120)")
    holder = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"  # another run, mid-way
        assert cli(["validate", "--config", str(REPO / "configs" / "validate.toml"), "--out", str(out),
                    "--morphology", str(morphology_path), "--checkpoints", str(published.parent),
                    "--workers", "1"]) == 2
        captured = capsys.readouterr()
        assert "local cluster" not in captured.out  # refused before any worker started
        assert captured.err.count("\n") == 1
        assert f"is in use by simulate (pid {holder.pid} on {socket.gethostname()}" in captured.err, captured.err
        assert sorted(p.name for p in out.iterdir()) == [".lock"]
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.slow
def test_validate_end_to_end(pretrained_dir, morphology_path, tmp_path):
    """`validate` on two fresh 2-s CVode simulations: all published models scored, close to their numbers; resumable."""
    config = tmp_path / "validate.toml"
    text = (REPO / "configs" / "validate.toml").read_text()
    config.write_text(text.replace("duration_ms = 6000", "duration_ms = 2000")
                      .replace("simulations_per_shard = 8", "simulations_per_shard = 2"))
    out = tmp_path / "validate"
    args = ["validate", "--config", str(config), "--out", str(out), "--morphology", str(morphology_path),
            "--checkpoints", str(pretrained_dir), "--device", "cpu"]
    proc = run_cli(*args)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads((out / "validation.json").read_text())
    n_folders = len(list(pretrained_dir.glob("*/model_config.json")))
    assert len(result["models"]) == n_folders
    assert result["simulation"]["simulations"] == 2
    assert "best_elm_neuron" in proc.stdout and "spike bins" in proc.stdout
    best = next(r for r in result["models"] if r["model"] == "best_elm_neuron")
    # the external check: a faithful simulator lets the published model predict the soma voltage
    # about as well as on NeuronIO (published 0.56 mV; far worse means the data differ)
    assert best["ours"]["soma"]["aligned"]["rmse_mV"] < 1.2
    if result["evaluation"]["spike_bins_evaluated"] >= 3:
        assert best["ours"]["spike"]["auc"] > 0.95

    # a second run finds the shard done and only scores again
    shard = out / "shard_00000.h5"
    mtime = shard.stat().st_mtime_ns
    proc = run_cli(*args)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "already simulated" in proc.stdout and shard.stat().st_mtime_ns == mtime


def test_paired_comparison_of_two_evaluated_models(evaluated, tmp_path):
    """bench/paired_comparison.py on the evaluate stage's files: the AUCs of evaluation.json, one-line errors."""
    def bench(*args):
        return subprocess.run([sys.executable, str(REPO / "bench" / "paired_comparison.py"), *map(str, args)],
                              capture_output=True, text=True, timeout=300)
    runs, out = evaluated["runs"], tmp_path / "paired.json"
    a, b = list(SMALL_MODELS)[:2]
    done = bench("--runs", runs, "--pair", f"{a}:{b}", "--resamples", 20, "--out", out)
    assert done.returncode == 0, done.stderr[-2000:]
    (row,) = json.loads(out.read_text())["rows"]
    for name, key in ((a, "auc_a"), (b, "auc_b")):
        evaluation = json.loads((runs / name / "evaluation.json").read_text())
        assert row[key] == pytest.approx(evaluation["windowed"]["spike"]["auc"])
    assert row["interval_95"][0] <= row["interval_95"][1] and row["simulations"] == 3
    for name, key in ((a, "rmse_a_mV"), (b, "rmse_b_mV")):  # the soma RMSEs of evaluation.json, paired too
        evaluation = json.loads((runs / name / "evaluation.json").read_text())
        for kind in ("raw", "aligned"):
            assert row["soma_rmse"][kind][key] == pytest.approx(evaluation["windowed"]["soma"][kind]["rmse_mV"], rel=1e-6)
    for args, message in ((("--pair", f"{a}-{b}"), "expected NAME_A:NAME_B"),
                          (("--pair", f"{a}:nothing"), "not found")):
        failed = bench("--runs", runs, *args, "--out", out)
        assert failed.returncode == 2 and message in failed.stderr and "Traceback" not in failed.stderr
