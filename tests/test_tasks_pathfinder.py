"""LRA Pathfinder generator: contour lengths, labels from the geometry, balance, rendering, determinism, resume."""

from __future__ import annotations

import json
import math

import h5py
import numpy as np
import pytest
import torch

from common.errors import ConfigError, DatasetError
from common.files import file_sha256
from surrogate.tasks import TASKS, open_split, prepare_task, task_settings
from surrogate.tasks.pathfinder import draw_image, image_stream, segment_distance

SMALL = {"train_size": 24, "valid_size": 6, "test_size": 6, "chunk_size": 10, "seed": 2}


@pytest.fixture(scope="module")
def pathfinder_dir(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("tasks")
    prepare_task("pathfinder32", data_dir, SMALL)
    return data_dir


def test_specs_and_lra_settings():
    assert (TASKS["pathfinder32"].input_kind, TASKS["pathfinder32"].input_size, TASKS["pathfinder32"].num_classes,
            TASKS["pathfinder32"].seq_len) == ("pixels", 256, 2, 1024)
    assert TASKS["pathfinder128"].seq_len == 16384
    s32, s128 = task_settings("pathfinder32"), task_settings("pathfinder128")
    assert (s32.image_size, s32.contour_length, s32.paddle_length, s32.paddle_margin, s32.seed_distance,
            s32.distractor_length, s32.num_distractors, s32.continuity) == (32, 14, 2.0, (1,), 7.0, 4, 5, 1.0)
    assert (s128.image_size, s128.contour_length, s128.paddle_length, s128.paddle_margin, s128.seed_distance,
            s128.num_distractors, s128.continuity) == (128, 14, 5.0, (2, 3), 20.0, 8, 1.8)
    assert (s32.train_size, s32.valid_size, s32.test_size) == (160_000, 20_000, 20_000)


def _check_geometry(s, image, label, details):
    contours = details["contours"]
    targets = [c for c in contours if c.kind == "target"]
    distractors = [c for c in contours if c.kind == "distractor"]
    assert len(targets) == 2 and len(distractors) <= s.num_distractors
    # every contour has exactly its configured number of paddles
    assert all(len(c.paddles) == s.contour_length for c in targets)
    assert all(len(c.paddles) == s.distractor_length for c in distractors)
    m = details["margin"]
    assert m in s.paddle_margin
    for c in contours:
        p = np.array(c.paddles)
        assert np.allclose(np.hypot(p[:, 2] - p[:, 0], p[:, 3] - p[:, 1]), s.paddle_length)
        gaps = np.hypot(p[1:, 0] - p[:-1, 2], p[1:, 1] - p[:-1, 3])  # 2 x margin along the bent path
        assert np.all(gaps <= 2 * m + 1e-9) and np.all(gaps >= 2 * m * math.cos(math.pi / 4) - 1e-9)
        assert p.min() >= s.padding - 1e-9 and p.max() <= s.image_size - s.padding + 1e-9
    # contours keep apart (the original's non-overlapping clearance masks): centre lines of paddles of different
    # contours, and of non-neighbouring paddles of one contour, at least 2 x margin + thickness apart, less what the
    # collision grid can miss (half a cell's diagonal, and half the spacing of the points tested along a paddle).
    # That is more than the 2 x margin gap between a contour's consecutive paddles, so linking paddles closer than
    # 2 x margin recovers exactly the contours, and with them the label: it is in the image, not only in the seed.
    clearance = 2 * m + s.paddle_thickness - (math.sqrt(2) / 2 + 0.25) / s.antialias
    assert clearance > 2 * m
    paddles = [(k, i, p) for k, c in enumerate(contours) for i, p in enumerate(c.paddles)]
    t = np.linspace(0.0, 1.0, 9)
    for k, i, (y0, x0, y1, x1) in paddles:
        ys, xs = y0 + (y1 - y0) * t, x0 + (x1 - x0) * t
        for k2, i2, q in paddles:
            if (k2, i2) <= (k, i) or (k2 == k and abs(i2 - i) < 2):
                continue
            assert segment_distance(ys, xs, *q).min() >= clearance - 1e-9, (k, i, k2, i2)
    # the targets start seed_distance apart; the circles sit on a start and an end
    assert math.dist(targets[0].start, targets[1].start) == pytest.approx(s.seed_distance)
    origin, other = details["marked"]
    assert details["markers"] == [targets[origin].start, targets[other].end]
    assert (origin == other) == (label == 1)
    for y, x in details["markers"]:
        assert image[int(y), int(x)] >= 128, "a circle is not drawn"


@pytest.mark.parametrize("name, n", [("pathfinder32", 60), ("pathfinder128", 3)])
def test_geometry_matches_the_settings(name, n):
    s = task_settings(name)
    for i in range(n):
        image, label, details = draw_image(s, image_stream(0, 0, i))
        assert image.shape == (s.image_size, s.image_size) and image.dtype == np.uint8
        _check_geometry(s, image, label, details)


def test_labels_balanced_and_images_alike_in_both_classes():
    s = task_settings("pathfinder32")
    labels, ink = [], {0: [], 1: []}
    for i in range(300):
        image, label, _ = draw_image(s, image_stream(1, 0, i))
        labels.append(label)
        ink[label].append((image > 0).mean())
    assert 0.42 < np.mean(labels) < 0.58  # ~50/50 (binomial sd 0.029)
    # nothing but the contours' connection tells the classes apart: the same amount of ink
    assert abs(np.mean(ink[0]) - np.mean(ink[1])) < 0.02


@pytest.mark.slow
def test_pathfinder_x_balance_and_geometry_at_scale():
    s = task_settings("pathfinder128")
    labels = []
    for i in range(300):
        image, label, details = draw_image(s, image_stream(5, 0, i))
        _check_geometry(s, image, label, details)
        labels.append(label)
    assert 0.4 < np.mean(labels) < 0.6


def test_split_files_and_items(pathfinder_dir):
    task_dir = pathfinder_dir / "pathfinder32"
    with h5py.File(task_dir / "train.h5", "r") as f:
        assert f["inputs"].shape == (24, 1024) and f["inputs"].dtype == np.uint8
        assert np.all(f["lengths"][...] == 1024) and set(np.unique(f["labels"][...])) <= {0, 1}
        assert f.attrs["task"] == "pathfinder32" and '"contour_length": 14' in f.attrs["settings"]
        first = f["inputs"][0]
    # row i of a split is image i of its stream, flattened row by row
    s = task_settings("pathfinder32", SMALL)
    image, _, _ = draw_image(s, image_stream(2, 0, 0))
    assert np.array_equal(first, image.reshape(-1))
    ds = open_split("pathfinder32", pathfinder_dir, "test")
    item = ds[0]
    assert len(ds) == 6 and item["inputs"].dtype == torch.int64 and item["inputs"].shape == (1024,)
    assert 0 <= int(item["inputs"].min()) and int(item["inputs"].max()) <= 255 and item["length"] == 1024
    assert item["label"] in (0, 1)


def test_same_seed_same_bytes_and_resume(tmp_path, pathfinder_dir):
    def stop(done, total):
        if done >= 10:
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        prepare_task("pathfinder32", tmp_path, dict(SMALL, chunk_size=5), progress=stop)
    assert len(list((tmp_path / "pathfinder32").glob(".train.part-*.h5"))) == 2
    prepare_task("pathfinder32", tmp_path, dict(SMALL, chunk_size=5))
    for split in ("train", "valid", "test"):
        assert file_sha256(tmp_path / "pathfinder32" / f"{split}.h5") == \
            file_sha256(pathfinder_dir / "pathfinder32" / f"{split}.h5")


def test_parallel_workers_make_the_same_bytes(tmp_path, pathfinder_dir):
    prepare_task("pathfinder32", tmp_path, dict(SMALL, chunk_size=4, workers=2))
    for split in ("train", "valid", "test"):
        assert file_sha256(tmp_path / "pathfinder32" / f"{split}.h5") == \
            file_sha256(pathfinder_dir / "pathfinder32" / f"{split}.h5")


def test_bad_settings():
    with pytest.raises(ConfigError, match="paddle_margin"):
        task_settings("pathfinder32", {"paddle_margin": []})
    with pytest.raises(ConfigError, match=r"\[tasks.pathfinder128\]: unknown key 'contour_lenght'"):
        task_settings("pathfinder128", {"contour_lenght": 9})
    assert task_settings("pathfinder128", {"paddle_margin": [2]}).paddle_margin == (2,)
    impossible = task_settings("pathfinder32", {"contour_length": 400, "image_size": 12, "paddle_length": 3})
    with pytest.raises(ConfigError, match="no contour of 400 paddles fitted into a 12 x 12 image"):
        draw_image(impossible, image_stream(0, 0, 0))


def test_files_of_an_older_generator_are_refused(tmp_path, pathfinder_dir):
    """Splits made before the generator's last change (no generator_revision stored) are neither trained on nor
    mixed with new ones: one DatasetError naming the file and the difference."""
    old = tmp_path / "pathfinder32"
    old.mkdir()
    for split in ("train", "valid", "test"):
        (old / f"{split}.h5").write_bytes((pathfinder_dir / "pathfinder32" / f"{split}.h5").read_bytes())
        with h5py.File(old / f"{split}.h5", "r+") as f:
            settings = json.loads(f.attrs["settings"])
            del settings["generator_revision"]
            f.attrs["settings"] = json.dumps(settings, sort_keys=True)
    with pytest.raises(DatasetError, match=r"train\.h5: made by revision 1 of the Pathfinder generator, this code makes revision 2"):
        open_split("pathfinder32", tmp_path, "train")
    with pytest.raises(DatasetError, match=r"train\.h5 was generated with other settings \(generator_revision: none -> 2\)"):
        prepare_task("pathfinder32", tmp_path, SMALL)

