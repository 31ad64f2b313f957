"""bench/pathfinder_learnability.py end to end on a few images: draws with the real generator, trains, writes its row."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_learnability_benchmark_writes_a_row_per_variant(tmp_path):
    out = tmp_path / "learnability.json"
    command = [sys.executable, str(ROOT / "bench" / "pathfinder_learnability.py"), "--variant", "easy", "--train", "96",
               "--test", "32", "--epochs", "2", "--workers", "1", "--out", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    rows = json.loads(out.read_text())["rows"]
    assert [row["variant"] for row in rows] == ["easy"]
    row = rows[0]
    assert row["generator_revision"] == 2 and row["settings"] == {"contour_length": 6, "num_distractors": 0}
    assert row["train_images"] == 96 and row["test_images"] == 32 and len(row["history"]) == 2
    assert 0.0 <= row["final_test_accuracy"] <= 1.0 and 0.2 < row["label_share_train"] < 0.8
    assert "easy" in done.stdout.splitlines()[-2]  # the table's row


def test_learnability_benchmark_draws_the_16_pixel_variant(tmp_path):
    """easy16: 16 x 16 images (T = 256 for the sequence models), reshaped by the variant's own image size."""
    out = tmp_path / "learnability.json"
    command = [sys.executable, str(ROOT / "bench" / "pathfinder_learnability.py"), "--variant", "easy16", "--train", "64",
               "--test", "16", "--epochs", "1", "--workers", "1", "--data-dir", str(tmp_path / "data"), "--out", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    row = json.loads(out.read_text())["rows"][0]
    assert row["variant"] == "easy16" and row["settings"]["image_size"] == 16
    import h5py

    with h5py.File(tmp_path / "data" / "easy16" / "pathfinder32" / "train.h5", "r") as f:
        assert f["inputs"].shape == (64, 256)


def test_marker_geometry_measures_what_the_circles_alone_give_away(tmp_path):
    """--marker-geometry: the circles' geometry of the generator's own images against the label, cross-validated.
    On the 16 x 16 easy variant the circles' distance alone gives the label away well above chance (contours of 4
    paddles: the two ends of one contour lie closer than the ends of two), which is what the check is for."""
    out = tmp_path / "learnability.json"
    command = [sys.executable, str(ROOT / "bench" / "pathfinder_learnability.py"), "--marker-geometry", "1000",
               "--variant", "easy16", "--workers", "1", "--out", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    results = json.loads(out.read_text())
    assert "rows" not in results  # no CNN was trained
    (row,) = results["marker_geometry"]
    assert row["variant"] == "easy16" and row["images"] == 1000 and 0.4 < row["label_share"] < 0.6
    assert set(row["features"]) == {"distance", "|dy|, |dx|", "coordinates", "scan-order gap", "all of them"}
    assert all(0.0 <= f["accuracy"] <= 1.0 for f in row["features"].values())
    assert row["features"]["distance"]["accuracy"] > 0.6
    assert "easy16" in done.stdout.splitlines()[-2]  # the table's row
