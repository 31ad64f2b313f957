"""bench/neuronio_scale.sh --dry-run: every stage of the NeuronIO-scale benchmark, tiny, on the CPU.

The GPU engine's CPU twin simulates the training data, NEURON's CVode the separate test set;
the four models train one short epoch each (and Branch-ELM again on 2 of the 4 training
simulations, the data-efficiency curve), are evaluated on both test sets, and
bench/surrogate_accuracy.py assembles the JSON and `report` the report. A second run of the same command skips
every stage.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "bench" / "neuronio_scale.sh"


def run_script(work: Path, morphology: Path, *args: str, **env_vars: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "WORK": str(work), "L5PC_MORPHOLOGY": str(morphology), "PYTHON": sys.executable, **env_vars}
    return subprocess.run(["bash", str(SCRIPT), "--dry-run", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=1800)


def test_unknown_stage_or_option_is_one_line(tmp_path, morphology_path):
    for args, message in ((("simulte",), "unknown stage simulte"), (("--fast",), "unknown option --fast")):
        result = run_script(tmp_path / "work", morphology_path, *args)
        assert result.returncode == 2 and message in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_a_call_without_time_left_stops_with_exit_3(tmp_path, morphology_path):
    """A stage that cannot finish in this call's BUDGET_S is not started: exit 3, "run the same command again"."""
    result = run_script(tmp_path / "work", morphology_path, "simulate", BUDGET_S="30")
    assert result.returncode == 3, result.stdout + result.stderr
    assert "simulate: not started" in result.stdout and "run the same command again" in result.stdout
    assert not (tmp_path / "work" / "data").exists()


@pytest.mark.slow
def test_dry_run_end_to_end(tmp_path, morphology_path):
    work = tmp_path / "work"
    models = "elm branch-elm branch-elm-d100 tcn lstm"  # branch-elm-d100: configs/models/branch-elm-d100.toml
    published = REPO.parent / "shared" / "pretrained" / "elmneuron" / "num_memory_20"
    extra = {"PUBLISHED": str(published)} if published.is_dir() else {}
    result = run_script(work, morphology_path, MODELS=models, PARALLEL="1", **extra)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "all stages done" in result.stdout

    out = json.loads((work / "surrogate_accuracy.json").read_text())
    assert out["datasets"]["train"]["simulations"] == 4 and out["datasets"]["test_gpu_engine"]["simulations"] == 2
    assert out["datasets"]["test_cvode"]["simulations"] == 2
    assert out["datasets"]["train"]["master_seed"] == 2021 and out["datasets"]["test_cvode"]["master_seed"] == 4242
    assert "fits side by side" in result.stdout
    assert set(out["models"]) == {"elm", "branch-elm", "branch-elm-d100", "tcn", "lstm"}  # not branch-elm-n2
    assert out["models"]["branch-elm-d100"]["model_config"]["num_memory"] == 100
    assert out["models"]["branch-elm-d100"]["model_config"]["mlp_activation"] == "silu"
    for kind, entry in out["models"].items():
        summary = json.loads((work / "runs" / kind / "summary.json").read_text())
        assert entry["num_parameters"] == summary["num_parameters"] > 0
        assert entry["train_wall_s"] == summary["training_time_s"] > 0
        assert 0 < entry["time_to_best_valid_s"] <= entry["train_wall_s"]
        assert set(entry["test_sets"]) == {"gpu_engine", "cvode"}
        for name, scores in entry["test_sets"].items():
            evaluation_dir = work / ("runs" if name == "gpu_engine" else "eval_cvode") / kind
            evaluation = json.loads((evaluation_dir / "evaluation.json").read_text())
            assert scores["test_rmse_raw_mV"] == evaluation["windowed"]["soma"]["raw"]["rmse_mV"]
            assert scores["test_rmse_aligned_mV"] == evaluation["windowed"]["soma"]["aligned"]["rmse_mV"]
            for key in ("test_auc", "test_tp_at_1pct_fp"):
                assert key in scores  # NaN (JSON null) when a tiny test set has no spike
        assert entry["test_sets"]["cvode"]["test_shards"] == ["shard_00000.h5"]
    # the ELM family released for users: inference-only checkpoints that predict on the CPU
    from surrogate.checkpoints import load_checkpoint, load_model

    released = sorted(p.name for p in (work / "checkpoints").iterdir())
    runs_of = {"branch-elm-d100": "branch-elm-d100", "branch-elm-d2": "branch-elm", "elm-d2": "elm"}
    assert released == sorted(runs_of)
    for name, run in runs_of.items():
        checkpoint = load_checkpoint(work / "checkpoints" / name / "checkpoint_best.pt")
        assert checkpoint["optimizer_state"] is None and checkpoint["extra"]["test_sets"].keys() == {"gpu_engine", "cvode"}
        _, info = load_model(work / "checkpoints" / name)
        assert info["num_parameters"] == out["models"][run]["num_parameters"]
    if extra:  # the published checkpoint scored on the same two test sets
        scores = out["published_checkpoints"]["num_memory_20"]
        assert scores["num_parameters"] == 8002 and set(scores["test_sets"]) == {"gpu_engine", "cvode"}
    tcn = json.loads((work / "runs" / "tcn" / "summary.json").read_text())["train_config"]
    assert tcn["optimizer"] == "nadam" and tcn["lr_schedule"] == "step"
    # the data-efficiency fit (DATA_SIZES, default 2 in a dry run) and the report's curve over both Branch-ELM runs
    assert json.loads((work / "runs" / "branch-elm-n2" / "summary.json").read_text())["training_simulations"] == 2
    assert (work / "eval_cvode" / "branch-elm-n2" / "evaluation.json").is_file()
    curves = json.loads((work / "report" / "data_efficiency.json").read_text())
    assert [(p["run"], p["training_simulations"]) for p in curves["branch-elm-d2"]] == [("branch-elm-n2", 2), ("branch-elm", 4)]
    assert (work / "report" / "data_efficiency.png").is_file() and (work / "report" / "report.md").is_file()

    again = run_script(work, morphology_path, MODELS=models, PARALLEL="1", **extra)
    assert again.returncode == 0 and "all stages done" in again.stdout
    for stage in ("simulate", "cvode-test", "fit-elm", "fit-lstm", "fit-branch-elm-d100", "fit-branch-elm-n2"):
        assert any(line.startswith(f"[") and f"{stage}:" in line and "skipped" in line
                   for line in again.stdout.splitlines()), stage

    # the last call of a session: a fit stopped at FIT_TIME_S is scored from its best epoch so far (EVALUATE_STOPPED=1)
    longer = run_script(work, morphology_path, "fit-branch-elm-n3", "evaluate", "assemble", MODELS=models, PARALLEL="1",
                        DATA_SIZES="2 3", EPOCHS_BRANCH_ELM_N3="100000", FIT_TIME_S="60", EVALUATE_STOPPED="1", **extra)
    assert longer.returncode == 0 and "all stages done" in longer.stdout, longer.stdout[-3000:] + longer.stderr[-3000:]
    assert "fit-branch-elm-n3: stopped; scored from its best epoch so far" in longer.stdout
    summary = json.loads((work / "runs" / "branch-elm-n3" / "summary.json").read_text())
    assert summary["finished"] is False and 1 <= summary["epochs_completed"] < 100000
    for directory in ("runs", "eval_cvode"):
        training = json.loads((work / directory / "branch-elm-n3" / "evaluation.json").read_text())["training"]
        assert training["finished"] is False and training["epochs_completed"] == summary["epochs_completed"]
    curves = json.loads((work / "report" / "data_efficiency.json").read_text())
    assert [p["training_simulations"] for p in curves["branch-elm-d2"]] == [2, 3, 4]

    # a later session: INIT_<RUN> starts a run afresh from the released checkpoint (fit --init-from), and the JSON
    # reports the training it started from beside its own
    released = work / "checkpoints" / "branch-elm-d100"
    shutil.rmtree(work / "runs" / "branch-elm-d100")
    tuned = run_script(work, morphology_path, "fit-branch-elm-d100", "evaluate", "assemble", MODELS=models,
                       PARALLEL="1", DATA_SIZES="2 3", INIT_BRANCH_ELM_D100=str(released), EVALUATE_STOPPED="1", **extra)
    assert tuned.returncode == 0 and "all stages done" in tuned.stdout, tuned.stdout[-3000:] + tuned.stderr[-3000:]
    entry = json.loads((work / "surrogate_accuracy.json").read_text())["models"]["branch-elm-d100"]
    assert entry["initialized_from"]["source"] == str(released.resolve())
    assert entry["train_wall_s_with_initial"] == pytest.approx(entry["train_wall_s"] + out["models"]["branch-elm-d100"]["train_wall_s"])
