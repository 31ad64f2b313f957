"""LRA ListOps generator: LRA's statistics, labels, determinism across chunkings and workers, resume, the split files."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch

from common.errors import ConfigError, DatasetError, UserInputError
from common.files import file_sha256
from surrogate.tasks import TASKS, open_split, prepare_task, task_settings
from surrogate.tasks.listops import (
    CLOSE_ID,
    VOCAB_SIZE,
    VOCABULARY,
    DuplicateCheck,
    Generator,
    evaluate,
    to_text,
)
from surrogate.tasks.settings import ListOpsSettings
from test_common import damage_hdf5_groups

SMALL = {"train_size": 30, "valid_size": 8, "test_size": 8, "chunk_size": 12, "seed": 3}


@pytest.fixture(scope="module")
def listops_dir(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("tasks")
    prepare_task("listops", data_dir, SMALL)
    return data_dir


def test_spec_matches_the_generator():
    spec = TASKS["listops"]
    assert (spec.input_kind, spec.input_size, spec.num_classes, spec.seq_len) == ("tokens", VOCAB_SIZE, 10, 2000)
    assert VOCABULARY[0] == "<pad>" and set(VOCABULARY[1:]) == {*"0123456789", "[MIN", "[MAX", "[MED", "[SM", "]"}
    s = ListOpsSettings()
    assert (s.train_size, s.valid_size, s.test_size, s.max_depth, s.max_args, s.min_length, s.max_length) == \
        (96_000, 2_000, 2_000, 10, 10, 500, 2_000)


def test_lra_statistics_and_labels():
    """Lengths strictly inside LRA's (500, 2000), every class present, labels = the expression's value."""
    s = ListOpsSettings(seed=11)
    inputs, lengths, labels = Generator(s, 0).make(0, 300)
    assert lengths.min() > 500 and lengths.max() < 2000
    assert set(np.unique(labels)) == set(range(10))
    for row, n, y in zip(inputs, lengths, labels):
        assert np.all(row[:n] > 0) and np.all(row[n:] == 0)
        assert row[0] >= 11 and row[n - 1] == CLOSE_ID  # an operator applied to its arguments
        assert evaluate(row) == y
    # brackets balance in every expression
    opens = ((inputs >= 11) & (inputs <= 14)).sum(axis=1)
    assert np.array_equal(opens, (inputs == CLOSE_ID).sum(axis=1))


@pytest.mark.slow
def test_lra_sized_sample_statistics():
    """5000 samples at LRA's settings: lengths fill (500, 2000), every class common enough to learn."""
    inputs, lengths, labels = Generator(ListOpsSettings(seed=1), 0).make(0, 5000)
    assert lengths.min() > 500 and lengths.max() < 2000 and 800 < np.median(lengths) < 1200
    counts = np.bincount(labels, minlength=10)
    assert counts.min() > 0.03 * 5000
    assert len({bytes(r) for r in inputs}) == 5000


def test_operators_by_hand():
    ids = {t: i for i, t in enumerate(VOCABULARY)}
    text = "[MAX 2 9 [MIN 4 7 ] 0 ] [MED 1 2 3 8 ] [SM 9 9 5 ]"

    def encode(expr):
        return [ids[t] for t in expr.split()]
    assert evaluate(encode("[MAX 2 9 [MIN 4 7 ] 0 ]")) == 9
    assert evaluate(encode("[MED 1 2 3 8 ]")) == 2  # median 2.5, rounded down as LRA's int(np.median)
    assert evaluate(encode("[MED 1 2 8 ]")) == 2
    assert evaluate(encode("[SM 9 9 5 ]")) == 3
    assert evaluate(encode("[MIN [SM 5 5 ] 7 ]")) == 0
    assert to_text(encode(text)) == text


def test_split_files(listops_dir):
    task_dir = listops_dir / "listops"
    rows = []
    for split, size in (("train", 30), ("valid", 8), ("test", 8)):
        with h5py.File(task_dir / f"{split}.h5", "r") as f:
            assert f["inputs"].shape == (size, 2000) and f["inputs"].dtype == np.uint8
            assert f["lengths"].shape == f["labels"].shape == (size,)
            assert f.attrs["task"] == "listops" and f.attrs["split"] == split and int(f.attrs["seed"]) == 3
            assert '"max_depth": 10' in f.attrs["settings"] and int(f.attrs["version"]) == 1
            rows.extend(bytes(r) for r in f["inputs"][...])
    assert len(set(rows)) == len(rows), "an expression appears twice across the splits"
    assert not list(task_dir.glob(".*part*")), "part files left behind"


def test_open_split_items(listops_dir):
    ds = open_split("listops", listops_dir, "valid")
    assert len(ds) == 8
    item = ds[3]
    assert item["inputs"].dtype == torch.int64 and item["inputs"].shape == (2000,)
    assert isinstance(item["length"], int) and isinstance(item["label"], int)
    assert evaluate(item["inputs"].numpy()) == item["label"]
    assert int((item["inputs"] != 0).sum()) == item["length"]
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=4)))
    assert batch["inputs"].shape == (4, 2000) and batch["label"].shape == (4,)
    # worker processes open the file themselves
    batches = list(torch.utils.data.DataLoader(ds, batch_size=4, num_workers=2))
    assert torch.equal(torch.cat([b["inputs"] for b in batches]), torch.stack([ds[i]["inputs"] for i in range(8)]))


def test_same_seed_same_bytes_for_any_chunking(tmp_path, listops_dir):
    prepare_task("listops", tmp_path, dict(SMALL, chunk_size=5))
    for split in ("train", "valid", "test"):
        assert file_sha256(tmp_path / "listops" / f"{split}.h5") == file_sha256(listops_dir / "listops" / f"{split}.h5")
    other = tmp_path / "other"
    prepare_task("listops", other, dict(SMALL, seed=4))
    assert file_sha256(other / "listops" / "train.h5") != file_sha256(listops_dir / "listops" / "train.h5")


# settings where repeats are common: 410 distinct expressions (10 digits; 4 operators x 100 pairs of digits)
CROWDED = {"train_size": 300, "valid_size": 40, "test_size": 40, "chunk_size": 50, "max_depth": 2, "max_args": 2,
           "min_length": 0, "max_length": 8}


def test_parallel_workers_make_the_same_bytes_even_where_repeats_are_common(tmp_path, listops_dir):
    prepare_task("listops", tmp_path / "small", dict(SMALL, workers=2, chunk_size=5))
    for split in ("train", "valid", "test"):
        assert file_sha256(tmp_path / "small" / "listops" / f"{split}.h5") == \
            file_sha256(listops_dir / "listops" / f"{split}.h5")

    s = task_settings("listops", CROWDED)
    check, redrawn = DuplicateCheck(s), 0
    for start in range(0, 300, 50):
        rows = Generator(s, 0).make(start, start + 50)
        drawn = rows[0].copy()
        check.settle(0, start, rows)
        redrawn += int((drawn != rows[0]).any(axis=1).sum())
    assert redrawn > 50  # many rows repeat an earlier chunk's sample: the case tests their redraw

    one_pass = dict(CROWDED, chunk_size=1000)  # every split in one chunk: one pass in order
    prepare_task("listops", tmp_path / "one_pass", one_pass)
    prepare_task("listops", tmp_path / "chunks", CROWDED)
    prepare_task("listops", tmp_path / "workers", dict(CROWDED, chunk_size=30, workers=3))
    rows = []
    for split in ("train", "valid", "test"):
        reference = file_sha256(tmp_path / "one_pass" / "listops" / f"{split}.h5")
        for other in ("chunks", "workers"):
            assert file_sha256(tmp_path / other / "listops" / f"{split}.h5") == reference, (other, split)
        with h5py.File(tmp_path / "workers" / "listops" / f"{split}.h5", "r") as f:
            rows.extend(bytes(r) for r in f["inputs"][...])
    assert len(set(rows)) == 380  # every expression once over the three splits


def test_a_killed_run_resumes(tmp_path, listops_dir):
    calls = []

    def stop_after_two_parts(done, total):
        calls.append(done)
        if done >= 24:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        prepare_task("listops", tmp_path, SMALL, progress=stop_after_two_parts)
    task_dir = tmp_path / "listops"
    parts = sorted(p.name for p in task_dir.glob(".train.part-*.h5"))
    assert len(parts) == 2 and not (task_dir / "train.h5").exists()
    damage_hdf5_groups(task_dir / parts[1])  # a damaged part is made again, not a traceback

    seen = []
    prepare_task("listops", tmp_path, SMALL, progress=lambda done, total: seen.append((done, total)))
    assert seen[0] == (0, 46) and seen[-1] == (46, 46)
    for split in ("train", "valid", "test"):
        assert file_sha256(task_dir / f"{split}.h5") == file_sha256(listops_dir / "listops" / f"{split}.h5")

    # a finished task is left alone
    before = (task_dir / "train.h5").stat().st_mtime_ns
    prepare_task("listops", tmp_path, SMALL)
    assert (task_dir / "train.h5").stat().st_mtime_ns == before


def test_other_settings_are_refused_not_overwritten(tmp_path):
    prepare_task("listops", tmp_path, dict(SMALL, train_size=5, valid_size=2, test_size=2))
    with pytest.raises(DatasetError, match="other settings"):
        prepare_task("listops", tmp_path, dict(SMALL, train_size=5, valid_size=2, test_size=2, seed=9))


def test_bad_settings():
    with pytest.raises(ConfigError, match="unknown key 'trainsize'"):
        task_settings("listops", {"trainsize": 3})
    with pytest.raises(ConfigError, match="expected an integer"):
        task_settings("listops", {"train_size": "many"})
    with pytest.raises(ConfigError, match="min_length"):
        task_settings("listops", {"min_length": 2000})
    with pytest.raises(UserInputError, match="unknown task"):
        prepare_task("listopz", "/tmp")


def test_missing_and_damaged_files(tmp_path, listops_dir):
    with pytest.raises(UserInputError, match=r"not found: .*listops/test\.h5 .*prepare-task --task listops"):
        open_split("listops", tmp_path, "test")
    with pytest.raises(UserInputError, match="unknown split"):
        open_split("listops", listops_dir, "dev")
    damaged = tmp_path / "listops" / "test.h5"
    damaged.parent.mkdir()
    damaged.write_bytes((listops_dir / "listops" / "test.h5").read_bytes()[:3000])
    with pytest.raises(UserInputError, match=r"test\.h5: not a readable HDF5 file .*prepare-task"):
        open_split("listops", tmp_path, "test")
    damaged.write_bytes((listops_dir / "listops" / "test.h5").read_bytes())
    damage_hdf5_groups(damaged)  # opens, then h5py's RuntimeError at the first name looked up
    with pytest.raises(UserInputError, match=r"test\.h5: cannot read listops test split \(corrupt\?\).*prepare-task") as err:
        open_split("listops", tmp_path, "test")
    assert "\n" not in str(err.value)
    with h5py.File(damaged, "w") as f:
        f.create_dataset("inputs", data=np.zeros((2, 5), np.uint8))
    with pytest.raises(UserInputError, match="missing dataset 'lengths'"):
        open_split("listops", tmp_path, "test")
