"""Checkpoints: the published elmneuron models, the project format's round trip, clear errors."""

from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from simulation.errors import ConfigError, UserInputError
from surrogate.checkpoints import (CheckpointError, half_precision_checkpoint, inference_checkpoint, load_checkpoint,
                                  load_model, save_checkpoint)
from surrogate.registry import build_model, model_config_of
from surrogate.targets import PUBLISHED_SOMA_TRANSFORM, SomaTransform
from surrogate.elm import neuronio_routing, num_parameters

REPO = Path(__file__).resolve().parents[1]
PRETRAINED = Path(os.environ.get("L5PC_PRETRAINED_ELM", REPO.parent / "shared" / "pretrained" / "elmneuron"))
PUBLISHED = ["num_memory_20", "best_elm_neuron"]


@pytest.fixture(scope="module")
def pretrained_dir() -> Path:
    if not PRETRAINED.is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"published ELM checkpoints not found at {PRETRAINED}")
        pytest.skip(f"published ELM checkpoints not found at {PRETRAINED} (set $L5PC_PRETRAINED_ELM)")
    return PRETRAINED


def published_state(folder: Path) -> dict[str, np.ndarray]:
    state = torch.load(folder / "neuronio_best_model_state.pt", map_location="cpu", weights_only=True)
    return {k: v.numpy().astype(np.float64) if v.is_floating_point() else v.numpy() for k, v in state.items()}


def published_elm_numpy(state: dict, config: dict, x_signed: np.ndarray) -> np.ndarray:
    """The published ELM written straight from ABOUT.md, one step at a time, in float64.

    x_signed: (T, 1278) with +1 excitatory / -1 inhibitory spikes. Returns (T, 2).
    """
    dt = 1.0
    idx, mask = state["input_to_synapse_indices"], state["valid_indices_mask"]
    w_s = np.maximum(state["_proto_w_s"], 0.0)
    kappa_s = np.exp(-dt / state["tau_s"])
    lo, hi = config["memory_tau_min"], config["memory_tau_max"]
    tau_m = lo + (hi - lo) / (1.0 + np.exp(-state["_proto_tau_m"]))
    kappa_m = np.exp(-dt / tau_m)
    act = (lambda v: v / (1.0 + np.exp(-v))) if config.get("mlp_activation") == "silu" else (lambda v: np.maximum(v, 0.0))
    n_branch, per_branch = config["num_branch"], config["num_synapse_per_branch"]
    s = np.zeros(len(w_s))
    m = np.zeros(len(kappa_m))
    out = []
    for x_t in x_signed:
        synapse_input = x_t[idx] * mask
        s = kappa_s * s + w_s * synapse_input
        b = s.reshape(n_branch, per_branch).sum(axis=1)
        mlp_in = np.concatenate([b, kappa_m * m])
        hidden = act(state["mlp.network.0.weight"] @ mlp_in + state["mlp.network.0.bias"])
        z = state["mlp.network.2.weight"] @ hidden + state["mlp.network.2.bias"]
        delta_m = 1.7159 * np.tanh(2.0 / 3.0 * z)
        m = kappa_m * m + 5.0 * (1.0 - kappa_m) * delta_m
        out.append(state["w_y.weight"] @ m + state["w_y.bias"])
    return np.array(out)


@pytest.mark.parametrize("name", PUBLISHED)
def test_published_routing_equals_our_construction(pretrained_dir, name):
    state = published_state(pretrained_dir / name)
    indices, valid = neuronio_routing(1278, 45, 100)
    assert np.array_equal(indices.numpy(), state["input_to_synapse_indices"])
    assert np.array_equal(valid.numpy(), state["valid_indices_mask"])


@pytest.mark.parametrize("name", PUBLISHED)
def test_published_parameter_count(pretrained_dir, name):
    _, info = load_model(pretrained_dir / name)
    published = json.loads((pretrained_dir / name / "model_stats.json").read_text())["model_param_count"]
    assert info["num_parameters"] == published
    assert info["model_kind"] == "branch-elm"


@pytest.mark.parametrize("name", PUBLISHED)
def test_published_model_matches_independent_numpy(pretrained_dir, name):
    folder = pretrained_dir / name
    model, info = load_model(folder)
    config = json.loads((folder / "model_config.json").read_text())
    assert info["model_config"]["mlp_activation"] == config.get("mlp_activation", "relu")
    rng = np.random.default_rng(0)
    steps = 50
    spikes = rng.random((2, steps, 1278)) < 0.03  # denser than NeuronIO, to exercise every synapse
    with torch.no_grad():
        ours = model(torch.from_numpy(spikes).float()).numpy()
    sign = np.where(np.arange(1278) < 639, 1.0, -1.0)
    state = published_state(folder)
    for i in range(2):
        expected = published_elm_numpy(state, config, spikes[i] * sign)
        np.testing.assert_allclose(ours[i], expected, rtol=1e-4, atol=2e-5)
    assert np.abs(ours[:, 10:] - ours[:, :1]).max() > 0.05  # the input moves the output (no trivial pass)


def test_published_state_file_path_also_loads(pretrained_dir):
    model_a, _ = load_model(pretrained_dir / "num_memory_20")
    model_b, info = load_model(pretrained_dir / "num_memory_20" / "neuronio_best_model_state.pt")
    assert info["num_parameters"] == 8002
    for (name, a), (_, b) in zip(model_a.state_dict().items(), model_b.state_dict().items()):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("kind,config", [
    ("elm", {"num_memory": 4}),
    ("branch-elm", {"num_memory": 6, "learn_memory_tau": True}),
    ("tcn", {"depth": 2, "width": 6, "first_kernel_size": 5, "kernel_size": 3}),
])
def test_round_trip(tmp_path, kind, config):
    torch.manual_seed(1)
    model = build_model(kind, config)
    with torch.no_grad():  # move every parameter off its initial value, batch-norm statistics too
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    model.train()
    model(torch.rand(3, 40, 1278).lt(0.05).float())  # updates batch-norm running statistics
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.rand(1, 10, 1278).lt(0.05).float()).sum().backward()
    optimizer.step()
    path = save_checkpoint(
        tmp_path / "run" / "checkpoint_best.pt", model_kind=kind, model_config=model_config_of(model),
        soma_transform=PUBLISHED_SOMA_TRANSFORM,
        model_state=model.state_dict(), optimizer_state=optimizer.state_dict(), epoch=3, global_step=120,
        best_metric=np.float64(0.93), extra={"train_loss": [0.5, 0.4], "config_path": Path("configs/quick.toml")},
    )
    assert not any(p.name.startswith(".") for p in path.parent.iterdir())  # no temp file left behind
    raw = torch.load(path, map_location="cpu", weights_only=True)  # readable without trusting pickles
    assert raw["epoch"] == 3 and raw["best_metric"] == pytest.approx(0.93)
    loaded, info = load_model(tmp_path / "run")  # a run directory: its best checkpoint
    assert info["model_kind"] == kind and info["num_parameters"] == num_parameters(model)
    assert info["global_step"] == 120 and info["source"].endswith("checkpoint_best.pt")
    x = torch.rand(2, 70, 1278).lt(0.05).float()
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    restored = torch.optim.Adam(loaded.parameters(), lr=1e-3)
    restored.load_state_dict(load_checkpoint(path)["optimizer_state"])

    # the released form: the same model, without the training state, in a smaller file
    released = inference_checkpoint(path, tmp_path / "release" / "checkpoint_best.pt", extra={"note": "test"})
    assert released.stat().st_size < path.stat().st_size
    stripped = load_checkpoint(released)
    assert stripped["optimizer_state"] is None and stripped["extra"] == {"note": "test"} and stripped["epoch"] == 3
    again, again_info = load_model(released.parent)
    assert again_info["soma_transform"] == info["soma_transform"]
    with torch.no_grad():
        assert torch.equal(again(x), model(x))

    # the float16 form (the TCN's, to carry and commit): half the model's bytes, the training record kept, the same
    # model to float16's rounding
    half = half_precision_checkpoint(path, tmp_path / "half" / "checkpoint_best.pt")
    halved = load_checkpoint(half)
    assert halved["optimizer_state"] is None and halved["extra"] == load_checkpoint(path)["extra"]
    floats = [k for k, v in halved["model_state"].items() if v.is_floating_point()]
    assert floats and all(halved["model_state"][k].dtype == torch.float16 for k in floats)
    rounded, rounded_info = load_model(half)
    assert rounded_info["num_parameters"] == info["num_parameters"]
    assert all(v.dtype != torch.float16 for v in rounded.state_dict().values())  # loaded back into float32
    with torch.no_grad():
        torch.testing.assert_close(rounded(x), model(x), rtol=1e-2, atol=1e-2)


def test_run_directory_falls_back_to_last_checkpoint(tmp_path):
    model = build_model("elm", {"num_memory": 3})
    save_checkpoint(tmp_path / "checkpoint_last.pt", model_kind="elm", model_config=model_config_of(model),
                    soma_transform=PUBLISHED_SOMA_TRANSFORM,
                    model_state=model.state_dict())
    _, info = load_model(tmp_path)
    assert info["source"].endswith("checkpoint_last.pt")


def test_corrupt_checkpoint_is_a_clear_user_error(tmp_path):
    model = build_model("elm", {"num_memory": 3})
    good = save_checkpoint(tmp_path / "good.pt", model_kind="elm", model_config=model_config_of(model),
                           soma_transform=PUBLISHED_SOMA_TRANSFORM,
                           model_state=model.state_dict())
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"this is not a checkpoint\n")
    other = tmp_path / "plain_state.pt"
    torch.save({"weight": torch.zeros(2)}, other)
    for path in (truncated, garbage, other, tmp_path / "missing.pt", tmp_path / "empty_dir"):
        if path.name == "empty_dir":
            path.mkdir()
        with pytest.raises(CheckpointError) as err:
            load_model(path)
        assert isinstance(err.value, UserInputError)
        message = str(err.value)
        assert "\n" not in message and path.name in message


def test_checkpoint_with_mismatched_state_is_rejected(tmp_path):
    model = build_model("branch-elm", {"num_memory": 4})
    path = save_checkpoint(tmp_path / "bad.pt", model_kind="branch-elm", model_config={"num_memory": 5},
                           soma_transform=PUBLISHED_SOMA_TRANSFORM,
                           model_state=model.state_dict())
    with pytest.raises(CheckpointError, match="does not match"):
        load_model(path)


def test_unpicklable_content_is_refused_at_save(tmp_path):
    model = build_model("elm", {"num_memory": 3})
    with pytest.raises(TypeError):
        save_checkpoint(tmp_path / "x.pt", model_kind="elm", model_config=model_config_of(model),
                        soma_transform=PUBLISHED_SOMA_TRANSFORM,
                        model_state=model.state_dict(), extra={"fn": lambda: 0})
    assert not (tmp_path / "x.pt").exists()


def test_build_model_rejects_bad_configs():
    with pytest.raises(ConfigError):
        build_model("elm", {"num_memroy": 3})
    with pytest.raises(ConfigError):
        build_model("gru", {})
    assert build_model("branch-elm", {}).config.num_branch == 45


class RunsACommand:
    """What a malicious checkpoint pickles: unpickling it would call os.system (test_fit_task.py uses it too)."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def test_refused_checkpoints_say_what_was_refused_and_why(tmp_path):
    """A malicious pickle, random bytes and a truncated file each get their own full one-line reason."""
    marker = tmp_path / "payload_ran"
    command = f"touch {marker}"
    torch_pickle = tmp_path / "malicious.pt"
    torch.save({"model_state": {}, "hook": RunsACommand(command)}, torch_pickle)
    plain_pickle = tmp_path / "malicious.pkl"
    plain_pickle.write_bytes(pickle.dumps(RunsACommand(command), protocol=4))
    old_pickle = tmp_path / "malicious_protocol0.pt"
    old_pickle.write_bytes(pickle.dumps(RunsACommand(command), protocol=0))
    random_bytes = tmp_path / "random.pt"
    random_bytes.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    model = build_model("elm", {"num_memory": 3})
    good = save_checkpoint(tmp_path / "good.pt", model_kind="elm", model_config=model_config_of(model),
                           soma_transform=PUBLISHED_SOMA_TRANSFORM, model_state=model.state_dict())
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:1000])
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")

    messages = {}
    for path in (torch_pickle, plain_pickle, old_pickle, random_bytes, truncated, empty):
        with pytest.raises(CheckpointError) as err:
            load_model(path)
        messages[path.name] = str(err.value)
        assert "\n" not in messages[path.name] and path.name in messages[path.name]
    assert not marker.exists()  # no payload ran
    system = f"{os.system.__module__}.system"  # posix.system on Linux
    for name in ("malicious.pt", "malicious.pkl", "malicious_protocol0.pt"):
        assert "refused" in messages[name] and system in messages[name], messages[name]
    assert system not in messages["random.pt"] and "not a torch checkpoint" in messages["random.pt"]
    assert "truncated or corrupt" in messages["truncated.pt"]
    assert "empty file" in messages["empty.pt"]
    assert len(set(messages.values())) == len(messages)


def test_published_folder_with_a_bad_model_config_is_a_clear_error(tmp_path, pretrained_dir):
    folder = tmp_path / "num_memory_20"
    shutil.copytree(pretrained_dir / "num_memory_20", folder)
    for text, expected in (("{}", "missing num_input, num_output, num_memory"), ("[]", "expected a JSON object"),
                           ("{\"num_input\": 1278", "unreadable model config"),
                           ("{\"num_input\": \"many\", \"num_output\": 2, \"num_memory\": 20}", "invalid model config")):
        (folder / "model_config.json").write_text(text)
        with pytest.raises(CheckpointError, match=expected) as err:
            load_model(folder)
        assert "\n" not in str(err.value) and "model_config.json" in str(err.value)
    (folder / "model_config.json").write_bytes(b"\xff\xfe not utf-8")
    with pytest.raises(CheckpointError, match="unreadable model config"):
        load_model(folder)


def test_the_soma_transform_travels_with_the_checkpoint(tmp_path, pretrained_dir):
    model = build_model("elm", {"num_memory": 3})
    transform = SomaTransform(voltage_cap_mV=-50.0, voltage_bias_mV=-70.0, voltage_scale=0.2)
    path = save_checkpoint(tmp_path / "c.pt", model_kind="elm", model_config=model_config_of(model),
                           soma_transform=transform, model_state=model.state_dict())
    assert load_model(path)[1]["soma_transform"] == transform
    # published elmneuron models keep the published transform (spec 7.2)
    assert load_model(pretrained_dir / "num_memory_20")[1]["soma_transform"] == PUBLISHED_SOMA_TRANSFORM
    # a checkpoint without one (written before it was stored) decodes as it always did
    raw = torch.load(path, weights_only=True)
    del raw["soma_transform"]
    torch.save(raw, tmp_path / "old.pt")
    assert load_model(tmp_path / "old.pt")[1]["soma_transform"] == PUBLISHED_SOMA_TRANSFORM
    raw["soma_transform"] = {"voltage_scale": 0.0}
    torch.save(raw, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="soma_transform"):
        load_model(tmp_path / "bad.pt")


RELEASED = sorted(p for p in (Path(__file__).resolve().parents[1] / "checkpoints").glob("*/checkpoint_best.pt"))


@pytest.mark.parametrize("path", RELEASED, ids=[p.parent.name for p in RELEASED])
def test_released_checkpoints_load_and_predict_on_the_cpu(path):
    """checkpoints/<kind>-d<memory>/: inference only, its scores beside it, and it runs on the CPU."""
    scores = json.loads((path.parent / "scores.json").read_text())
    model, info = load_model(path.parent, device="cpu")
    kind, memory = path.parent.name.rsplit("-d", 1)
    assert info["model_kind"] == kind and info["model_config"]["num_memory"] == int(memory)
    assert info["num_parameters"] == scores["num_parameters"]
    assert load_checkpoint(path)["optimizer_state"] is None
    assert info["soma_transform"] == PUBLISHED_SOMA_TRANSFORM  # trained with the published target transform
    with torch.no_grad():
        out = model(torch.rand(1, 300, 1278).lt(0.01).float())
    assert out.shape == (1, 300, 2) and torch.isfinite(out).all()
    assert 0.9 < scores["test_sets"]["cvode"]["test_auc"] <= 1.0


def test_checkpoints_are_released():
    assert {p.parent.name for p in RELEASED} >= {"branch-elm-d20", "branch-elm-d100", "elm-d100"}


def test_half_precision_command_line(tmp_path):
    """bench/half_precision_checkpoint.py: a run directory in, float16 out; a missing source is one line, exit 2."""
    import subprocess
    import sys

    model = build_model("tcn", {"depth": 2, "width": 6, "first_kernel_size": 5, "kernel_size": 3})
    save_checkpoint(tmp_path / "run" / "checkpoint_best.pt", model_kind="tcn", model_config=model_config_of(model),
                    soma_transform=PUBLISHED_SOMA_TRANSFORM, model_state=model.state_dict(),
                    extra={"training_model_state": model.state_dict(), "training_time_s": 12.5})
    command = [sys.executable, "bench/half_precision_checkpoint.py"]
    done = subprocess.run(command + [str(tmp_path / "run"), str(tmp_path / "half.pt")], cwd=REPO,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert load_checkpoint(tmp_path / "half.pt")["extra"] == {"training_time_s": 12.5}  # no training copy
    missing = subprocess.run(command + [str(tmp_path / "nothing"), str(tmp_path / "out.pt")], cwd=REPO,
                             capture_output=True, text=True)
    assert missing.returncode == 2 and missing.stderr.strip() == f"error: {tmp_path / 'nothing'} not found"
    assert not (tmp_path / "out.pt").exists()
