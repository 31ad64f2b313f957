"""bench/input_drawing.py: draws real rasters on threads, writes its table as JSON, refuses bad arguments."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "input_drawing.py"


def test_input_drawing_measures_threads_and_writes_json(tmp_path):
    out = tmp_path / "drawing.json"
    earlier = [{"threads": 16, "host": "the GPU machine"}, {"threads": 1, "host": "this test"}]
    out.write_text(json.dumps({"rows": earlier, "kept": "an earlier run's note"}))
    done = subprocess.run([sys.executable, str(SCRIPT), "--threads", "1", "2", "--rasters", "2", "--smoothing", "held", "fft",
                           "--host", "this test", "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())
    # another host's rows stay, this host's earlier ones are replaced by this run's
    assert result["rows"][0] == earlier[0]
    assert [(row["threads"], row["smoothing"], row["host"]) for row in result["rows"][1:]] == [
        (1, "held", "this test"), (2, "held", "this test"), (1, "fft", "this test"), (2, "fft", "this test")]
    assert result["kept"] == "an earlier run's note"  # the file's other entries stay
    assert all(row["rasters"] == 2 and row["rasters_per_s"] > 0 and row["seconds"] > 0 for row in result["rows"][1:])
    assert result["duration_ms"] == 6000


def test_input_drawing_refuses_an_unknown_smoothing(tmp_path):
    done = subprocess.run([sys.executable, str(SCRIPT), "--smoothing", "fast", "--out", str(tmp_path / "x.json")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "invalid choice" in done.stderr
    assert not (tmp_path / "x.json").exists()


def test_input_drawing_refuses_a_zero_thread_count(tmp_path):
    done = subprocess.run([sys.executable, str(SCRIPT), "--threads", "0", "--out", str(tmp_path / "x.json")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "must be positive" in done.stderr
    assert not (tmp_path / "x.json").exists()
