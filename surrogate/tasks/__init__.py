"""Long-horizon sequence tasks for the ELM neuron as a sequence model (docs/long_horizon.md).

    TASKS                                       name -> TaskSpec (input kind and size, classes, T)
    prepare_task(name, data_dir, settings, progress)   generate (or, for shd-adding, index) data_dir/<name>/
    open_split(name, data_dir, split)           a torch Dataset of {"inputs", "length", "label"}
    task_settings(name, table)                  the settings dataclass of a task from a TOML table

Tasks: "listops" (LRA ListOps, tokens), "pathfinder32" and "pathfinder128" (LRA Pathfinder and
Pathfinder-X, pixels), "shd-adding" (two Spiking Heidelberg Digits, label = sum of digits).
The first three are generated here (no download); shd-adding reads the SHD files the user
downloaded. Everything is seeded: the same settings give byte-identical files.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from common.errors import UserInputError

from .settings import (
    SETTINGS,
    SPLITS,
    TABLE,
    fingerprint,
    settings_from_file,
    task_settings,
)

__all__ = ["SPLITS", "TABLE", "TASKS", "TaskSpec", "open_split", "prepare_task", "settings_from_file", "task_settings"]


@dataclass(frozen=True)
class TaskSpec:
    """What a model needs to know of a task (at the default settings)."""

    name: str
    input_kind: Literal["tokens", "pixels", "spikes"]
    input_size: int  # token vocabulary incl. padding (id 0); 256 grey levels; 700 SHD channels
    num_classes: int
    seq_len: int  # T of every item (padded); shd-adding: 2 x 1000 ms / bin_ms


TASKS: dict[str, TaskSpec] = {
    "listops": TaskSpec("listops", "tokens", 16, 10, 2000),
    "pathfinder32": TaskSpec("pathfinder32", "pixels", 256, 2, 32 * 32),
    "pathfinder128": TaskSpec("pathfinder128", "pixels", 256, 2, 128 * 128),
    "shd-adding": TaskSpec("shd-adding", "spikes", 700, 19, 1000),
}
assert set(TASKS) == set(SETTINGS)


def _check_name(name: str) -> None:
    if name not in TASKS:
        raise UserInputError(f"unknown task '{name}' (known: {', '.join(TASKS)})")


def prepare_command(name: str, data_dir: str | os.PathLike) -> str:
    return f"python -m pipelines prepare-task --task {name} --data-dir {data_dir}"


def prepare_task(name: str, data_dir: str | os.PathLike, settings: dict | None = None,
                 progress: Callable[[int, int], None] | None = None) -> Path:
    """Make task `name`'s splits in data_dir/<name>/ and return that directory; resumes an interrupted run.

    `settings`: the task's table ([tasks.<name>], a dict; or its settings dataclass); absent
    keys take the defaults. `progress(done, total)` is called as samples (or pairs) are made,
    counting those an earlier run finished. Splits already there with the same settings are
    kept; a split made with other settings is refused (DatasetError), never overwritten.
    """
    from common.files import check_writable
    from common.locks import DirectoryLock

    _check_name(name)
    s = task_settings(name, settings)
    task_dir = Path(data_dir) / name
    check_writable(task_dir)
    with DirectoryLock(task_dir, f"prepare-task {name}"):
        if name == "shd-adding":
            from .shd import prepare_shd_adding

            prepare_shd_adding(task_dir, s, progress)
        else:
            _generate(name, task_dir, s, progress)
    return task_dir


def _generate(name: str, task_dir: Path, s, progress) -> None:
    import functools

    import h5py

    from .storage import (
        SPLIT_CODES,
        build_split,
        expected_attrs,
        split_path,
        split_status,
    )

    sizes = {"train": s.train_size, "valid": s.valid_size, "test": s.test_size}
    total, done = sum(sizes.values()), 0
    fp = fingerprint(s)
    hint = f"run: {prepare_command(name, task_dir.parent)}"
    if name == "listops":
        from . import listops

        width = s.max_length
        duplicates = listops.DuplicateCheck(s)  # spans all three splits
    else:
        from . import pathfinder

        width = s.image_size * s.image_size
        fp = fp | {"generator_revision": pathfinder.GENERATOR_REVISION}

    def tick(n: int) -> None:
        nonlocal done
        done += n
        if progress is not None:
            progress(done, total)

    if progress is not None:
        progress(0, total)
    for split in SPLITS:
        attrs = expected_attrs(name, split, sizes[split], fp)
        path = split_path(task_dir, split)
        if name == "listops":
            make = listops.Generator(s, SPLIT_CODES[split]).make
            settle = functools.partial(duplicates.settle, SPLIT_CODES[split])
        else:
            make, settle = pathfinder.Generator(s, SPLIT_CODES[split]).make, None
        if split_status(path, attrs, width, hint):
            if name == "listops":
                with h5py.File(path, "r") as f:
                    duplicates.remember(f["inputs"][...])
            tick(sizes[split])
            continue
        build_split(task_dir, split, sizes[split], s.chunk_size, width, attrs, make, settle, tick, workers=s.workers)


def open_split(name: str, data_dir: str | os.PathLike, split: str):
    """Split `split` ("train", "valid", "test") of task `name` under data_dir/<name>/, as a torch Dataset.

    Items are {"inputs": Tensor, "length": int, "label": int}: inputs a LongTensor[T] of token
    ids or grey levels (0..255) for the generated tasks, a FloatTensor[T, 700] of spike counts
    per bin for shd-adding (built when the item is read). A missing or damaged file is one
    DatasetError naming it and the command that makes it.
    """
    _check_name(name)
    if split not in SPLITS:
        raise UserInputError(f"unknown split '{split}' (known: {', '.join(SPLITS)})")
    task_dir = Path(data_dir) / name
    hint = f"run: {prepare_command(name, data_dir)}"
    if name == "shd-adding":
        from .shd import ShdAddingSplit

        return ShdAddingSplit(task_dir / f"{split}.h5", split, hint)
    from .datasets import GeneratedSplit
    from .storage import split_path

    return GeneratedSplit(split_path(task_dir, split), name, split, hint)
