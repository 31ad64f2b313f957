"""torch Datasets over the split files of the generated tasks (ListOps, Pathfinder), and the
image augmentation of the pixel tasks.

Each item is {"inputs": LongTensor[T], "length": int, "label": int}. The file is checked
when the Dataset is made (a missing, truncated or foreign file is one DatasetError naming it
and the command to run) and opened again in each process that reads it, so the Dataset can
go to DataLoader worker processes.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import h5py
import numpy as np
import torch
from torch.utils.data import Dataset

from common.errors import DatasetError
from common.files import read_hdf5

from .storage import FORMAT_VERSION, check_rows, read_settings_attr


class GeneratedSplit(Dataset):
    """One split of a generated task, rows read lazily (one compressed HDF5 chunk per row)."""

    def __init__(self, path: str | os.PathLike, task: str, split: str, hint: str):
        self.path, self.task, self.split, self.hint = Path(path), task, split, hint
        with read_hdf5(self.path, f"{task} {split} split", hint) as f:
            n = check_rows(f, self.path, hint)
            stored_task = f.attrs.get("task")
            if isinstance(stored_task, bytes):
                stored_task = stored_task.decode()
            if stored_task != task:
                raise DatasetError(f"{self.path}: holds task {stored_task!r}, expected {task!r}; {hint}")
            version = int(f.attrs.get("version", -1))
            if version != FORMAT_VERSION:
                raise DatasetError(f"{self.path}: format version {version}, this code reads {FORMAT_VERSION}; {hint}")
            if int(f.attrs.get("size", -1)) != n:
                raise DatasetError(f"{self.path}: holds {n} samples but was written for {int(f.attrs.get('size', -1))}; {hint}")
            self.settings = read_settings_attr(f)
            if task.startswith("pathfinder"):
                from .pathfinder import GENERATOR_REVISION

                made = self.settings.get("generator_revision", 1)
                if made != GENERATOR_REVISION:
                    raise DatasetError(f"{self.path}: made by revision {made} of the Pathfinder generator, this code makes "
                                       f"revision {GENERATOR_REVISION} (see surrogate/tasks/pathfinder.py); remove the "
                                       f"task's files, then {hint}")
            self.seq_len = int(f["inputs"].shape[1])
            self.labels = f["labels"][...].astype(np.int64)
            self.lengths = f["lengths"][...].astype(np.int64)
        self._n = n
        self._file: h5py.File | None = None
        self._pid = None

    def __len__(self) -> int:
        return self._n

    def _inputs(self):
        if self._file is None or self._pid != os.getpid():  # a DataLoader worker opens its own handle
            try:
                self._file = h5py.File(self.path, "r")
            except OSError as err:
                raise DatasetError(f"{self.path}: cannot open the split file: {err}; {self.hint}") from None
            self._pid = os.getpid()
        return self._file["inputs"]

    def __getitem__(self, index: int) -> dict:
        if not -self._n <= index < self._n:
            raise IndexError(f"index {index} out of range for {self._n} samples")
        index %= self._n
        try:
            row = self._inputs()[index]
        except OSError as err:
            raise DatasetError(f"{self.path}: cannot read sample {index} (corrupt?): {err}; {self.hint}") from None
        return {"inputs": torch.from_numpy(row.astype(np.int64)), "length": int(self.lengths[index]),
                "label": int(self.labels[index])}

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_file"], state["_pid"] = None, None
        return state


DIHEDRAL_VIEWS = 8  # the symmetries of a square: 4 rotations, each with or without a reflection


def dihedral_views(images: torch.Tensor, views: torch.Tensor) -> torch.Tensor:
    """Each flattened square image (B, side * side, row by row) in one of its 8 rotations / reflections.

    views (B,) holds 0..7: bit 2 transposes, bit 1 flips the rows, bit 0 flips the columns
    (together every element of the dihedral group of the square). Whether Pathfinder's two
    circles are joined by one contour does not change under any of them, so each view is a
    correctly labelled image from (near) the same distribution: 8 x the distinct training images.
    """
    if images.dim() != 2:
        raise ValueError(f"expected flattened images (batch, side * side), got shape {tuple(images.shape)}")
    batch, steps = images.shape
    side = math.isqrt(steps)
    if side * side != steps:
        raise ValueError(f"a sequence of {steps} pixels is not a flattened square image")
    square = images.view(batch, side, side)
    views = views.to(images.device).view(batch, 1, 1)
    square = torch.where(views & 4 != 0, square.transpose(1, 2), square)
    square = torch.where(views & 2 != 0, square.flip(1), square)
    square = torch.where(views & 1 != 0, square.flip(2), square)
    return square.reshape(batch, steps)
