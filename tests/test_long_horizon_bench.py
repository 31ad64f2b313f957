"""bench/long_horizon.py: real prepare-task and fit-task runs, their rows in the results JSON, --max-time-s and resume."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TINY_LISTOPS = """
[tasks.listops]
train_size = 24
valid_size = 8
test_size = 8
min_length = 20
max_length = 120
max_depth = 4
"""


def bench(*args) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    return subprocess.run([sys.executable, "bench/long_horizon.py", *map(str, args)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)


def test_a_time_limited_benchmark_row_says_where_it_stopped_and_a_rerun_finishes_it(tmp_path):
    (tmp_path / "tiny.toml").write_text(TINY_LISTOPS)
    common = ["--task", "listops", "--data-dir", tmp_path / "data", "--models", "elm", "--runs", tmp_path / "runs",
              "--extra-config", "configs/tasks/smoke.toml", "--out", tmp_path / "out.json"]
    first = bench(*common, "--prepare", "--prepare-config", tmp_path / "tiny.toml", "--max-time-s", "1e-6")
    assert first.returncode == 0, first.stderr[-3000:]
    (row,) = json.loads((tmp_path / "out.json").read_text())["rows"]
    assert (row["task"], row["model"], row["label"]) == ("listops", "elm", "smoke")
    assert row["finished"] is False and row["epochs_completed"] == 1 and row["epochs_planned"] == 2
    assert len(row["valid_accuracy_by_epoch"]) == 1 and row["test_examples"] == 8
    assert row["examples_seen"] == row["global_step"] * 4 == 3 * 4  # smoke: 3 batches of 4 per epoch
    assert "stopped at --max-time-s" in first.stdout

    results = json.loads((tmp_path / "out.json").read_text())
    (tmp_path / "out.json").write_text(json.dumps({**results, "memory": [{"kept": True}]}))  # as --profile-memory adds
    second = bench(*common)  # the same run, no limit: resumes after epoch 1 and finishes; its row replaces the first
    assert second.returncode == 0, second.stderr[-3000:]
    results = json.loads((tmp_path / "out.json").read_text())
    assert results["memory"] == [{"kept": True}]  # other sections of the results file survive a training run
    (row,) = results["rows"]
    assert row["finished"] is True and row["epochs_completed"] == 2 and row["resumed_at_epochs"] == [1]
    assert len(row["valid_accuracy_by_epoch"]) == 2 and 0 <= row["test_accuracy"] <= 1
    assert len(row["train_accuracy_by_epoch"]) == 2 and all(0 <= a <= 1 for a in row["train_accuracy_by_epoch"])

    # a fine-tune from the run's best weights is a row of its own whose curve goes on from the source's examples
    tuned = bench(*common, "--label", "smoke_tuned", "--init-from", tmp_path / "runs" / "smoke" / "listops" / "elm")
    assert tuned.returncode == 0, tuned.stderr[-3000:]
    rows = json.loads((tmp_path / "out.json").read_text())["rows"]
    source, tuned_row = rows
    assert tuned_row["label"] == "smoke_tuned" and tuned_row["initialized_from"]["epoch"] == source["best_epoch"]
    sys.path.insert(0, str(ROOT / "bench"))
    from long_horizon import examples_before

    assert examples_before(source, rows) == 0
    assert examples_before(tuned_row, rows) == tuned_row["initialized_from"]["global_step"] * 4 > 0
    assert examples_before(tuned_row, [tuned_row]) == 0  # a source with no row of its own

    plot = bench("--plot", tmp_path / "history.png", "--out", tmp_path / "out.json")
    assert plot.returncode == 0, plot.stderr[-3000:]
    assert (tmp_path / "history.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    missing = bench("--plot", tmp_path / "never.png", "--out", tmp_path / "missing.json")
    assert missing.returncode == 2 and "does not exist" in missing.stderr and not (tmp_path / "never.png").exists()
