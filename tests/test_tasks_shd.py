"""SHD-Adding: the pair lists, binning, labels, the held-out validation samples, and SHD files in the wrong shape."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch

from common.errors import ConfigError, UserInputError
from common.files import file_sha256
from surrogate.tasks import TASKS, open_split, prepare_task, task_settings
from surrogate.tasks.shd import bin_sample, holdout
from test_common import damage_hdf5_groups

N_TRAIN, N_TEST = 40, 12


def write_shd(path, n, seed, times_dtype=np.float16, **replace):
    """A small SHD file in the official layout: spikes/times and spikes/units ragged per sample, labels 0..19."""
    rng = np.random.default_rng(seed)
    times, units = [], []
    for _ in range(n):
        k = int(rng.integers(0, 300))
        times.append(np.sort(rng.uniform(0, 1.3, k)).astype(times_dtype))  # some spikes after 1 s, dropped
        units.append(rng.integers(0, 700, k).astype(np.uint16))
    labels = (np.arange(n) % 20).astype(np.uint8)
    with h5py.File(path, "w") as f:
        spikes = f.create_group("spikes")
        if "times" not in replace:
            t = spikes.create_dataset("times", (n,), dtype=h5py.vlen_dtype(np.dtype(times_dtype)))
            for i, v in enumerate(times):
                t[i] = v
        if "units" not in replace:
            u = spikes.create_dataset("units", (n,), dtype=h5py.vlen_dtype(np.dtype(np.uint16)))
            for i, v in enumerate(units):
                u[i] = v
        for name, value in replace.items():
            if value is not None:
                spikes.create_dataset(name, data=value)
        f.create_dataset("labels", data=labels)
        f.create_group("extra").create_dataset("speaker", data=np.zeros(n, np.uint8))
    return times, units, labels


@pytest.fixture(scope="module")
def shd_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("shd")
    write_shd(d / "shd_train.h5", N_TRAIN, 1)
    write_shd(d / "shd_test.h5", N_TEST, 2)
    return d


def settings(shd_dir, **kw):
    return dict({"shd_dir": str(shd_dir), "train_pairs": 64, "valid_pairs": 16, "test_pairs": 16, "seed": 5}, **kw)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, shd_dir):
    data_dir = tmp_path_factory.mktemp("tasks")
    prepare_task("shd-adding", data_dir, settings(shd_dir))
    return data_dir


def test_spec_and_defaults():
    spec = TASKS["shd-adding"]
    assert (spec.input_kind, spec.input_size, spec.num_classes, spec.seq_len) == ("spikes", 700, 19, 1000)
    s = task_settings("shd-adding", {"shd_dir": "/x"})
    assert s.bin_ms == 2.0 and s.bins_per_digit == 500


def test_binning():
    times = np.array([0.0, 0.0019, 0.002, 0.9999, 1.0, 1.2])
    units = np.array([3, 3, 699, 0, 5, 6])
    counts = bin_sample(times, units, 2.0, 500)
    assert counts.shape == (500, 700) and counts.dtype == np.float32
    assert counts[0, 3] == 2 and counts[1, 699] == 1 and counts[499, 0] == 1
    assert counts.sum() == 4  # spikes at and after 1 s are dropped


def test_items_are_two_binned_digits_and_their_sum(prepared, shd_dir):
    train_times, train_units, train_labels = write_shd(shd_dir / "copy.h5", N_TRAIN, 1)
    ds = open_split("shd-adding", prepared, "train")
    assert len(ds) == 64 and ds.seq_len == 1000
    for i in (0, 7, 63):
        item = ds[i]
        assert item["inputs"].dtype == torch.float32 and item["inputs"].shape == (1000, 700)
        a, b = int(ds.first[i]), int(ds.second[i])
        expected = np.concatenate([bin_sample(train_times[a], train_units[a], 2.0, 500),
                                   bin_sample(train_times[b], train_units[b], 2.0, 500)])
        assert np.array_equal(item["inputs"].numpy(), expected)
        assert item["label"] == train_labels[a] % 10 + train_labels[b] % 10 and item["length"] == 1000
    labels = np.concatenate([open_split("shd-adding", prepared, s).labels for s in ("train", "valid", "test")])
    assert labels.min() >= 0 and labels.max() <= 18
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=3)))
    assert batch["inputs"].shape == (3, 1000, 700)


def test_validation_is_held_out_of_training(prepared):
    train, valid = open_split("shd-adding", prepared, "train"), open_split("shd-adding", prepared, "valid")
    used_train = set(train.first) | set(train.second)
    used_valid = set(valid.first) | set(valid.second)
    assert not used_train & used_valid
    s = task_settings("shd-adding", {"shd_dir": "/x", "seed": 5})
    pools = holdout(N_TRAIN, s)
    assert used_valid <= set(pools["valid"]) and used_train <= set(pools["train"]) and pools["valid"].size == 4
    test = open_split("shd-adding", prepared, "test")
    assert max(max(test.first), max(test.second)) < N_TEST and test.source.name == "shd_test.h5"


def test_seeded_and_bin_size(tmp_path, prepared, shd_dir):
    prepare_task("shd-adding", tmp_path / "a", settings(shd_dir))
    for split in ("train", "valid", "test"):
        assert np.array_equal(open_split("shd-adding", tmp_path / "a", split).first,
                              open_split("shd-adding", prepared, split).first)
    prepare_task("shd-adding", tmp_path / "b", settings(shd_dir, bin_ms=4.0, seed=6))
    ds = open_split("shd-adding", tmp_path / "b", "valid")
    assert ds[0]["inputs"].shape == (500, 700)
    assert not np.array_equal(ds.first, open_split("shd-adding", prepared, "valid").first)


def test_rerun_keeps_the_index_and_follows_moved_files(tmp_path, shd_dir):
    prepare_task("shd-adding", tmp_path, settings(shd_dir))
    digest = file_sha256(tmp_path / "shd-adding" / "train.h5")
    prepare_task("shd-adding", tmp_path, settings(shd_dir))
    assert file_sha256(tmp_path / "shd-adding" / "train.h5") == digest
    damage_hdf5_groups(tmp_path / "shd-adding" / "train.h5")  # a damaged index is written again, not a traceback
    prepare_task("shd-adding", tmp_path, settings(shd_dir))
    assert file_sha256(tmp_path / "shd-adding" / "train.h5") == digest
    moved = tmp_path / "moved"
    moved.mkdir()
    for name in ("shd_train.h5", "shd_test.h5"):
        (moved / name).write_bytes((shd_dir / name).read_bytes())
    prepare_task("shd-adding", tmp_path, settings(moved))
    ds = open_split("shd-adding", tmp_path, "train")
    assert ds.source == (moved / "shd_train.h5").resolve()
    (moved / "shd_train.h5").unlink()
    with pytest.raises(UserInputError, match=r"shd_train\.h5, is gone or changed: prepare again with --shd-dir"):
        open_split("shd-adding", tmp_path, "train")


@pytest.mark.parametrize("problem, damage, message", [
    ("missing", lambda p: p.unlink(), r"SHD file not found: .*shd_train\.h5 \(download"),
    ("truncated", lambda p: p.write_bytes(p.read_bytes()[:2000]), r"shd_train\.h5: not a readable HDF5 file \(truncated"),
    ("damaged groups", damage_hdf5_groups, r"shd_train\.h5: cannot read SHD file \(corrupt\?\)"),
    ("no units", lambda p: write_shd(p, 5, 0, units=None), r"shd_train\.h5: not in the SHD layout: no dataset 'spikes/units'"),
    ("dense times", lambda p: write_shd(p, 5, 0, times=np.zeros((5, 10))), r"spikes/times has shape \(5, 10\)"),
    ("flat times", lambda p: write_shd(p, 5, 0, times=np.zeros(5)), r"spikes/times is not a ragged"),
])
def test_bad_shd_files_are_one_line_errors(tmp_path, shd_dir, problem, damage, message):
    bad = tmp_path / "bad"
    bad.mkdir()
    for name in ("shd_train.h5", "shd_test.h5"):
        (bad / name).write_bytes((shd_dir / name).read_bytes())
    damage(bad / "shd_train.h5")
    with pytest.raises(UserInputError, match=message) as err:
        prepare_task("shd-adding", tmp_path / "out", settings(bad))
    assert "\n" not in str(err.value)


def test_units_out_of_range_and_no_directory(tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    with h5py.File(bad / "shd_train.h5", "w") as f:
        t = f.create_dataset("spikes/times", (2,), dtype=h5py.vlen_dtype(np.float32))
        u = f.create_dataset("spikes/units", (2,), dtype=h5py.vlen_dtype(np.uint16))
        t[0], t[1] = np.array([0.1], np.float32), np.array([0.2], np.float32)
        u[0], u[1] = np.array([3], np.uint16), np.array([700], np.uint16)
        f.create_dataset("labels", data=np.array([1, 2], np.uint8))
    with pytest.raises(UserInputError, match="sample 1 has units outside 0..699"):
        prepare_task("shd-adding", tmp_path / "out", settings(bad))
    with pytest.raises(UserInputError, match="needs the SHD files: .*--shd-dir"):
        prepare_task("shd-adding", tmp_path / "out", {})
    with pytest.raises(UserInputError, match="SHD directory not found"):
        prepare_task("shd-adding", tmp_path / "out", {"shd_dir": str(tmp_path / "nowhere")})
    with pytest.raises(ConfigError, match="multiple of bin_ms"):
        task_settings("shd-adding", {"bin_ms": 3.0})
