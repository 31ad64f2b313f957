"""SHD-Adding (Spieler et al., ICLR 2024): two Spiking Heidelberg Digits in a row, label = the sum of the digits.

The Spiking Heidelberg Digits (Cramer et al. 2020) are spoken digits 0-9 in English and
German (labels 0..19; the digit is label mod 10) as spikes of 700 cochlear channels, in two
HDF5 files, `shd_train.h5` and `shd_test.h5`:

    spikes/times  (N,) ragged float   spike times of each sample, seconds
    spikes/units  (N,) ragged int     the channel (0..699) of each spike
    labels        (N,) int            0..19

A pair (i, j) of samples of one file makes one SHD-Adding item: each sample is binned over
[0, digit_ms) into bins of bin_ms (spikes after digit_ms dropped), the two are concatenated
(2 x 500 bins at the default 2 ms), and the label is (label_i mod 10) + (label_j mod 10), one
of 19 classes. prepare writes only the seeded pair lists (`<split>.h5`: `first`, `second`,
`labels`, `lengths`, with the SHD file they index in the attributes); items are binned
when read. A fraction of shd_train.h5's samples (valid_fraction, drawn with the seed) is held
out: validation pairs use only those, training pairs only the rest, test pairs shd_test.h5.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import h5py
import numpy as np
import torch
from torch.utils.data import Dataset

from common.errors import DatasetError, UserInputError
from common.files import as_output_error, atomic_hdf5, read_hdf5

from .settings import SPLITS, ShdAddingSettings, fingerprint
from .storage import FORMAT_VERSION, SPLIT_CODES

N_CHANNELS = 700
N_LABELS = 20
NUM_CLASSES = 19
SHD_FILES = {"train": "shd_train.h5", "valid": "shd_train.h5", "test": "shd_test.h5"}
DOWNLOAD_HINT = ("download shd_train.h5.gz and shd_test.h5.gz from https://zenkelab.org/datasets/, gunzip them "
                 "into one directory and give it as --shd-dir DIR (or shd_dir in [tasks.shd-adding])")


# --------------------------------------------------------------------------- the SHD files

def check_shd_file(path: Path, deep: bool = True) -> np.ndarray:
    """Check an SHD file's layout (and with `deep` every sample's spikes); returns its labels.

    Anything else than the official layout (a missing or truncated file, missing datasets,
    spike arrays that are not ragged per sample, channels outside 0..699, labels outside
    0..19) is one UserInputError naming the file and the problem.
    """
    with read_hdf5(path, "SHD file", DOWNLOAD_HINT) as f:
        for name in ("spikes/times", "spikes/units", "labels"):
            if name not in f or not isinstance(f[name], h5py.Dataset):
                raise DatasetError(f"{path}: not in the SHD layout: no dataset '{name}' "
                                   "(expected spikes/times, spikes/units, labels)")
        times, units, labels = f["spikes/times"], f["spikes/units"], f["labels"]
        n = labels.shape[0] if labels.ndim == 1 else -1
        if n < 1:
            raise DatasetError(f"{path}: labels has shape {labels.shape}, expected (N,) with N >= 1")
        for name, dataset in (("spikes/times", times), ("spikes/units", units)):
            if dataset.shape != (n,):
                raise DatasetError(f"{path}: {name} has shape {dataset.shape}, expected ({n},) like labels")
            if h5py.check_vlen_dtype(dataset.dtype) is None:
                raise DatasetError(f"{path}: {name} is not a ragged (variable-length) array per sample "
                                   f"(dtype {dataset.dtype}), as in the SHD files")
        if not np.issubdtype(labels.dtype, np.integer):
            raise DatasetError(f"{path}: labels has dtype {labels.dtype}, expected integers 0..19")
        labels = labels[...].astype(np.int64)
        if labels.min() < 0 or labels.max() >= N_LABELS:
            raise DatasetError(f"{path}: labels outside 0..{N_LABELS - 1} (found {labels.min()}..{labels.max()})")
        if deep:
            all_times, all_units = times[...], units[...]
            for i, (t, u) in enumerate(zip(all_times, all_units)):
                if t.shape != u.shape:
                    raise DatasetError(f"{path}: sample {i} has {t.size} spike times but {u.size} units")
                if u.size and (u.min() < 0 or u.max() >= N_CHANNELS):
                    raise DatasetError(f"{path}: sample {i} has units outside 0..{N_CHANNELS - 1}")
                if t.size and not (np.all(np.isfinite(t)) and t.min() >= 0):
                    raise DatasetError(f"{path}: sample {i} has spike times that are negative or not finite")
    return labels


def labels_digest(labels: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(labels, dtype=np.int64).tobytes()).hexdigest()


def bin_sample(times: np.ndarray, units: np.ndarray, bin_ms: float, n_bins: int) -> np.ndarray:
    """Spike counts (n_bins, 700) float32 of one sample: bin k holds spikes in [k, k+1) x bin_ms; later spikes dropped."""
    bins = np.floor(np.asarray(times, dtype=np.float64) * (1000.0 / bin_ms)).astype(np.int64)
    keep = (bins >= 0) & (bins < n_bins)
    flat = bins[keep] * N_CHANNELS + np.asarray(units, dtype=np.int64)[keep]
    return np.bincount(flat, minlength=n_bins * N_CHANNELS).astype(np.float32).reshape(n_bins, N_CHANNELS)


def holdout(n_train_file: int, s: ShdAddingSettings) -> dict[str, np.ndarray]:
    """The samples of shd_train.h5 each split draws from (sorted), the validation ones drawn with the seed."""
    order = np.random.default_rng([s.seed, 7]).permutation(n_train_file)
    n_valid = max(1, int(round(s.valid_fraction * n_train_file)))
    if n_valid >= n_train_file:
        raise UserInputError(f"shd_train.h5 has {n_train_file} samples: too few to hold out {s.valid_fraction:g} for validation")
    return {"valid": np.sort(order[:n_valid]), "train": np.sort(order[n_valid:])}


def draw_pairs(pool: np.ndarray, labels: np.ndarray, n_pairs: int, seed: int, split: str):
    """n_pairs pairs of samples of `pool` drawn uniformly with replacement; label = sum of the two digits."""
    rng = np.random.default_rng([seed, 100 + SPLIT_CODES[split]])
    first = pool[rng.integers(0, pool.size, n_pairs)]
    second = pool[rng.integers(0, pool.size, n_pairs)]
    return first, second, (labels[first] % 10 + labels[second] % 10).astype(np.int16)


# --------------------------------------------------------------------------- prepare

def _shd_dir(s: ShdAddingSettings) -> Path:
    if not s.shd_dir:
        raise UserInputError(f"shd-adding needs the SHD files: {DOWNLOAD_HINT}")
    shd_dir = Path(s.shd_dir).expanduser()
    if not shd_dir.is_dir():
        raise UserInputError(f"SHD directory not found: {shd_dir} ({DOWNLOAD_HINT})")
    return shd_dir.resolve()


def _index_attrs(split: str, s: ShdAddingSettings, n_pairs: int, source: Path, digest: str) -> dict:
    from common.jsonio import dumps_json

    fp = fingerprint(s)
    return {"task": "shd-adding", "split": split, "version": FORMAT_VERSION, "seed": s.seed, "size": n_pairs,
            "settings": dumps_json(fp, indent=None, sort_keys=True), "source": str(source),
            "source_labels_sha256": digest, "bin_ms": s.bin_ms, "bins_per_digit": s.bins_per_digit}


def _index_state(path: Path, attrs: dict) -> str:
    """"absent", "done" (same settings, same SHD data), "moved" (same, but the SHD file has another path)."""
    if not path.exists():
        return "absent"
    try:
        with read_hdf5(path, "SHD-Adding index") as f:
            stored = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}
            complete = all(name in f for name in ("first", "second", "labels", "lengths"))
    except DatasetError:
        return "absent"  # a damaged index (it is small) is simply written again
    same = complete and all(stored.get(k) == v for k, v in attrs.items() if k not in ("source", "bin_ms"))
    same = same and float(stored.get("bin_ms", -1)) == attrs["bin_ms"]
    if not same:
        if complete and stored.get("settings") != attrs["settings"]:
            raise DatasetError(f"{path} was made with other settings ({stored.get('settings')}); "
                               "remove it, or prepare into another --data-dir")
        return "absent"
    return "done" if stored.get("source") == attrs["source"] else "moved"


def prepare_shd_adding(task_dir: Path, s: ShdAddingSettings, progress=None) -> None:
    """Check the SHD files and write the seeded pair lists of the three splits (each file atomically)."""
    shd_dir = _shd_dir(s)
    sizes = {"train": s.train_pairs, "valid": s.valid_pairs, "test": s.test_pairs}
    total, done = sum(sizes.values()), 0
    if progress is not None:
        progress(0, total)
    checked: dict[str, np.ndarray] = {}
    for split in SPLITS:
        source = shd_dir / SHD_FILES[split]
        if source.name not in checked:
            checked[source.name] = check_shd_file(source)
        labels = checked[source.name]
        path = task_dir / f"{split}.h5"
        attrs = _index_attrs(split, s, sizes[split], source, labels_digest(labels))
        if _index_state(path, attrs) != "done":
            pool = holdout(labels.size, s)[split] if split != "test" else np.arange(labels.size)
            first, second, pair_labels = draw_pairs(pool, labels, sizes[split], s.seed, split)
            with as_output_error(path), atomic_hdf5(path) as f:
                f.create_dataset("first", data=first.astype(np.int32))
                f.create_dataset("second", data=second.astype(np.int32))
                f.create_dataset("labels", data=pair_labels)
                f.create_dataset("lengths", data=np.full(sizes[split], 2 * s.bins_per_digit, dtype=np.int32))
                for key, value in attrs.items():
                    f.attrs[key] = value
        done += sizes[split]
        if progress is not None:
            progress(done, total)


# --------------------------------------------------------------------------- reading

class ShdAddingSplit(Dataset):
    """One split of SHD-Adding: items binned from the SHD file when read, FloatTensor[2 x bins_per_digit, 700]."""

    def __init__(self, path: str | os.PathLike, split: str, hint: str):
        self.path, self.split = Path(path), split
        with read_hdf5(self.path, f"shd-adding {split} pair index", hint) as f:
            for name in ("first", "second", "labels", "lengths"):
                if name not in f:
                    raise DatasetError(f"{self.path}: missing dataset '{name}' (not an shd-adding pair index?); {hint}")
            attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}
            if attrs.get("task") != "shd-adding" or int(attrs.get("version", -1)) != FORMAT_VERSION:
                raise DatasetError(f"{self.path}: not an shd-adding pair index of format {FORMAT_VERSION}; {hint}")
            self.first, self.second = f["first"][...], f["second"][...]
            self.labels = f["labels"][...].astype(np.int64)
            if not (self.first.shape == self.second.shape == self.labels.shape == (int(attrs["size"]),)):
                raise DatasetError(f"{self.path}: pair lists of inconsistent lengths (truncated?); {hint}")
        self.settings = read_settings_attr_dict(attrs)
        self.bin_ms = float(attrs["bin_ms"])
        self.bins_per_digit = int(attrs["bins_per_digit"])
        self.seq_len = 2 * self.bins_per_digit
        self.source = Path(attrs["source"])
        moved = (f"the SHD file it indexes, {self.source}, is gone or changed: prepare again with "
                 f"--shd-dir pointing at the SHD files ({hint})")
        if not self.source.is_file():
            raise DatasetError(f"{self.path}: {moved}")
        labels = check_shd_file(self.source, deep=False)
        if labels_digest(labels) != attrs["source_labels_sha256"]:
            raise DatasetError(f"{self.path}: {moved}")
        self._file = None
        self._pid = None

    def __len__(self) -> int:
        return self.labels.size

    def _spikes(self):
        if self._file is None or self._pid != os.getpid():
            try:
                self._file = h5py.File(self.source, "r")
            except OSError as err:
                raise DatasetError(f"{self.source}: cannot open the SHD file: {err}") from None
            self._pid = os.getpid()
        return self._file["spikes/times"], self._file["spikes/units"]

    def digit(self, sample: int) -> np.ndarray:
        """Sample `sample` of the SHD file binned: (bins_per_digit, 700) float32."""
        times, units = self._spikes()
        try:
            return bin_sample(times[sample], units[sample], self.bin_ms, self.bins_per_digit)
        except OSError as err:
            raise DatasetError(f"{self.source}: cannot read sample {sample} (corrupt?): {err}") from None

    def __getitem__(self, index: int) -> dict:
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for {n} pairs")
        index %= n
        counts = np.concatenate([self.digit(int(self.first[index])), self.digit(int(self.second[index]))])
        return {"inputs": torch.from_numpy(counts), "length": self.seq_len, "label": int(self.labels[index])}

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_file"], state["_pid"] = None, None
        return state


def read_settings_attr_dict(attrs: dict) -> dict:
    import json

    return json.loads(attrs.get("settings", "{}"))
