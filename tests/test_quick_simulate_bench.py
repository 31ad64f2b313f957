"""bench/quick_simulate.py: the quick default's simulate with its CPU twin and with CVode, real runs, JSON out."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "quick_simulate.py"


def test_quick_simulate_times_both_solvers_on_the_same_simulations(tmp_path, morphology_path):
    out = tmp_path / "quick.json"
    done = subprocess.run([sys.executable, str(SCRIPT), "--simulations", "1", "--repeats", "1", "--duration-ms", "1500",
                           "--out", str(out)], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "L5PC_MORPHOLOGY": str(morphology_path)})
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(out.read_text())
    assert set(result["wall_s"]) == {"quick", "cvode"}
    assert all(len(w) == 1 and w[0] > 0 for w in result["wall_s"].values())
    assert result["cvode_over_quick_wall"][0] == pytest.approx(result["wall_s"]["cvode"][0] / result["wall_s"]["quick"][0])
    spikes = result["fidelity_against_cvode"]
    # every CVode spike is either paired with one of the twin's or counted as missed, and every twin spike likewise
    assert spikes["paired_spikes"] + spikes["missed_spikes"] == spikes["reference_spikes"]
    assert spikes["paired_spikes"] + spikes["extra_spikes"] == spikes["statistics"]["spikes"]
    assert spikes["simulations"] == 1 and spikes["soma_rmse_clipped_median_mV"] >= 0
    assert "CVode takes" in done.stdout


def test_quick_simulate_refuses_zero_simulations(tmp_path):
    done = subprocess.run([sys.executable, str(SCRIPT), "--simulations", "0", "--out", str(tmp_path / "x.json")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "at least 1" in done.stderr
    assert not (tmp_path / "x.json").exists()
