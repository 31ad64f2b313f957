"""Inference: whole-simulation and windowed prediction, and the `predict` command end to end."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from surrogate.checkpoints import save_checkpoint
from surrogate.inference import predict_whole, predict_windowed, window_starts
from surrogate.registry import build_model, model_config_of
from surrogate.targets import PUBLISHED_SOMA_TRANSFORM, SomaTransform
from surrogate.tcn import TCN, TCNConfig

REPO = Path(__file__).resolve().parents[1]
NUM_INPUT = 1278


def random_input_spikes(n: int, steps: int, rate: float = 0.01, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, NUM_INPUT, steps)) < rate


class WindowProbe(torch.nn.Module):
    """A toy causal model whose output shows where its window started.

    Channel 0: running count of input spikes since the window start; channel 1: the step
    index inside the window, scaled as a soma output ((V + 67.7) * 0.1, so V = index - 67.7).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        count = x.sum(-1).cumsum(1) * 1e-3
        index = torch.arange(x.shape[1], dtype=x.dtype).expand(x.shape[0], -1) * 0.1
        return torch.stack([count, index], dim=-1)


def test_window_starts_follow_spec_7_3():
    starts = window_starts(6000, 500, 150)
    assert len(starts) == int(2 + (6000 - 500) / 350) == 17
    assert starts == [350 * k for k in range(17)]
    assert window_starts(400, 500, 150) == [0]
    assert window_starts(500, 500, 150) == [0]
    assert window_starts(501, 500, 150) == [0, 350]


def test_windowed_placement_equals_hand_written_loop():
    spikes = random_input_spikes(2, 6000, rate=0.002, seed=1)
    probe = WindowProbe()
    got_p, got_v = predict_windowed(probe, spikes, PUBLISHED_SOMA_TRANSFORM, window_ms=500, burn_in_ms=150,
                                    batch_size=5)

    # spec 7.3 written out: 17 windows of 500 ms, stride 350; the first fills [0, 500),
    # later ones [start + 150, start + 500); inputs past 6000 ms are zeros
    window, burn_in, steps = 500, 150, 6000
    stride = window - burn_in
    expected_p = np.full((2, steps), np.nan, dtype=np.float32)
    expected_v = np.full((2, steps), np.nan, dtype=np.float32)
    for i in range(2):
        for k in range(int(2 + (steps - window) / stride)):
            start = k * stride
            x = np.zeros((window, NUM_INPUT), dtype=np.float32)
            piece = spikes[i, :, start:start + window].T
            x[: len(piece)] = piece
            out = probe(torch.from_numpy(x)[None])[0].numpy()
            first = 0 if k == 0 else burn_in
            stop = min(start + window, steps)
            expected_p[i, start + first:stop] = 1 / (1 + np.exp(-out[first:stop - start, 0]))
            expected_v[i, start + first:stop] = out[first:stop - start, 1] / 0.1 - 67.7
    assert not np.isnan(expected_p).any()
    np.testing.assert_allclose(got_p, expected_p, rtol=1e-6)
    np.testing.assert_allclose(got_v, expected_v, rtol=1e-6, atol=1e-4)
    # the probe's voltage is its position in the window: 0..499 in the first, 150..499 later
    assert got_v[0, 499] == pytest.approx(499 - 67.7) and got_v[0, 500] == pytest.approx(150 - 67.7)


def test_windowed_equals_whole_for_memory_within_the_burn_in():
    """A TCN whose receptive field (151 ms) fits in the burn-in sees the same inputs either way."""
    torch.manual_seed(2)
    model = TCN(TCNConfig(depth=3, width=6, first_kernel_size=51, kernel_size=51, activation="silu"))
    assert model.config.receptive_field_ms == 151
    model.train()
    model(torch.rand(4, 300, NUM_INPUT).lt(0.02).float())  # non-trivial batch-norm statistics
    spikes = random_input_spikes(2, 1300, rate=0.02, seed=3)
    whole = predict_whole(model, spikes, PUBLISHED_SOMA_TRANSFORM, batch_size=2)
    windowed = predict_windowed(model, spikes, PUBLISHED_SOMA_TRANSFORM, batch_size=3)
    assert model.training  # the caller's mode is restored
    for a, b in zip(whole, windowed):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_predict_whole_matches_the_model_and_batching():
    torch.manual_seed(3)
    model = build_model("branch-elm", {"num_memory": 5}).eval()
    spikes = random_input_spikes(3, 120, rate=0.03, seed=4)
    p1, v1 = predict_whole(model, spikes, PUBLISHED_SOMA_TRANSFORM, batch_size=1)
    p3, v3 = predict_whole(model, spikes, PUBLISHED_SOMA_TRANSFORM, batch_size=3)
    np.testing.assert_allclose(p1, p3, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(v1, v3, rtol=1e-5, atol=1e-4)
    with torch.no_grad():
        out = model(torch.from_numpy(spikes).float().transpose(1, 2)).numpy()
    np.testing.assert_allclose(p3, 1 / (1 + np.exp(-out[..., 0])), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(v3, out[..., 1] * 10 - 67.7, rtol=1e-5, atol=1e-3)
    assert p3.dtype == v3.dtype == np.float32 and p3.shape == (3, 120)


# --------------------------------------------------------------------------- the command

def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipelines", "predict", *args],
                          cwd=REPO, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> tuple[Path, torch.nn.Module]:
    torch.manual_seed(5)
    model = build_model("branch-elm", {"num_memory": 4})
    path = save_checkpoint(tmp_path_factory.mktemp("run") / "checkpoint_best.pt", model_kind="branch-elm",
                           model_config=model_config_of(model),
                           soma_transform=PUBLISHED_SOMA_TRANSFORM, model_state=model.state_dict())
    return path, model.eval()


def test_predict_command_end_to_end(tmp_path, tiny_checkpoint):
    checkpoint, model = tiny_checkpoint
    spikes = random_input_spikes(3, 700, rate=0.02, seed=6)
    inputs = tmp_path / "inputs.h5"
    with h5py.File(inputs, "w") as f:
        f.create_dataset("input_spikes", data=spikes)
    out = tmp_path / "pred" / "pred.h5"
    result = run_cli("--checkpoint", str(checkpoint.parent), "--inputs", str(inputs), "--out", str(out),
                     "--device", "cpu", "--batch-size", "2")
    assert result.returncode == 0, result.stderr
    expected_p, expected_v = predict_whole(model, spikes, PUBLISHED_SOMA_TRANSFORM)
    with h5py.File(out, "r") as f:
        assert f["spike_probability"].shape == f["soma_voltage"].shape == (3, 700)
        assert f["spike_probability"].dtype == np.float32
        np.testing.assert_allclose(f["spike_probability"][()], expected_p, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(f["soma_voltage"][()], expected_v, rtol=1e-5, atol=1e-3)
        assert f.attrs["model_kind"] == "branch-elm"
        assert int(f.attrs["num_parameters"]) == sum(p.numel() for p in model.parameters() if p.requires_grad)
        assert f.attrs["checkpoint"].endswith("checkpoint_best.pt")
    assert [p.name for p in out.parent.iterdir()] == ["pred.h5"]  # no temporary file left

    windowed = tmp_path / "windowed.h5"
    result = run_cli("--checkpoint", str(checkpoint), "--inputs", str(inputs), "--out", str(windowed),
                     "--device", "cpu", "--windowed")
    assert result.returncode == 0, result.stderr
    expected_p, _ = predict_windowed(model, spikes, PUBLISHED_SOMA_TRANSFORM)
    with h5py.File(windowed, "r") as f:
        np.testing.assert_allclose(f["spike_probability"][()], expected_p, rtol=1e-5, atol=1e-6)
        assert "windowed" in f.attrs["mode"]


def test_predict_command_wrong_shape_is_exit_2(tmp_path, tiny_checkpoint):
    checkpoint, _ = tiny_checkpoint
    inputs = tmp_path / "wrong.h5"
    with h5py.File(inputs, "w") as f:
        f.create_dataset("input_spikes", data=np.zeros((2, 1000, 50), dtype=bool))  # 1000 rows, not 1278
    out = tmp_path / "pred.h5"
    result = run_cli("--checkpoint", str(checkpoint), "--inputs", str(inputs), "--out", str(out), "--device", "cpu")
    assert result.returncode == 2
    assert result.stderr.startswith("error:") and "1278" in result.stderr
    assert "Traceback" not in result.stderr
    assert not out.exists()


def test_predict_command_bad_checkpoint_is_exit_2(tmp_path):
    inputs = tmp_path / "inputs.h5"
    with h5py.File(inputs, "w") as f:
        f.create_dataset("input_spikes", data=np.zeros((1, NUM_INPUT, 20), dtype=bool))
    bogus = tmp_path / "bogus.pt"
    bogus.write_text("not a checkpoint")
    result = run_cli("--checkpoint", str(bogus), "--inputs", str(inputs), "--out", str(tmp_path / "p.h5"))
    assert result.returncode == 2 and "bogus.pt" in result.stderr and "Traceback" not in result.stderr


def test_predict_refuses_to_overwrite_unless_asked(tmp_path, tiny_checkpoint):
    """An existing --out, a dataset shard included, is kept unless --overwrite is given."""
    from test_data import write_synthetic_dataset

    checkpoint, model = tiny_checkpoint
    shard = write_synthetic_dataset(tmp_path / "data", n_shards=1, simulations_per_shard=1, duration_ms=300)[0]
    before = shard.read_bytes()
    for overwrite in ([], ["--overwrite"]):  # with --overwrite, the inputs would be replaced by their predictions
        result = run_cli("--checkpoint", str(checkpoint), "--inputs", str(shard), "--out", str(shard), "--device", "cpu",
                         *overwrite)
        assert result.returncode == 2 and "Traceback" not in result.stderr
        assert result.stderr.strip() == f"error: --out must differ from --inputs ({shard})"
        assert shard.read_bytes() == before

    out = tmp_path / "pred.h5"
    out.write_bytes(b"an earlier prediction")
    result = run_cli("--checkpoint", str(checkpoint), "--inputs", str(shard), "--out", str(out), "--device", "cpu")
    assert result.returncode == 2 and out.read_bytes() == b"an earlier prediction"
    result = run_cli("--checkpoint", str(checkpoint), "--inputs", str(shard), "--out", str(out), "--device", "cpu",
                     "--overwrite")
    assert result.returncode == 0, result.stderr
    with h5py.File(out, "r") as f:
        assert f["soma_voltage"].shape == (1, 300)


def test_predict_on_no_simulations_or_a_missing_file_is_exit_2(tmp_path, tiny_checkpoint):
    """An input_spikes of shape (0, 1278, T) used to write empty predictions and exit 0."""
    checkpoint, _ = tiny_checkpoint
    inputs, out = tmp_path / "empty.h5", tmp_path / "pred.h5"
    with h5py.File(inputs, "w") as f:
        f.create_dataset("input_spikes", data=np.zeros((0, NUM_INPUT, 50), dtype=bool))
    for given, message in ((inputs, r"empty.h5:input_spikes has shape (0, 1278, 50): no simulations"),
                           (tmp_path / "absent.h5", "input file not found: ")):
        result = run_cli("--checkpoint", str(checkpoint), "--inputs", str(given), "--out", str(out), "--device", "cpu")
        assert result.returncode == 2 and "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1 and message in result.stderr, result.stderr
        assert not out.exists()


def test_predict_decodes_with_the_checkpoints_soma_transform(tmp_path):
    """A model trained with another [data] voltage_bias_mV / voltage_scale predicts in that model's millivolts."""
    torch.manual_seed(2)
    model = build_model("tcn", {"depth": 2, "width": 4, "first_kernel_size": 5, "kernel_size": 3}).eval()
    transform = SomaTransform(voltage_cap_mV=-50.0, voltage_bias_mV=-72.0, voltage_scale=0.05)
    checkpoint = save_checkpoint(tmp_path / "run" / "checkpoint_best.pt", model_kind="tcn",
                                 model_config=model_config_of(model), soma_transform=transform,
                                 model_state=model.state_dict())
    spikes = random_input_spikes(2, 80, rate=0.05, seed=9)
    inputs = tmp_path / "inputs.h5"
    with h5py.File(inputs, "w") as f:
        f.create_dataset("input_spikes", data=spikes)
    out = tmp_path / "pred.h5"
    result = run_cli("--checkpoint", str(checkpoint), "--inputs", str(inputs), "--out", str(out), "--device", "cpu")
    assert result.returncode == 0, result.stderr
    with torch.no_grad():
        scaled = model(torch.from_numpy(spikes).float().transpose(1, 2))[..., 1].numpy()
    with h5py.File(out, "r") as f:
        np.testing.assert_allclose(f["soma_voltage"][()], scaled / 0.05 - 72.0, rtol=1e-5, atol=1e-3)
        assert json.loads(f["soma_voltage"].attrs["soma_transform"]) == transform.as_dict()


def test_predict_with_non_ascii_paths(tmp_path, tiny_checkpoint):
    checkpoint, model = tiny_checkpoint
    folder = tmp_path / "Modèle ü 模型"
    folder.mkdir()
    shutil.copy(checkpoint, folder / "checkpoint_best.pt")
    spikes = random_input_spikes(1, 120, rate=0.02, seed=3)
    inputs = folder / "entrées.h5"
    with h5py.File(inputs, "w") as f:
        f.create_dataset("input_spikes", data=spikes)
    out = folder / "prédiction.h5"
    result = run_cli("--checkpoint", str(folder), "--inputs", str(inputs), "--out", str(out), "--device", "cpu")
    assert result.returncode == 0, result.stderr
    expected_p, _ = predict_whole(model, spikes, PUBLISHED_SOMA_TRANSFORM)
    with h5py.File(out, "r") as f:
        np.testing.assert_allclose(f["spike_probability"][()], expected_p, rtol=1e-5, atol=1e-6)


def test_published_folder_with_an_empty_model_config_is_exit_2(tmp_path):
    folder = tmp_path / "published"
    folder.mkdir()
    (folder / "model_config.json").write_text("{}")
    torch.save({"mlp.network.0.weight": torch.zeros(2, 2)}, folder / "neuronio_best_model_state.pt")
    inputs = tmp_path / "inputs.h5"
    with h5py.File(inputs, "w") as f:
        f.create_dataset("input_spikes", data=np.zeros((1, NUM_INPUT, 20), dtype=bool))
    result = run_cli("--checkpoint", str(folder), "--inputs", str(inputs), "--out", str(tmp_path / "p.h5"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "model_config.json" in result.stderr and "num_memory" in result.stderr


def test_predict_on_a_full_disk_is_one_line_and_keeps_the_earlier_file(tmp_path, tiny_checkpoint, cli_on_a_full_disk):
    """Issue 9, item 4: a full disk while writing --out is exit 2 and one line; no partial file, nothing replaced."""
    checkpoint, _ = tiny_checkpoint
    inputs = tmp_path / "inputs.h5"
    with h5py.File(inputs, "w") as f:
        f.create_dataset("input_spikes", data=random_input_spikes(3, 700, rate=0.02, seed=4))
    out = tmp_path / "predictions" / "pred.h5"
    out.parent.mkdir()
    out.write_bytes(b"an earlier prediction")
    args = ["predict", "--checkpoint", str(checkpoint), "--inputs", str(inputs), "--out", str(out), "--device", "cpu",
            "--overwrite"]
    limit = 4096
    error = cli_on_a_full_disk(*args, max_file_bytes=limit)
    assert error.startswith(f"error: cannot write {out}: File too large; ") and "intact" in error, error
    assert out.read_bytes() == b"an earlier prediction"
    assert [p.name for p in out.parent.iterdir()] == ["pred.h5"]  # no temporary file left

    # the same command with room to write succeeds: the output is what did not fit
    result = run_cli(*args[1:])
    assert result.returncode == 0, result.stderr
    assert out.stat().st_size > limit
