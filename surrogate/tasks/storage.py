"""Split files of the generated tasks: written in resumable chunks, read back as torch Datasets.

A generated split is one HDF5 file, `<data_dir>/<task>/<split>.h5`:

    inputs   (N, T) uint8    one sequence per row, padded with 0
    lengths  (N,)   int32    the unpadded length of each row
    labels   (N,)   int16    the class of each row
    attrs    task, split, version, seed, size, settings (JSON: every setting that decides the data)

Generation is resumable: sample i of a split depends only on (seed, split, i), and samples
are made `chunk_size` at a time into part files (`.<split>.part-<start>-<stop>.h5`, each
written atomically), so a killed run keeps every finished part and a re-run makes the rest.
When all parts are there they are joined into `<split>.h5` (atomically) and removed. The
result does not depend on the chunk size: the same seed gives byte-identical files.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from common.errors import DatasetError
from common.files import as_output_error, atomic_hdf5, atomic_path, read_hdf5
from common.jsonio import dumps_json

FORMAT_VERSION = 1
SPLIT_CODES = {"train": 0, "valid": 1, "test": 2}  # part of every sample's seed
ROW_DATASETS = ("inputs", "lengths", "labels")

# make(start, stop) -> (inputs (n, T) uint8, lengths (n,), labels (n,))
ChunkMaker = Callable[[int, int], tuple[np.ndarray, np.ndarray, np.ndarray]]


def split_path(task_dir: str | os.PathLike, split: str) -> Path:
    return Path(task_dir) / f"{split}.h5"


def _part_path(task_dir: Path, split: str, start: int, stop: int) -> Path:
    return task_dir / f".{split}.part-{start:09d}-{stop:09d}.h5"


def expected_attrs(task: str, split: str, size: int, settings_fp: dict[str, Any]) -> dict[str, Any]:
    return {"task": task, "split": split, "version": FORMAT_VERSION, "seed": settings_fp.get("seed", 0),
            "size": size, "settings": dumps_json(settings_fp, indent=None, sort_keys=True)}


def check_rows(f: h5py.File, path: Path, hint: str, size: int | None = None, width: int | None = None) -> int:
    """The schema of a split or part file (the three row datasets, consistent shapes); returns N."""
    for name in ROW_DATASETS:
        if name not in f:
            raise DatasetError(f"{path}: missing dataset '{name}' (not a task split file?); {hint}")
    inputs = f["inputs"]
    if inputs.ndim != 2:
        raise DatasetError(f"{path}: inputs has shape {inputs.shape}, expected (N, T); {hint}")
    n = inputs.shape[0]
    for name in ("lengths", "labels"):
        if f[name].shape != (n,):
            raise DatasetError(f"{path}: {name} has shape {f[name].shape}, expected ({n},); {hint}")
    if size is not None and n != size:
        raise DatasetError(f"{path}: holds {n} samples, expected {size} (truncated?); {hint}")
    if width is not None and inputs.shape[1] != width:
        raise DatasetError(f"{path}: inputs has T = {inputs.shape[1]}, expected {width}; {hint}")
    return n


def _matches(f: h5py.File, attrs: dict[str, Any]) -> bool:
    for key, value in attrs.items():
        stored = f.attrs.get(key)
        if isinstance(stored, bytes):
            stored = stored.decode()
        if isinstance(stored, np.generic):
            stored = stored.item()
        if stored != value:
            return False
    return True


def _differences(f: h5py.File, attrs: dict[str, Any]) -> str:
    """The settings in which a stored split differs from `attrs`, as 'key: stored -> wanted' (all stored if none)."""
    stored = read_settings_attr(f)
    wanted = json.loads(attrs["settings"])
    keys = sorted(k for k in set(stored) | set(wanted) if stored.get(k) != wanted.get(k))
    if not keys:
        return f"stored: {dumps_json(stored, indent=None, sort_keys=True)}"
    return ", ".join(f"{k}: {stored.get(k, 'none')} -> {wanted.get(k, 'none')}" for k in keys)


def split_status(path: Path, attrs: dict[str, Any], width: int, hint: str) -> bool:
    """True when `path` is a finished split of exactly these settings; False when absent.

    A file of other settings is a DatasetError (it would be overwritten silently otherwise).
    """
    if not path.exists():
        return False
    with read_hdf5(path, "task split", hint) as f:
        check_rows(f, path, hint, size=attrs["size"], width=width)
        if not _matches(f, attrs):
            raise DatasetError(f"{path} was generated with other settings ({_differences(f, attrs)}); "
                               "remove it, or generate into another --data-dir")
    return True


def _read_part(path: Path, attrs: dict[str, Any], n: int, width: int):
    """The rows of a finished part file, or None when it is damaged or of other settings."""
    try:
        with read_hdf5(path, "task part") as f:
            if not _matches(f, attrs) or check_rows(f, path, "", size=n, width=width) != n:
                return None
            return tuple(f[name][...] for name in ROW_DATASETS)
    except DatasetError:  # a damaged part (read_hdf5 tells h5py's failures from ours) is made again
        return None


def _write_part(path: Path, attrs: dict[str, Any], rows) -> None:
    with as_output_error(path), atomic_hdf5(path) as f:
        for name, array in zip(ROW_DATASETS, rows):
            f.create_dataset(name, data=array)
        for key, value in attrs.items():
            f.attrs[key] = value


def build_split(task_dir: Path, split: str, size: int, chunk_size: int, width: int, attrs: dict[str, Any],
                make: ChunkMaker, settle: Callable[[int, tuple], tuple] | None = None,
                progress: Callable[[int], None] | None = None, workers: int = 1) -> Path:
    """Make `split` of `size` rows in parts of `chunk_size`, resuming from finished parts, then join them.

    `make(start, stop)` returns rows start..stop-1, here or, with `workers` > 1, in one of that
    many processes (made ahead, at most 2 x workers parts at a time). `settle(start, rows)` sees
    every part in order in this process, those read back from an earlier run too, and returns the
    rows to save (ListOps keeps its duplicate check there). `progress(n)` is told of every part
    finished or found. The rows are the same for any number of workers.
    """
    path = split_path(task_dir, split)
    task_dir.mkdir(parents=True, exist_ok=True)
    part_attrs = dict(attrs, part_of=path.name)
    bounds = [(start, min(size, start + chunk_size)) for start in range(0, size, chunk_size)]
    parts = [_part_path(task_dir, split, start, stop) for start, stop in bounds]
    existed = [part.exists() for part in parts]  # made ahead: the parts not there; a damaged one is made here
    made = _made_in_order(make, [b for b, there in zip(bounds, existed) if not there], workers)
    try:
        for (start, stop), part, there in zip(bounds, parts, existed):
            rows = _read_part(part, part_attrs, stop - start, width) if there else None
            if rows is not None:
                if settle is not None:
                    settle(start, rows)
            else:
                rows = next(made) if not there else make(start, stop)
                rows = (np.ascontiguousarray(rows[0], dtype=np.uint8), np.asarray(rows[1], dtype=np.int32),
                        np.asarray(rows[2], dtype=np.int16))
                if rows[0].shape != (stop - start, width):
                    raise AssertionError(f"generator returned inputs of shape {rows[0].shape}, "
                                         f"expected {(stop - start, width)}")
                _write_part(part, part_attrs, rows if settle is None else settle(start, rows))
            if progress is not None:
                progress(stop - start)
    finally:
        made.close()  # stops the worker processes, also on an error or Ctrl-C
    _join(path, parts, size, width, attrs)
    for part in task_dir.glob(f".{split}.part-*.h5"):
        part.unlink(missing_ok=True)
    return path


def _made_in_order(make: ChunkMaker, bounds: list[tuple[int, int]], workers: int):
    """make(start, stop) of each of `bounds`, yielded in order; with workers > 1 made ahead in processes."""
    if workers <= 1:
        for start, stop in bounds:
            yield make(start, stop)
        return
    import concurrent.futures as cf
    from collections import deque
    from itertools import islice

    todo = iter(bounds)
    with cf.ProcessPoolExecutor(workers) as pool:
        running = deque(pool.submit(make, *b) for b in islice(todo, 2 * workers))
        try:
            while running:
                rows = running.popleft().result()
                following = next(todo, None)
                if following is not None:
                    running.append(pool.submit(make, *following))
                yield rows
        finally:
            pool.shutdown(wait=True, cancel_futures=True)


# splits up to this many bytes of rows are built in memory and then written (common.files.atomic_hdf5)
IN_MEMORY_BYTES = 1 << 30


def _join(path: Path, parts: list[Path], size: int, width: int, attrs: dict[str, Any]) -> None:
    """The parts, in order, as one split file: one compressed HDF5 chunk per row (fast random access).

    Built in memory and written whole where it fits (a full disk is then a plain OSError);
    a larger split (Pathfinder-X) is written by HDF5 into a temporary file that is renamed.
    """
    def fill(out: h5py.File) -> None:
        inputs = out.create_dataset("inputs", shape=(size, width), dtype=np.uint8, chunks=(1, width),
                                    compression="gzip", compression_opts=4)
        lengths = out.create_dataset("lengths", shape=(size,), dtype=np.int32)
        labels = out.create_dataset("labels", shape=(size,), dtype=np.int16)
        row = 0
        for part in parts:
            with h5py.File(part, "r") as f:
                n = f["inputs"].shape[0]
                inputs[row:row + n] = f["inputs"][...]
                lengths[row:row + n] = f["lengths"][...]
                labels[row:row + n] = f["labels"][...]
            row += n
        for key, value in attrs.items():
            out.attrs[key] = value

    with as_output_error(path):
        if size * width <= IN_MEMORY_BYTES:
            with atomic_hdf5(path) as out:
                fill(out)
            return
        with atomic_path(path) as tmp:
            try:
                with h5py.File(tmp, "w") as out:
                    fill(out)
            except RuntimeError as err:  # HDF5 reports a failed flush (a full disk) this way
                raise OSError(str(err).splitlines()[0] if str(err) else "HDF5 write failed") from None


def read_settings_attr(f: h5py.File) -> dict[str, Any]:
    raw = f.attrs.get("settings", "{}")
    return json.loads(raw.decode() if isinstance(raw, bytes) else raw)
