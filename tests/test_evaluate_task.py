"""`python -m pipelines evaluate-task` on real fit-task checkpoints and real task files, and the classification metrics
it reports (surrogate.metrics)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from common.errors import InputShapeError
from pipelines.evaluate_task import SPLIT_NAMES
from surrogate.metrics import classification_metrics, paired_accuracy_difference
from surrogate.tasks.settings import SPLITS

ROOT = Path(__file__).resolve().parents[1]
TINY_LISTOPS = "[tasks.listops]\ntrain_size = 24\nvalid_size = 8\ntest_size = 12\nmin_length = 20\nmax_length = 120\nmax_depth = 4\n"


def pipelines(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipelines", *map(str, args)], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)


def test_classification_metrics_count_what_they_say():
    labels = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2, 2])
    predicted = np.array([0, 0, 1, 1, 1, 2, 2, 0, 2, 2])
    scores = classification_metrics(predicted, labels, num_classes=4)
    assert scores["accuracy"] == 0.8 and scores["correct"] == 8 and scores["examples"] == 10
    low, high = scores["accuracy_ci95"]
    assert 0.4 < low < 0.8 < high < 1.0  # Wilson: asymmetric, inside (0, 1)
    assert scores["confusion_matrix"] == [[2, 1, 0, 0], [0, 2, 0, 0], [1, 0, 4, 0], [0, 0, 0, 0]]
    assert scores["class_recall"] == [2 / 3, 1.0, 0.8, None] and scores["class_support"] == [3, 2, 5, 0]
    with pytest.raises(InputShapeError):
        classification_metrics(predicted[:3], labels, num_classes=4)


def test_paired_accuracy_difference_is_mcnemars_exact_test():
    a = np.array([True] * 10 + [False] * 5 + [True] * 5)
    b = np.array([False] * 10 + [False] * 5 + [True] * 5)
    vs = paired_accuracy_difference(a, b)
    assert (vs["only_a_correct"], vs["only_b_correct"]) == (10, 0) and vs["accuracy_difference"] == 0.5
    assert vs["mcnemar_p_value"] == pytest.approx(2 * 0.5 ** 10)  # 10 of 10 discordant one way, two-sided
    assert paired_accuracy_difference(a, a)["mcnemar_p_value"] == 1.0
    with pytest.raises(InputShapeError):
        paired_accuracy_difference(a, b[:4])


def test_the_verb_knows_the_task_splits():
    assert SPLIT_NAMES == tuple(SPLITS)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> tuple[Path, Path]:
    """(data dir, run dir): tiny ListOps files and a fit-task smoke run on them."""
    root = tmp_path_factory.mktemp("tiny_listops")
    (root / "tiny.toml").write_text(TINY_LISTOPS)
    data, run = root / "data", root / "run"
    prepared = pipelines("prepare-task", "--task", "listops", "--data-dir", data, "--config", root / "tiny.toml")
    assert prepared.returncode == 0, prepared.stderr[-3000:]
    fit = pipelines("fit-task", "--task", "listops", "--config", "configs/tasks/listops.toml", "--config",
                    "configs/tasks/smoke.toml", "--data-dir", data, "--out", run)
    assert fit.returncode == 0, fit.stderr[-3000:]
    return data, run


def test_evaluate_task_scores_a_run_as_fit_task_did_and_compares_checkpoints_on_the_same_examples(tiny_run, tmp_path):
    data, run = tiny_run
    summary = json.loads((run / "summary.json").read_text())

    done = pipelines("evaluate-task", "--task", "listops", "--data-dir", data, "--checkpoint", run,
                     "--checkpoint", run / "checkpoint_last.pt", "--device", "cpu")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "test accuracy" in done.stdout and "McNemar" in done.stdout
    first, last = json.loads((run / "evaluation_test.json").read_text())["rows"]  # the default: beside the first
    assert first["accuracy"] == pytest.approx(summary["test_accuracy"]) and first["examples"] == 12
    assert first["epoch"] == summary["best_epoch"] and last["epoch"] == summary["epochs_completed"]
    assert sum(first["class_support"]) == 12 and len(first["confusion_matrix"]) == 10
    vs = last["against_first"]
    assert vs["accuracy_difference"] == pytest.approx(last["accuracy"] - first["accuracy"])
    assert 0 <= vs["mcnemar_p_value"] <= 1 and "against_first" not in first

    again = pipelines("evaluate-task", "--task", "listops", "--data-dir", data, "--checkpoint", run, "--split", "valid",
                      "--out", tmp_path / "scores.json")
    assert again.returncode == 0, again.stderr[-3000:]
    (row,) = json.loads((tmp_path / "scores.json").read_text())["rows"]
    assert row["split"] == "valid" and row["examples"] == 8


@pytest.mark.parametrize("case", ["wrong task", "no checkpoint", "truncated checkpoint", "no data", "bad batch"])
def test_bad_input_is_a_one_line_error(tiny_run, tmp_path, case):
    data, run = tiny_run
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes((run / "checkpoint_best.pt").read_bytes()[:2000])
    args = {"wrong task": ["--task", "pathfinder32", "--data-dir", data, "--checkpoint", run],
            "no checkpoint": ["--task", "listops", "--data-dir", data, "--checkpoint", tmp_path / "nowhere"],
            "truncated checkpoint": ["--task", "listops", "--data-dir", data, "--checkpoint", run, "--checkpoint", truncated],
            "no data": ["--task", "listops", "--data-dir", tmp_path / "empty", "--checkpoint", run],
            "bad batch": ["--task", "listops", "--data-dir", data, "--checkpoint", run, "--batch-size", "0"]}[case]
    before = {path.name: path.read_bytes() for path in run.iterdir() if path.is_file()}
    done = pipelines("evaluate-task", *args)
    expected = {"wrong task": "was trained on listops, not pathfinder32", "no checkpoint": "checkpoint not found",
                "truncated checkpoint": "truncated.pt",
                "no data": "test split not found", "bad batch": "--batch-size must be at least 1"}[case]
    assert done.returncode == 2 and done.stderr.startswith("error: ") and expected in done.stderr, done.stderr[-2000:]
    assert done.stderr.count("\n") == 1
    assert {path.name: path.read_bytes() for path in run.iterdir() if path.is_file()} == before  # nothing written
