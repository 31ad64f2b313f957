"""Training data: targets (spec 7.2), split by shard, random windows (range, determinism, worker count).

The shards here are tiny synthetic ones written with simulation.dataset.write_shard: a
made-up but learnable input -> output relationship, never a claim about the physics.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from simulation.dataset import shard_path, write_shard
from simulation.errors import ConfigError, DatasetError
from surrogate.config import DataConfig, load_training_config
from surrogate.data import (DeviceWindows, TrainingWindows, find_shards, load_split_arrays, pack_input_spikes, soma_target,
                            spike_target, split_shards, training_loader, unpack_input_spikes)

N_SEGMENTS = 639


# --------------------------------------------------------------------------- synthetic shards

def synthetic_simulation(rng: np.random.Generator, duration_ms: int):
    """(input_spikes (1278, T) bool, soma_voltage (T,), output_spikes (T,) bool), learnable.

    Inputs fire at a rate that changes every 100 ms; the "soma voltage" is a leaky sum of
    excitatory minus inhibitory input spikes (tau 10 ms), and an output spike marks each
    bin where it first crosses -57 mV. A made-up relationship for exercising the trainer.
    """
    blocks = -(-duration_ms // 100)
    rate = np.repeat(rng.uniform(0.0, 0.005, size=blocks), 100)[:duration_ms]  # spikes per ms per synapse
    input_spikes = rng.random((2 * N_SEGMENTS, duration_ms)) < rate[None, :]
    drive = input_spikes[:N_SEGMENTS].sum(0) - 0.5 * input_spikes[N_SEGMENTS:].sum(0)
    kappa = np.exp(-1.0 / 10.0)
    filtered = np.zeros(duration_ms)
    level = 0.0
    for t in range(duration_ms):
        level = kappa * level + drive[t]
        filtered[t] = level
    soma_voltage = (-75.0 + 2.0 * filtered).astype(np.float32)
    above = soma_voltage > -57.0
    output_spikes = above & ~np.r_[False, above[:-1]]
    soma_voltage[output_spikes] = 20.0  # a "spike" peak, clipped away by the target
    return input_spikes, soma_voltage, output_spikes


def write_synthetic_dataset(directory: Path, n_shards: int = 4, simulations_per_shard: int = 2,
                            duration_ms: int = 1500, seed: int = 0) -> list[Path]:
    """A dataset directory of synthetic shards in the project's shard schema."""
    segments = {
        "index": np.arange(N_SEGMENTS),
        "section": np.array([f"dend[{i // 3}]" for i in range(N_SEGMENTS)]),
        "x": np.full(N_SEGMENTS, 0.5),
        "region": np.array(["basal"] * 262 + ["apical"] * 377),
        "distance_um": np.linspace(10.0, 1000.0, N_SEGMENTS),
        "length_um": np.full(N_SEGMENTS, 20.0),
    }
    paths = []
    for shard in range(n_shards):
        sims = []
        for i in range(simulations_per_shard):
            index = shard * simulations_per_shard + i
            sims.append(synthetic_simulation(np.random.default_rng([seed, index]), duration_ms))
        inputs, soma, spikes = (np.stack(column) for column in zip(*sims))
        paths.append(write_shard(
            shard_path(directory, shard),
            input_spikes=inputs, soma_voltage=soma, output_spikes=spikes,
            output_spike_times=[np.flatnonzero(s) + 1.0 for s in spikes],
            nexus_voltage=soma, simulation_index=np.arange(simulations_per_shard) + shard * simulations_per_shard,
            segments=segments,
            attrs={"config": {"synthetic": True}, "master_seed": seed, "shard_index": shard, "created_by": "simulate",
                   "neuron_version": "none (synthetic test data)", "mechanisms_sha256": "-", "morphology_sha256": "-"},
            compression_level=1,
        ))
    return paths


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("synthetic_shards")
    write_synthetic_dataset(directory, n_shards=4, simulations_per_shard=2, duration_ms=1500)
    return directory


SMALL = DataConfig(window_ms=200, burn_in_ms=50, ignore_first_ms=300, simulations_per_load=3, load_fraction=0.5)


# --------------------------------------------------------------------------- targets

def test_soma_target_is_clipped_biased_and_scaled():
    voltage = np.array([-80.0, -67.7, -60.0, -55.0, -40.0, 30.0])
    expected = np.array([(-80 + 67.7) * 0.1, 0.0, (-60 + 67.7) * 0.1, (-55 + 67.7) * 0.1, 1.27, 1.27])
    np.testing.assert_allclose(soma_target(voltage, DataConfig()), expected, atol=1e-6)
    # configurable constants
    custom = DataConfig(voltage_cap_mV=-50.0, voltage_bias_mV=-70.0, voltage_scale=0.5)
    np.testing.assert_allclose(soma_target(np.array([-80.0, -40.0]), custom), [-5.0, 10.0], atol=1e-6)
    assert soma_target(voltage, DataConfig()).dtype == np.float32


def test_spike_target_is_the_stored_raster():
    raster = np.array([0, 1, 0, 0, 1], dtype=bool)
    target = spike_target(raster)
    assert target.dtype == np.float32
    np.testing.assert_array_equal(target, [0, 1, 0, 0, 1])


# --------------------------------------------------------------------------- split by shard

def test_split_by_shard_has_no_overlap(tmp_path):
    paths = [tmp_path / f"shard_{i:05d}.h5" for i in (5, 0, 3, 1, 4, 2)]
    split = split_shards(paths, DataConfig(valid_shards=2, test_shards=1))
    names = {k: [p.name for p in v] for k, v in split.items()}
    assert names == {"train": ["shard_00000.h5", "shard_00001.h5", "shard_00002.h5"],
                     "valid": ["shard_00003.h5", "shard_00004.h5"], "test": ["shard_00005.h5"]}
    assert not set(names["train"]) & set(names["valid"]) and not set(names["valid"]) & set(names["test"])


def test_split_by_shard_needs_enough_shards(tmp_path):
    paths = [tmp_path / f"shard_{i:05d}.h5" for i in range(2)]
    with pytest.raises(DatasetError, match="at least 3"):
        split_shards(paths, DataConfig(valid_shards=1, test_shards=1))
    with pytest.raises(DatasetError, match="twice"):
        split_shards([paths[0], paths[0], paths[1]], DataConfig(valid_shards=1, test_shards=0))


def test_split_keeps_every_simulation_in_one_split(dataset_dir):
    split = split_shards(find_shards(dataset_dir), DataConfig())
    seen = {}
    for name, paths in split.items():
        arrays = load_split_arrays(paths)
        for shard, index in zip(arrays.shards, arrays.indices):
            assert (shard, index) not in seen
            seen[shard, index] = name
    assert len(seen) == 8 and set(seen.values()) == {"train", "valid", "test"}


def test_missing_data_dir_is_a_clear_error(tmp_path):
    with pytest.raises(DatasetError, match="data directory not found"):
        find_shards(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no shards"):
        find_shards(tmp_path / "empty")


# --------------------------------------------------------------------------- windows

@pytest.mark.parametrize("num_inputs", [1278, 13, 8])
def test_bit_packing_round_trips(num_inputs):
    raster = np.random.default_rng(num_inputs).random((num_inputs, 50)) < 0.3  # (inputs, T) as stored
    packed = pack_input_spikes(raster)
    assert packed.shape == (50, -(-num_inputs // 8)) and packed.dtype == np.uint8
    unpacked = unpack_input_spikes(torch.from_numpy(packed), num_inputs)
    assert unpacked.dtype == torch.float32
    np.testing.assert_array_equal(unpacked.numpy(), raster.T.astype(np.float32))


def _collect(dataset: TrainingWindows, workers: int = 0):
    loader = training_loader(dataset, pin_memory=False) if workers == 0 else torch.utils.data.DataLoader(
        dataset, batch_size=None, num_workers=workers)
    return [tuple(t.clone() for t in batch) for batch in loader]


def test_windows_come_from_the_right_range(dataset_dir):
    """Each window equals the stored simulation at a start in [ignore_first_ms, T - window_ms)."""
    paths = split_shards(find_shards(dataset_dir), SMALL)["train"]
    arrays = load_split_arrays(paths)
    windows = TrainingWindows(paths, SMALL, batch_size=4, batches_per_epoch=30, seed=3)
    # a fingerprint per time bin locates each window in the stored simulations
    weights = np.random.default_rng(0).random(1278)
    fingerprints = np.einsum("kit,i->kt", arrays.input_spikes.astype(np.float64), weights)
    starts = []
    for packed, spikes, soma in _collect(windows):
        assert packed.shape == (4, 200, 160) and packed.dtype == torch.uint8  # bit-packed until the device
        inputs = unpack_input_spikes(packed, windows.num_inputs)
        assert inputs.shape == (4, 200, 1278) and inputs.dtype == torch.float32
        assert spikes.shape == soma.shape == (4, 200)
        for b in range(4):
            window = inputs[b].numpy().T.astype(bool)  # (1278, 200)
            print_ = window.astype(np.float64).T @ weights
            matches = [(k, s) for k, s in zip(*np.nonzero(np.isclose(fingerprints, print_[0])))
                       if s + 200 <= arrays.duration_ms and np.allclose(fingerprints[k, s:s + 200], print_)]
            assert len(matches) >= 1
            k, start = matches[0]
            np.testing.assert_array_equal(arrays.input_spikes[k, :, start:start + 200], window)
            starts.append(start)
            np.testing.assert_array_equal(spikes[b].numpy(), arrays.output_spikes[k, start:start + 200])
            np.testing.assert_allclose(soma[b].numpy(), soma_target(arrays.soma_voltage[k, start:start + 200], SMALL))
    assert min(starts) >= 300 and max(starts) < 1500 - 200
    assert max(starts) - min(starts) > 500  # spread over the allowed range


def test_windows_are_deterministic_given_the_seed(dataset_dir):
    paths = split_shards(find_shards(dataset_dir), SMALL)["train"]

    def epoch_batches(seed, first_epoch=0, last_epoch=2):
        return _collect(TrainingWindows(paths, SMALL, 4, 5, seed, first_epoch=first_epoch, last_epoch=last_epoch))

    a, b, c = epoch_batches(1), epoch_batches(1), epoch_batches(2)
    assert len(a) == 10
    assert all(torch.equal(x, y) for batch_a, batch_b in zip(a, b) for x, y in zip(batch_a, batch_b))
    assert not all(torch.equal(x[0], y[0]) for x, y in zip(a, c))
    # epochs differ from each other, and epoch 1 alone (a resumed run) is the same as within a longer run
    assert not torch.equal(a[0][0], a[5][0])
    resumed = epoch_batches(1, first_epoch=1, last_epoch=2)
    assert all(torch.equal(x[0], y[0]) for x, y in zip(a[5:], resumed))


def test_windows_do_not_depend_on_the_worker_count(dataset_dir):
    config = DataConfig(window_ms=200, burn_in_ms=50, ignore_first_ms=300, simulations_per_load=2,
                        load_fraction=0.3, streams=2)
    paths = split_shards(find_shards(dataset_dir), config)["train"]

    def run(workers):
        return _collect(TrainingWindows(paths, config, 3, 7, seed=5, last_epoch=2), workers)

    in_process, two_workers = run(0), run(2)
    assert len(in_process) == len(two_workers) == 14
    for x, y in zip(in_process, two_workers):
        assert all(torch.equal(a, b) for a, b in zip(x, y))


def test_simulations_are_decompressed_once_when_they_fit_the_cache(dataset_dir):
    """Loads of 2 of the 4 training simulations, redrawn every few batches: each is read once."""
    config = DataConfig(window_ms=200, burn_in_ms=50, ignore_first_ms=300, simulations_per_load=2, load_fraction=0.2)
    paths = split_shards(find_shards(dataset_dir), config)["train"]
    windows = TrainingWindows(paths, config, 4, 20, seed=0, last_epoch=3)
    assert windows.batches_per_load(windows.simulations[:2]) == 1  # a fresh load for every batch
    assert len(_collect(windows)) == 60
    assert windows.cache.reads == 4
    small = DataConfig(window_ms=200, burn_in_ms=50, ignore_first_ms=300, simulations_per_load=2, load_fraction=0.2,
                       cache_mb=0)  # nothing kept beyond the current load: simulations are read again
    windows = TrainingWindows(paths, small, 4, 20, seed=0, last_epoch=3)
    assert len(_collect(windows)) == 60 and windows.cache.reads > 4


def test_windows_reject_too_short_simulations(dataset_dir):
    paths = split_shards(find_shards(dataset_dir), SMALL)["train"]
    with pytest.raises(DatasetError, match="too short"):
        TrainingWindows(paths, DataConfig(window_ms=1000, ignore_first_ms=500), 4, 5, 0)


def test_device_windows_are_the_stored_windows_they_name(dataset_dir):
    """windows_on_device: each window is the stored simulation at the (simulation, start) epoch_windows names."""
    config = DataConfig(window_ms=200, burn_in_ms=50, ignore_first_ms=300, windows_on_device=True)
    paths = split_shards(find_shards(dataset_dir), config)["train"]
    arrays = load_split_arrays(paths)
    windows = DeviceWindows(paths, config, batch_size=4, batches_per_epoch=6, seed=3, device=torch.device("cpu"),
                            last_epoch=2)
    assert windows.num_simulations == arrays.num_simulations == 4 and windows.num_inputs == 1278
    batches = list(windows)
    assert len(batches) == len(windows) == 12
    for epoch in range(2):
        which, starts = windows.epoch_windows(epoch)
        assert which.shape == starts.shape == (6, 4)
        assert starts.min() >= 300 and starts.max() < 1500 - 200
        for i in range(6):
            packed, spikes, soma = batches[epoch * 6 + i]
            assert packed.shape == (4, 200, 160) and packed.dtype == torch.uint8
            inputs = unpack_input_spikes(packed, 1278).numpy().astype(bool)
            for b in range(4):
                k, start = which[i, b], starts[i, b]
                np.testing.assert_array_equal(inputs[b].T, arrays.input_spikes[k, :, start:start + 200])
                np.testing.assert_array_equal(spikes[b].numpy(), arrays.output_spikes[k, start:start + 200])
                np.testing.assert_allclose(soma[b].numpy(), soma_target(arrays.soma_voltage[k, start:start + 200],
                                                                        config))
    assert len(set(zip(*(a.ravel() for a in windows.epoch_windows(0))))) > 20  # spread, not one window repeated
    windows.close()


def test_device_windows_do_not_depend_on_reader_processes_and_resume_by_epoch(dataset_dir):
    paths = split_shards(find_shards(dataset_dir), SMALL)["train"]

    def batches(workers, seed=1, first_epoch=0):
        config = DataConfig(window_ms=200, burn_in_ms=50, ignore_first_ms=300, loader_workers=workers, streams=2,
                            windows_on_device=True)
        return list(DeviceWindows(paths, config, 4, 5, seed, torch.device("cpu"), first_epoch=first_epoch,
                                  last_epoch=2))

    a, b, other_seed, resumed = batches(0), batches(2), batches(0, seed=2), batches(0, first_epoch=1)
    assert all(torch.equal(x, y) for batch_a, batch_b in zip(a, b) for x, y in zip(batch_a, batch_b))
    assert not all(torch.equal(x[0], y[0]) for x, y in zip(a, other_seed))
    assert all(torch.equal(x[0], y[0]) for x, y in zip(a[5:], resumed))  # epoch 1 alone = epoch 1 of a longer run


def test_device_windows_honour_max_train_simulations_and_reject_short_simulations(dataset_dir):
    paths = split_shards(find_shards(dataset_dir), SMALL)["train"]
    config = DataConfig(window_ms=200, burn_in_ms=50, ignore_first_ms=300, max_train_simulations=3)
    windows = DeviceWindows(paths, config, 2, 3, 0, torch.device("cpu"))
    assert windows.num_simulations == 3 and windows.epoch_windows(0)[0].max() < 3
    with pytest.raises(DatasetError, match="too short"):
        DeviceWindows(paths, DataConfig(window_ms=1000, ignore_first_ms=500), 4, 5, 0, torch.device("cpu"))


# --------------------------------------------------------------------------- config

def test_config_typos_name_the_key(tmp_path):
    config = tmp_path / "c.toml"
    config.write_text("[data]\nwindow_ms = 500\nwindwo_ms = 3\n")
    with pytest.raises(ConfigError, match="windwo_ms"):
        load_training_config(config, "elm")
    config.write_text("[train]\nbatch_size = 8\n[train.tcn]\nlearning_rat = 0.1\n")
    with pytest.raises(ConfigError, match="learning_rat"):
        load_training_config(config, "elm")  # a typo in another model's table still fails
    config.write_text("[tcn]\ndepht = 3\n")
    with pytest.raises(ConfigError, match="depht"):
        load_training_config(config, "elm")
    config.write_text("[data]\nloader_workers = 3\nstreams = 4\n")
    with pytest.raises(ConfigError, match="divide"):
        load_training_config(config, "elm")
    with pytest.raises(ConfigError, match="unknown model"):
        load_training_config(config, "gru")


def test_config_per_model_overrides(tmp_path):
    config = tmp_path / "c.toml"
    config.write_text("[train]\nbatch_size = 32\nepochs = 3\n[train.branch_elm]\nbatch_size = 8\n"
                      "[branch_elm]\nnum_memory = 7\n[elm]\nnum_memory = 9\n")
    elm, branch = load_training_config(config, "elm"), load_training_config(config, "branch-elm")
    assert (elm.train.batch_size, branch.train.batch_size) == (32, 8)
    assert branch.train.epochs == 3
    assert (elm.model.num_memory, elm.model.num_branch) == (9, 0)
    assert (branch.model.num_memory, branch.model.num_branch, branch.model.num_synapse_per_branch) == (7, 45, 100)


def test_configs_layer_key_by_key(tmp_path):
    """`--config base --config overlay`: the overlay's keys win, [train.<model>] included; the rest stays."""
    base, overlay = tmp_path / "base.toml", tmp_path / "overlay.toml"
    base.write_text("[data]\nwindow_ms = 400\n[train]\nbatch_size = 8\nepochs = 35\nlearning_rate = 0.0005\n"
                    "[train.branch_elm]\nepochs = 20\nbatches_per_epoch = 50\n[branch_elm]\nnum_memory = 20\n")
    overlay.write_text("[train]\nepochs = 4\n[train.branch_elm]\nbatch_size = 64\nlearning_rate = 0.002\n")
    config = load_training_config([base, overlay], "branch-elm")
    assert config.data.window_ms == 400 and config.model.num_memory == 20
    assert (config.train.batch_size, config.train.learning_rate, config.train.batches_per_epoch) == (64, 0.002, 50)
    assert config.train.epochs == 20  # the base's [train.branch_elm] still overrides the overlay's [train]
    assert load_training_config([base, overlay], "elm").train.epochs == 4
    overlay.write_text("[trian]\nepochs = 4\n")
    with pytest.raises(ConfigError, match="overlay.toml: unknown table \\[trian\\]"):
        load_training_config([base, overlay], "elm")
    overlay.write_text("[train.branch_elm]\nbatch_sise = 64\n")
    with pytest.raises(ConfigError, match="batch_sise"):
        load_training_config([base, overlay], "branch-elm")


@pytest.mark.parametrize("name", ["quick.toml", "neuronio.toml"])
def test_project_configs_load(name):
    root = Path(__file__).resolve().parents[1]
    for kind in ("elm", "branch-elm", "tcn", "lstm"):
        config = load_training_config(root / "configs" / name, kind)
        assert config.data.window_ms == 500 and config.data.burn_in_ms == 150
        assert config.train.spike_loss_weight == config.train.voltage_loss_weight == 0.5
    if name == "neuronio.toml":  # the published TCN recipe: Nadam, 1e-4 stepping down to 1e-6, spike 1 -> 9, voltage 2 -> 0.3
        tcn = load_training_config(root / "configs" / name, "tcn")
        assert (tcn.train.optimizer, tcn.train.lr_schedule, tcn.model.spike_bias_init) == ("nadam", "step", -2.0)
        assert tcn.train.lr_steps[0] == (1, 1e-4) and tcn.train.lr_steps[-1][1] == 1e-6
        assert tcn.train.loss_weights(1) == (1.0, 2.0) and tcn.train.loss_weights(tcn.train.epochs) == (9.0, 0.3)
        assert load_training_config(root / "configs" / name, "lstm").model.hidden_size == 150


def test_recipe_overlays_load_on_the_neuronio_config():
    root = Path(__file__).resolve().parents[1]
    recipes = sorted((root / "configs" / "recipes").glob("*.toml"))
    assert recipes
    for recipe in recipes:
        for kind in ("elm", "branch-elm", "tcn", "lstm"):
            layered = load_training_config([root / "configs" / "neuronio.toml", recipe], kind)
            base = load_training_config(root / "configs" / "neuronio.toml", kind).data
            # a recipe may change how windows reach the model, never which windows are legal or the targets
            how = {"windows_on_device", "loader_workers", "prefetch"}
            assert {k: v for k, v in vars(layered.data).items() if k not in how} == \
                {k: v for k, v in vars(base).items() if k not in how}


def test_model_variants_load_on_the_neuronio_config():
    """configs/models/KIND-VARIANT.toml (bench/neuronio_scale.sh's MODELS): a model table for KIND."""
    root = Path(__file__).resolve().parents[1]
    variants = sorted((root / "configs" / "models").glob("*.toml"))
    assert variants
    for variant in variants:
        kind = variant.stem.rsplit("-", 1)[0]
        layered = load_training_config([root / "configs" / "neuronio.toml", variant], kind)
        assert layered.model != load_training_config(root / "configs" / "neuronio.toml", kind).model
