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
from pipelines.evaluate_task import SPLIT_NAMES, TEST_TIME_AUGMENTATIONS
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


def test_the_verb_knows_the_task_splits_and_augmentations():
    from surrogate.sequence_train import AUGMENTATIONS

    assert SPLIT_NAMES == tuple(SPLITS) and TEST_TIME_AUGMENTATIONS == AUGMENTATIONS


def smoke_run(root: Path, task: str, data_settings: str) -> tuple[Path, Path]:
    """(data dir, run dir): tiny task files drawn with `data_settings` and a fit-task smoke run on them."""
    (root / "tiny.toml").write_text(data_settings)
    data, run = root / "data", root / "run"
    prepared = pipelines("prepare-task", "--task", task, "--data-dir", data, "--config", root / "tiny.toml")
    assert prepared.returncode == 0, prepared.stderr[-3000:]
    fit = pipelines("fit-task", "--task", task, "--config", f"configs/tasks/{task}.toml", "--config",
                    "configs/tasks/smoke.toml", "--data-dir", data, "--out", run)
    assert fit.returncode == 0, fit.stderr[-3000:]
    return data, run


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> tuple[Path, Path]:
    """Tiny ListOps files and a smoke run on them."""
    return smoke_run(tmp_path_factory.mktemp("tiny_listops"), "listops", TINY_LISTOPS)


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


@pytest.mark.parametrize("case", ["wrong task", "no checkpoint", "truncated checkpoint", "no data", "bad batch",
                                  "views of tokens"])
def test_bad_input_is_a_one_line_error(tiny_run, tmp_path, case):
    data, run = tiny_run
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes((run / "checkpoint_best.pt").read_bytes()[:2000])
    args = {"wrong task": ["--task", "pathfinder32", "--data-dir", data, "--checkpoint", run],
            "no checkpoint": ["--task", "listops", "--data-dir", data, "--checkpoint", tmp_path / "nowhere"],
            "truncated checkpoint": ["--task", "listops", "--data-dir", data, "--checkpoint", run, "--checkpoint", truncated],
            "no data": ["--task", "listops", "--data-dir", tmp_path / "empty", "--checkpoint", run],
            "bad batch": ["--task", "listops", "--data-dir", data, "--checkpoint", run, "--batch-size", "0"],
            "views of tokens": ["--task", "listops", "--data-dir", data, "--checkpoint", run,
                                "--test-time-augment", "dihedral"]}[case]
    before = {path.name: path.read_bytes() for path in run.iterdir() if path.is_file()}
    done = pipelines("evaluate-task", *args)
    expected = {"wrong task": "was trained on listops, not pathfinder32", "no checkpoint": "checkpoint not found",
                "truncated checkpoint": "truncated.pt",
                "no data": "test split not found", "bad batch": "--batch-size must be at least 1",
                "views of tokens": "task listops has tokens, not pixels"}[case]
    assert done.returncode == 2 and done.stderr.startswith("error: ") and expected in done.stderr, done.stderr[-2000:]
    assert done.stderr.count("\n") == 1
    assert {path.name: path.read_bytes() for path in run.iterdir() if path.is_file()} == before  # nothing written


# --------------------------------------------------------------------------- test-time augmentation

@pytest.fixture(scope="module")
def tiny_pathfinder_run(tmp_path_factory) -> tuple[Path, Path]:
    """Tiny Pathfinder-32 files and a smoke run on them."""
    return smoke_run(tmp_path_factory.mktemp("tiny_pathfinder"), "pathfinder32",
                     "[tasks.pathfinder32]\ntrain_size = 16\nvalid_size = 8\ntest_size = 16\n")


def test_dihedral_test_time_augmentation_averages_the_eight_views_and_so_ignores_how_the_image_is_turned(
        tiny_pathfinder_run):
    import dataclasses

    import torch

    from surrogate.sequence_train import (collate_examples, dihedral_averaged_log_probs, evaluate,
                                          load_sequence_model, open_task_split)
    from surrogate.tasks.datasets import DIHEDRAL_VIEWS, dihedral_views

    data, run = tiny_pathfinder_run
    model, _ = load_sequence_model(run, torch.device("cpu"))
    model.eval()
    dataset = open_task_split("pathfinder32", data, "test")
    batch = collate_examples([dataset[i] for i in range(len(dataset))])
    images, lengths, labels = batch["inputs"], batch["length"], batch["label"]
    with torch.no_grad():
        averaged = dihedral_averaged_log_probs(model, images, lengths, "reference")
        each_view = torch.stack([torch.softmax(model(dihedral_views(images, torch.full_like(lengths, v)), lengths,
                                                     recurrence="reference"), -1) for v in range(DIHEDRAL_VIEWS)])
        assert torch.allclose(averaged.exp(), each_view.mean(0), atol=1e-6)  # the mean of the 8 views' probabilities
        assert torch.allclose(averaged.exp().sum(-1), torch.ones(len(labels)), atol=1e-6)
        assert not torch.allclose(each_view[0], each_view[5], atol=1e-4)  # the views do differ to the model
        for view in range(DIHEDRAL_VIEWS):  # a turned image has the same 8 views, so the same answer
            turned = dihedral_views(images, torch.full_like(lengths, view))
            assert torch.allclose(dihedral_averaged_log_probs(model, turned, lengths, "reference"), averaged, atol=1e-5)
        scores = evaluate(model, dataset, 10, torch.device("cpu"), "reference", keep_predictions=True,
                          test_time_augment="dihedral")
    assert torch.equal(scores["predicted"], averaged.argmax(-1)) and torch.equal(scores["labels"], labels)
    assert scores["loss"] == pytest.approx(torch.nn.functional.nll_loss(averaged, labels).item(), rel=1e-5)
    with pytest.raises(ValueError, match="test_time_augment must be one of none, dihedral, got 'dihedal'"):
        evaluate(model, dataset, 10, torch.device("cpu"), test_time_augment="dihedal")
    model.model_config = dataclasses.replace(model.model_config, readout="per-step")  # one answer per step
    with pytest.raises(ValueError, match="averages one answer per image; this model's readout is per-step"):
        evaluate(model, dataset, 10, torch.device("cpu"), test_time_augment="dihedral")


def test_evaluate_task_scores_each_checkpoint_with_and_without_the_views_paired_on_the_same_images(
        tiny_pathfinder_run, tmp_path):
    data, run = tiny_pathfinder_run
    summary = json.loads((run / "summary.json").read_text())
    done = pipelines("evaluate-task", "--task", "pathfinder32", "--data-dir", data, "--checkpoint", run,
                     "--test-time-augment", "none", "--test-time-augment", "dihedral", "--device", "cpu",
                     "--out", tmp_path / "scores.json")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "(dihedral views): test accuracy" in done.stdout
    single, views = json.loads((tmp_path / "scores.json").read_text())["rows"]
    assert (single["test_time_augment"], views["test_time_augment"]) == ("none", "dihedral")
    assert single["accuracy"] == pytest.approx(summary["test_accuracy"]) and views["examples"] == 16
    vs = views["against_first"]
    assert vs["first_test_time_augment"] == "none" and vs["first"] == str(run)
    assert vs["accuracy_difference"] == pytest.approx(views["accuracy"] - single["accuracy"])

    again = pipelines("evaluate-task", "--task", "pathfinder32", "--data-dir", data, "--checkpoint", run,
                      "--test-time-augment", "dihedral", "--device", "cpu", "--out", tmp_path / "scores.json")
    assert again.returncode == 0, again.stderr[-3000:]
    rows = json.loads((tmp_path / "scores.json").read_text())["rows"]
    assert [row["test_time_augment"] for row in rows] == ["none", "dihedral"]  # the re-run replaced its own row only


def test_the_views_benchmark_agrees_with_evaluate_task_at_one_and_at_all_eight_views(tiny_pathfinder_run, tmp_path):
    data, run = tiny_pathfinder_run
    scored = pipelines("evaluate-task", "--task", "pathfinder32", "--data-dir", data, "--checkpoint", run,
                       "--test-time-augment", "none", "--test-time-augment", "dihedral", "--device", "cpu",
                       "--out", tmp_path / "scores.json")
    assert scored.returncode == 0, scored.stderr[-3000:]
    single, views = json.loads((tmp_path / "scores.json").read_text())["rows"]
    bench = subprocess.run([sys.executable, str(ROOT / "bench" / "test_time_views.py"), "--task", "pathfinder32",
                            "--data-dir", str(data), "--checkpoint", f"tiny={run}", "--device", "cpu",
                            "--out", str(tmp_path / "views.json"), "--plot", str(tmp_path / "views.png")],
                           cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert bench.returncode == 0, bench.stderr[-3000:]
    (row,) = json.loads((tmp_path / "views.json").read_text())["rows"]
    assert [point["views"] for point in row["curve"]] == list(range(1, 9))
    assert [point["sets"] for point in row["curve"]] == [8, 28, 56, 70, 56, 28, 8, 1]  # every set of k of 8 views
    assert row["per_view_accuracy"][0] == pytest.approx(single["accuracy"])  # view 0: the image as it is
    assert row["all_views"]["correct"] == views["correct"] == round(row["curve"][-1]["mean_accuracy"] * 16)
    assert row["augment_in_training"] == "none" and (tmp_path / "views.png").stat().st_size > 10_000
    bad = subprocess.run([sys.executable, str(ROOT / "bench" / "test_time_views.py"), "--task", "pathfinder32",
                          "--data-dir", str(data), "--checkpoint", str(run)], cwd=ROOT, capture_output=True, text=True,
                         timeout=600)
    assert bad.returncode == 2 and "expected LABEL=RUN_DIR" in bad.stderr and bad.stderr.count("\n") == 1
