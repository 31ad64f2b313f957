"""bench/pooled_test_set.sh on the CPU twin: the test splits of two tiny datasets, each simulated alone from its seed,
pooled by `evaluate --all-shards` for the committed Branch-ELM d_m 20."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_test_splits_are_made_from_their_seeds_and_pooled_by_evaluate(tmp_path, morphology_path):
    (tmp_path / "small.toml").write_text("[dataset]\nsimulations_per_shard = 2\n[inputs]\nduration_ms = 3000\n")
    env = {**os.environ, "SPLITS": "5:3 6:2", "SIM_CONFIG": f"configs/quick.toml {tmp_path / 'small.toml'}",
           "PYTHON": sys.executable, "L5PC_MORPHOLOGY": str(morphology_path)}
    done = subprocess.run(["bash", "bench/pooled_test_set.sh", str(tmp_path / "pool")], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    pool = done.stdout.strip().splitlines()[-1]
    assert pool == f"--data {tmp_path / 'pool' / 'seed5'} --data {tmp_path / 'pool' / 'seed6'}"
    for seed, name in ((5, "shard_00002.h5"), (6, "shard_00001.h5")):  # the last shard only
        assert sorted(p.name for p in (tmp_path / "pool" / f"seed{seed}").glob("shard_*.h5")) == [name]
        with h5py.File(tmp_path / "pool" / f"seed{seed}" / name) as shard:
            assert shard.attrs["master_seed"] == seed and shard["input_spikes"].shape == (2, 1278, 3000)

    scored = subprocess.run([sys.executable, "-m", "pipelines", "evaluate", "--config", "configs/quick.toml", "--all-shards",
                             *pool.split(), "--runs", str(tmp_path / "eval"), "--checkpoint", "checkpoints/branch-elm-d20",
                             "--device", "cpu"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert scored.returncode == 0, scored.stderr[-3000:]
    (result,) = (tmp_path / "eval").rglob("evaluation.json")
    assert json.loads(result.read_text())["test"]["simulations"] == 4  # both splits, two simulations each


def test_a_wrong_call_is_a_one_line_error():
    done = subprocess.run(["bash", "bench/pooled_test_set.sh"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and done.stderr.startswith("usage:") and done.stderr.count("\n") == 1
