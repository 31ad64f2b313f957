"""bench/tcn_fine_tune_call.sh as a dry run on the CPU: two chained self-contained calls, the second starting from the
weights the first left in /tmp/weights, each sending back its new fp16 weights and test shard in parts."""

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
def test_two_chained_calls_send_back_weights_and_test_shards(tmp_path, morphology_path):
    recipe = ["neuronio.toml", "recipes/one_session.toml", "recipes/tcn_small_batch.toml", "recipes/tcn_new_data.toml",
              "recipes/weight_average.toml"]  # the script's fit configs
    config = load_training_config([REPO / "configs" / name for name in recipe], "tcn")
    model = build_model("tcn", config.model)
    carry = tmp_path / "carry"
    carry.mkdir()
    save_checkpoint(carry / "tcn-start-fp16.pt", model_kind="tcn", model_config=model_config_of(model),
                    model_state={k: v.half() if v.is_floating_point() else v for k, v in model.state_dict().items()},
                    soma_transform=SomaTransform.of(config.data))
    (tmp_path / "small.toml").write_text("[dataset]\nsimulations_per_shard = 2\n[inputs]\nduration_ms = 2000\n")
    (tmp_path / "tiny.toml").write_text("[train.tcn]\nbatch_size = 4\nepochs = 1\nbatches_per_epoch = 3\n")
    for name in ("tcn-a", "tcn-b"):
        (WEIGHTS / f"{name}-fp16.pt").unlink(missing_ok=True)
    for seed in (917, 918):
        shutil.rmtree(f"/tmp/run-{seed}", ignore_errors=True)

    outs = []
    for seed, start, new in ((917, "tcn-start", "tcn-a"), (918, "tcn-a", "tcn-b")):
        out = tmp_path / f"out{seed}"
        env = {**os.environ, "SMALL": "1", "OUT": str(out), "PYTHON": sys.executable, "CARRY": str(carry),
               "L5PC_MORPHOLOGY": str(morphology_path), "SIM_BASE": f"configs/quick.toml {tmp_path / 'small.toml'}",
               "FIT_EXTRA": f"--config {tmp_path / 'tiny.toml'} --device cpu"}
        done = subprocess.run(["bash", str(SCRIPT), str(seed), "3", "600", start, new], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        assert "simulated: 3 shards" in done.stdout and "done" in done.stdout
        outs.append(out)

    for out, seed, new in ((outs[0], 917, "tcn-a"), (outs[1], 918, "tcn-b")):
        assert (out / "progress.tgz").stat().st_size > 0
        weights = joined(out, f"{new}-fp16.pt", tmp_path / f"{new}.pt")
        assert hashlib.md5(weights.read_bytes()).hexdigest() == hashlib.md5((WEIGHTS / f"{new}-fp16.pt").read_bytes()).hexdigest()
        checkpoint = load_checkpoint(weights)
        assert checkpoint["model_kind"] == "tcn"
        assert all(v.dtype == torch.float16 for v in checkpoint["model_state"].values() if v.is_floating_point())
        with h5py.File(joined(out, "shard_00002.h5", tmp_path / f"test{seed}.h5")) as shard:
            assert shard["input_spikes"].shape == (2, 1278, 2000) and shard.attrs["master_seed"] == seed
    # the second call started from the first call's weights, not from the carried ones
    assert "tcn-a [whole]" in (Path("/tmp/run-918/logs") / "eval-tcn-a.log").read_text()
    for seed in (917, 918):
        shutil.rmtree(f"/tmp/run-{seed}", ignore_errors=True)
    for name in ("tcn-a", "tcn-b"):
        (WEIGHTS / f"{name}-fp16.pt").unlink()
