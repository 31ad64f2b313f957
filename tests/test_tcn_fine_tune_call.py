"""bench/tcn_fine_tune_call.sh as a dry run on the CPU: three chained self-contained calls (from scratch, then from the
weights sent back, then from those left on the machine), each sending back its new fp16 weights and (but the last,
with TEST_PARTS=0) its test shard in parts."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import pytest
import torch

from surrogate.checkpoints import load_checkpoint, save_checkpoint
from surrogate.config import load_training_config
from surrogate.registry import build_model, model_config_of
from surrogate.targets import SomaTransform

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "bench" / "tcn_fine_tune_call.sh"
WEIGHTS = Path("/tmp/weights")  # where the script chains calls on one machine


def joined(out: Path, name: str, into: Path) -> Path:
    with open(into, "wb") as whole:
        for part in sorted(out.glob(f"{name}.part-*")):
            whole.write(part.read_bytes())
    return into


@pytest.mark.slow
def test_a_chain_from_scratch_over_a_fresh_machine_and_the_same_machine(tmp_path, morphology_path):
    """Call 1 trains a TCN from scratch; call 2 runs on a "fresh machine" (nothing in /tmp/weights) from the weights call 1
    sent back, joined from their parts and carried; call 3 follows on the same machine from what call 2 left there."""
    (tmp_path / "small.toml").write_text("[dataset]\nsimulations_per_shard = 2\n[inputs]\nduration_ms = 2000\n")
    (tmp_path / "tiny.toml").write_text("[train.tcn]\nbatch_size = 4\nepochs = 1\nbatches_per_epoch = 3\n")
    carry = tmp_path / "carry"
    carry.mkdir()
    names = ("tcn-a", "tcn-b", "tcn-c")
    seeds = (917, 918, 919)
    for name in names:
        (WEIGHTS / f"{name}-fp16.pt").unlink(missing_ok=True)
    for seed in seeds:
        shutil.rmtree(f"/tmp/run-{seed}", ignore_errors=True)

    outs = {}
    for seed, start, new in zip(seeds, ("scratch", "tcn-a", "tcn-b"), names):
        out = tmp_path / f"out{seed}"
        env = {**os.environ, "SMALL": "1", "OUT": str(out), "PYTHON": sys.executable, "CARRY": str(carry),
               "TEST_PARTS": "0" if new == "tcn-c" else "1",  # the last call keeps its test shard on the machine
               "L5PC_MORPHOLOGY": str(morphology_path), "SIM_BASE": f"configs/quick.toml {tmp_path / 'small.toml'}",
               "FIT_EXTRA": f"--config {tmp_path / 'tiny.toml'} --device cpu"}
        done = subprocess.run(["bash", str(SCRIPT), str(seed), "3", "600", start, new], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        assert "simulated: 3 shards" in done.stdout and "done" in done.stdout
        outs[new] = out
        if new == "tcn-a":  # the next call on another machine: only what came back, carried
            joined(out, "tcn-a-fp16.pt", carry / "tcn-a-fp16.pt")
            (WEIGHTS / "tcn-a-fp16.pt").unlink()

    for seed, new in zip(seeds, names):
        out = outs[new]
        assert (out / "progress.tgz").stat().st_size > 0
        weights = joined(out, f"{new}-fp16.pt", tmp_path / f"{new}.pt")
        if new != "tcn-a":
            assert md5(weights) == md5(WEIGHTS / f"{new}-fp16.pt")
        checkpoint = load_checkpoint(weights)
        assert checkpoint["model_kind"] == "tcn"
        assert all(v.dtype == torch.float16 for v in checkpoint["model_state"].values() if v.is_floating_point())
        if new == "tcn-c":
            assert not list(out.glob("shard_*")) and Path(f"/tmp/run-{seed}/out/test_shard.md5").is_file()
            continue
        with h5py.File(joined(out, "shard_00002.h5", tmp_path / f"test{seed}.h5")) as shard:
            assert shard["input_spikes"].shape == (2, 1278, 2000) and shard.attrs["master_seed"] == seed
    # call 1 scored its new TCN alone; calls 2 and 3 scored their start beside it and paired the two
    logs = {seed: sorted(p.name for p in Path(f"/tmp/run-{seed}/logs").glob("eval-*.log")) for seed in seeds}
    assert logs == {917: ["eval-tcn-a.log"], 918: ["eval-tcn-a.log", "eval-tcn-b.log"],
                    919: ["eval-tcn-b.log", "eval-tcn-c.log"]}
    assert not Path("/tmp/run-917/out/paired.json").exists()
    assert Path("/tmp/run-918/out/paired.json").is_file()  # (seed 919's two test simulations hold no spike: no AUC)
    assert "tcn-a [whole]" in Path("/tmp/run-918/logs/eval-tcn-a.log").read_text()  # from the carried weights
    for seed in seeds:
        shutil.rmtree(f"/tmp/run-{seed}", ignore_errors=True)
    for name in ("tcn-b", "tcn-c"):
        (WEIGHTS / f"{name}-fp16.pt").unlink()


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()
