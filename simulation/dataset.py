"""HDF5 shards: the dataset format every stage after simulation reads (docs/dataset_format.md).

A dataset is a directory of `shard_00000.h5`, `shard_00001.h5`, ... Each shard holds n
simulations of T 1-ms bins: the input raster, the soma and nexus voltages, the output
spikes (as times and as a raster), optionally all dendritic segment voltages, the segment
table, and as attributes everything needed to reproduce it (config, master seed, seed rule,
NEURON version, hashes of the mechanisms and the morphology).

Shards are built in memory and written atomically (common.files.atomic_hdf5: a hidden
temporary file unique to the writer, fsync, rename), so a shard under its final name is
always complete; a crash leaves at most a `.shard_NNNNN.h5.<pid>-<random>.tmp` file, which
readers ignore. A full disk raises OSError and leaves the finished shards as they were.
This module is pure h5py/numpy: surrogate/ reads shards through it without NEURON.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import h5py
import numpy as np

from common.files import atomic_hdf5, read_hdf5
from common.jsonio import dumps_json, plain
from common.machine import available_cores

from .errors import DatasetError, InputShapeError

SCHEMA_VERSION = 1
SHARD_GLOB = "shard_*.h5"
SEED_RULE = "SeedSequence([master_seed, simulation_index])"
N_INPUT_ROWS = 1278  # 639 excitatory then 639 inhibitory synapses (spec 7.1)

# (n, T) datasets, one row per simulation
TRACE_DATASETS = ("soma_voltage", "nexus_voltage", "output_spikes")
REQUIRED_DATASETS = ("input_spikes", "soma_voltage", "nexus_voltage", "output_spikes", "output_spike_times", "simulation_index")
SEGMENT_FIELDS = ("index", "section", "x", "region", "distance_um", "length_um")
STRING_SEGMENT_FIELDS = ("section", "region")
REQUIRED_ATTRS = ("config", "master_seed", "shard_index", "created_by", "neuron_version", "mechanisms_sha256", "morphology_sha256")
CREATORS = ("simulate", "resimulate", "import-neuronio")

# one simulation of input_spikes is a 7.7 MB chunk; keep a few of them in HDF5's chunk
# cache so windows read one after another from the same simulation decompress it once
CHUNK_CACHE_BYTES = 64 * 1024**2


def shard_path(directory: str | os.PathLike, shard_index: int) -> Path:
    return Path(directory) / f"shard_{shard_index:05d}.h5"


# --------------------------------------------------------------------------- writing

def _as_bool(name: str, array: Any) -> np.ndarray:
    array = np.asarray(array)
    if array.dtype == bool:
        return array
    if array.dtype.kind in "iuf" and np.isin(array, (0, 1)).all():
        return array.astype(bool)
    raise InputShapeError(f"{name} must hold 0/1 (bool) values, got dtype {array.dtype}")


def _check_shape(name: str, array: np.ndarray, expected: tuple[int, ...]) -> None:
    if array.shape != expected:
        raise InputShapeError(f"{name} has shape {array.shape}, expected {expected}")


def _attr_value(value: Any) -> Any:
    """HDF5 attributes hold numbers, strings and arrays; dicts and lists travel as JSON."""
    if hasattr(value, "to_dict"):  # a SimulationConfig given as is
        value = value.to_dict()
    if isinstance(value, (dict, list, tuple)):
        return dumps_json(value, indent=None, sort_keys=True)
    if value is None:
        raise InputShapeError("shard attributes cannot be None")
    return value


def write_shard(
    path: str | os.PathLike,
    *,
    input_spikes: np.ndarray,
    soma_voltage: np.ndarray,
    output_spikes: np.ndarray,
    output_spike_times: Sequence[np.ndarray],
    nexus_voltage: np.ndarray,
    simulation_index: np.ndarray,
    segments: dict[str, np.ndarray],
    attrs: dict[str, Any],
    segment_voltages: np.ndarray | None = None,
    compression_level: int = 4,
) -> Path:
    """Validate and write one shard atomically; returns the final path.

    `attrs` must hold REQUIRED_ATTRS (config as SimulationConfig.to_dict()); schema_version,
    seed_rule, dt_ms, duration_ms and distance_origin are filled in unless given. Extra
    attributes are stored as they are (dicts and lists as JSON).
    """
    path = Path(path)

    # ---- validate everything before touching the disk
    missing = [k for k in SEGMENT_FIELDS if k not in segments]
    if missing:
        raise InputShapeError(f"segments table lacks field(s) {', '.join(missing)}")
    n_segments = len(segments["index"])
    seg = {}
    for key in SEGMENT_FIELDS:
        column = np.asarray(segments[key])
        _check_shape(f"segments[{key!r}]", column, (n_segments,))
        seg[key] = column.astype(str) if key in STRING_SEGMENT_FIELDS else column

    input_spikes = _as_bool("input_spikes", input_spikes)
    if input_spikes.ndim != 3 or input_spikes.shape[1] != 2 * n_segments:
        raise InputShapeError(
            f"input_spikes has shape {input_spikes.shape}, expected (n, {2 * n_segments}, T) for {n_segments} segments"
        )
    n, _, duration = input_spikes.shape
    if n == 0 or duration == 0:
        raise InputShapeError(f"input_spikes has shape {input_spikes.shape}: a shard needs at least one simulation and one bin")

    soma_voltage = np.asarray(soma_voltage, dtype=np.float32)
    nexus_voltage = np.asarray(nexus_voltage, dtype=np.float32)
    output_spikes = _as_bool("output_spikes", output_spikes)
    for name, array in (("soma_voltage", soma_voltage), ("nexus_voltage", nexus_voltage), ("output_spikes", output_spikes)):
        _check_shape(name, array, (n, duration))
    simulation_index = np.asarray(simulation_index)
    _check_shape("simulation_index", simulation_index, (n,))
    if simulation_index.dtype.kind not in "iu":
        raise InputShapeError(f"simulation_index must be integers, got dtype {simulation_index.dtype}")
    if len(output_spike_times) != n:
        raise InputShapeError(f"output_spike_times has {len(output_spike_times)} entries, expected {n}")
    spike_times = [np.asarray(t, dtype=np.float64).reshape(-1) for t in output_spike_times]
    if segment_voltages is not None:
        segment_voltages = np.asarray(segment_voltages, dtype=np.float32)
        _check_shape("segment_voltages", segment_voltages, (n, n_segments, duration))

    missing = [k for k in REQUIRED_ATTRS if k not in attrs]
    if missing:
        raise InputShapeError(f"shard attributes lack {', '.join(missing)}")
    if attrs["created_by"] not in CREATORS:
        raise InputShapeError(f"created_by must be one of {', '.join(CREATORS)}, got {attrs['created_by']!r}")
    all_attrs = {
        "schema_version": SCHEMA_VERSION,
        "seed_rule": SEED_RULE,
        "dt_ms": 1.0,
        "distance_origin": "soma(0.5)",
        **attrs,
        "duration_ms": int(duration),
    }
    if int(attrs.get("duration_ms", duration)) != duration:
        raise InputShapeError(f"attribute duration_ms = {attrs['duration_ms']} but the arrays have T = {duration}")
    if all_attrs["schema_version"] != SCHEMA_VERSION:
        raise InputShapeError(f"schema_version must be {SCHEMA_VERSION}")

    # ---- write under a temporary name, then rename: never a half-written shard
    compressed = {"compression": "gzip", "compression_opts": int(compression_level), "shuffle": True}
    with atomic_hdf5(path) as f:  # built in memory: a full disk is an OSError, never a crash in HDF5
        spikes = f.create_dataset("input_spikes", shape=input_spikes.shape, dtype=bool,
                                  chunks=(1, 2 * n_segments, duration), **compressed)
        _write_deflated_rows(spikes, input_spikes, int(compression_level))
        f.create_dataset("soma_voltage", data=soma_voltage)
        f.create_dataset("nexus_voltage", data=nexus_voltage)
        f.create_dataset("output_spikes", data=output_spikes)
        times = f.create_dataset("output_spike_times", shape=(n,), dtype=h5py.vlen_dtype(np.float64))
        for i, t in enumerate(spike_times):
            times[i] = t
        f.create_dataset("simulation_index", data=simulation_index.astype(np.int64))
        if segment_voltages is not None:
            f.create_dataset("segment_voltages", data=segment_voltages, chunks=(1, n_segments, duration), **compressed)
        group = f.create_group("segments")
        for key, column in seg.items():
            if key in STRING_SEGMENT_FIELDS:
                group.create_dataset(key, data=column.tolist(), dtype=h5py.string_dtype("utf-8"))
            else:
                group.create_dataset(key, data=column)
        for key, value in all_attrs.items():
            f.attrs[key] = _attr_value(value)
    return path


def _write_deflated_rows(dataset, array: np.ndarray, level: int) -> None:
    """Fill a (n, ...) bool dataset chunked one row per simulation, its chunks deflated on a pool of threads.

    HDF5 deflates chunk after chunk under h5py's lock, which made writing a 128 x 6 s shard
    (1 GB of input raster) take seconds on one core. zlib releases the GIL, so the chunks are
    deflated in parallel here and written as they are (direct chunk write): at levels 1-9 the
    same bytes as the dataset's own gzip filter, since shuffle leaves 1-byte values unchanged
    (tests/test_dataset.py checks it), and every reader decodes them through that filter.
    """
    import zlib
    from concurrent.futures import ThreadPoolExecutor

    def deflate(row: int) -> bytes:
        return zlib.compress(np.ascontiguousarray(array[row]).view(np.uint8), level)

    with ThreadPoolExecutor(max(1, min(len(array), available_cores()))) as pool:
        for row, chunk in enumerate(pool.map(deflate, range(len(array)))):
            dataset.id.write_direct_chunk((row,) + (0,) * (array.ndim - 1), chunk)


# --------------------------------------------------------------------------- opening and checking

def _open_h5(path: str | os.PathLike):
    return read_hdf5(path, "shard", rdcc_nbytes=CHUNK_CACHE_BYTES)


def _check_structure(f: h5py.File, path: Path) -> tuple[int, int]:
    """The schema checks shared by validate_shard and read_shard; returns (n, T)."""
    version = f.attrs.get("schema_version")
    if version is None:
        raise DatasetError(f"{path}: not a shard (no schema_version attribute)")
    if int(version) != SCHEMA_VERSION:
        raise DatasetError(f"{path}: schema_version {int(version)}, this code reads version {SCHEMA_VERSION}")
    for name in REQUIRED_DATASETS:
        if name not in f:
            raise DatasetError(f"{path}: missing dataset '{name}'")
    if "segments" not in f or any(k not in f["segments"] for k in SEGMENT_FIELDS):
        raise DatasetError(f"{path}: missing or incomplete 'segments' group")
    inputs = f["input_spikes"]
    if inputs.ndim != 3:
        raise DatasetError(f"{path}: input_spikes has shape {inputs.shape}, expected (n, rows, T)")
    n, rows, duration = inputs.shape
    n_segments = f["segments/index"].shape[0]
    if rows != 2 * n_segments:
        raise DatasetError(f"{path}: input_spikes has {rows} rows but the segment table has {n_segments} segments")
    for name in TRACE_DATASETS:
        if f[name].shape != (n, duration):
            raise DatasetError(f"{path}: inconsistent shapes: {name} is {f[name].shape}, input_spikes is {inputs.shape}")
    for name in ("output_spike_times", "simulation_index"):
        if f[name].shape != (n,):
            raise DatasetError(f"{path}: inconsistent shapes: {name} is {f[name].shape}, expected ({n},)")
    if "segment_voltages" in f and f["segment_voltages"].shape != (n, n_segments, duration):
        raise DatasetError(f"{path}: inconsistent shapes: segment_voltages is {f['segment_voltages'].shape}")
    if int(f.attrs.get("duration_ms", duration)) != duration:
        raise DatasetError(f"{path}: attribute duration_ms = {f.attrs['duration_ms']} but the arrays have T = {duration}")
    return n, duration


def validate_shard(path: str | os.PathLike, deep: bool = False) -> dict:
    """Check a shard's schema and that its voltages are finite; `deep` also decompresses every chunk.

    Returns {"simulations", "duration_ms"}. Raises DatasetError with a one-line message for a
    missing file, a file that is not HDF5 or is truncated, a missing dataset, inconsistent
    shapes, another schema version, or a NaN or infinite voltage (naming the simulation).
    The soma and nexus traces are small and always read; `deep` adds segment_voltages.
    """
    path = Path(path)
    with _open_h5(path) as f:
        n, duration = _check_structure(f, path)
        simulation_index = f["simulation_index"][()]
        for name in ("soma_voltage", "nexus_voltage"):
            _check_finite(f[name][()], name, simulation_index, path)
        if deep:
            for name in ("input_spikes", "segment_voltages"):
                if name in f:
                    for i in range(n):
                        block = f[name][i]
                        if name == "segment_voltages":
                            _check_finite(block[np.newaxis], name, simulation_index[i:i + 1], path)
            for name in REQUIRED_DATASETS[1:]:
                f[name][()]
    return {"simulations": n, "duration_ms": duration}


def _check_finite(traces: np.ndarray, name: str, simulation_index: np.ndarray, path: Path) -> None:
    """DatasetError naming the first simulation whose `traces` (one row per simulation) hold NaN or inf."""
    bad = ~np.isfinite(traces.reshape(len(traces), -1))
    rows = np.flatnonzero(bad.any(axis=1))
    if rows.size:
        row = int(rows[0])
        first = int(np.flatnonzero(bad[row])[0]) % traces.shape[-1]
        raise DatasetError(
            f"{path}: {name} of simulation {int(simulation_index[row])} (row {row}) is not finite: "
            f"{int(bad[row].sum())} NaN or infinite value(s), the first at t = {first} ms"
            + (f"; {rows.size - 1} more simulation(s) affected" if rows.size > 1 else "")
        )


@contextlib.contextmanager
def open_shard(path: str | os.PathLike) -> Iterator[h5py.File]:
    """The validated shard as a read-only h5py.File, for lazy window reads (f["input_spikes"][i, :, a:b])."""
    path = Path(path)
    with _open_h5(path) as f:
        _check_structure(f, path)
        yield f


# --------------------------------------------------------------------------- reading

@dataclass
class Shard:
    """One shard in memory. Arrays are numpy; `input_spikes` is None when read with inputs=False."""

    path: Path
    input_spikes: np.ndarray | None  # (n, 1278, T) bool
    soma_voltage: np.ndarray  # (n, T) float32 mV
    nexus_voltage: np.ndarray  # (n, T) float32 mV
    output_spikes: np.ndarray  # (n, T) bool
    output_spike_times: list[np.ndarray]  # n arrays of float64 ms
    simulation_index: np.ndarray  # (n,) int64
    segments: dict[str, np.ndarray]
    attrs: dict[str, Any] = field(default_factory=dict)
    segment_voltages: np.ndarray | None = None  # (n, 639, T) float32 mV

    @property
    def n_simulations(self) -> int:
        return int(self.soma_voltage.shape[0])

    @property
    def duration_ms(self) -> int:
        return int(self.soma_voltage.shape[1])


def read_attrs(f: h5py.File) -> dict[str, Any]:
    attrs = {key: plain(value) for key, value in f.attrs.items()}
    for key in ("config",):
        if isinstance(attrs.get(key), str):
            try:
                attrs[key] = json.loads(attrs[key])
            except json.JSONDecodeError:
                raise DatasetError(f"{f.filename}: attribute '{key}' is not valid JSON") from None
    return attrs


def read_shard_attrs(path: str | os.PathLike) -> dict[str, Any]:
    """Only the attributes of a validated shard (config parsed to a dict)."""
    path = Path(path)
    with _open_h5(path) as f:
        _check_structure(f, path)
        return read_attrs(f)


def read_segments(f: h5py.File) -> dict[str, np.ndarray]:
    group = f["segments"]
    table = {}
    for key in SEGMENT_FIELDS:
        if key in STRING_SEGMENT_FIELDS:
            table[key] = np.asarray(group[key].asstr()[()], dtype=str)
        else:
            table[key] = group[key][()]
    return table


def read_shard(path: str | os.PathLike, inputs: bool = True, segment_voltages: bool = True) -> Shard:
    """Load a whole shard into memory (inputs=False skips the large input raster)."""
    path = Path(path)
    with _open_h5(path) as f:
        _check_structure(f, path)
        return Shard(
            path=path,
            input_spikes=f["input_spikes"][()] if inputs else None,
            soma_voltage=f["soma_voltage"][()],
            nexus_voltage=f["nexus_voltage"][()],
            output_spikes=f["output_spikes"][()],
            output_spike_times=[np.asarray(t, dtype=np.float64) for t in f["output_spike_times"][()]],
            simulation_index=f["simulation_index"][()],
            segments=read_segments(f),
            attrs=read_attrs(f),
            segment_voltages=f["segment_voltages"][()] if (segment_voltages and "segment_voltages" in f) else None,
        )


def available_memory_bytes() -> int | None:
    """Memory this machine can still give (Linux MemAvailable), else its physical memory, else None."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def read_input_spikes(path: str | os.PathLike, dataset: str = "input_spikes", n_rows: int = N_INPUT_ROWS,
                      max_bytes: int | None = None) -> np.ndarray:
    """Input rasters to re-simulate, (n, n_rows, T) bool, from a shard or any HDF5 file holding `dataset`.

    A 2-D dataset (n_rows, T) is read as one simulation. Before reading, the memory the array
    needs is compared with `max_bytes` (default: the memory available now): a compressed file
    can hold a raster far larger than memory, and reading it would fail only after minutes.
    """
    path = Path(path)
    with read_hdf5(path, "input file") as f:
        if dataset not in f or not isinstance(f[dataset], h5py.Dataset):
            names = ", ".join(sorted(k for k in f if isinstance(f[k], h5py.Dataset))) or "none"
            raise DatasetError(f"{path}: no dataset '{dataset}' (datasets: {names})")
        ds = f[dataset]
        if ds.ndim not in (2, 3) or ds.shape[-2] != n_rows:
            raise InputShapeError(
                f"{path}:{dataset} has shape {ds.shape}, expected (n, {n_rows}, T) or ({n_rows}, T)"
            )
        # the array as stored, plus its bool copy unless it is bool already
        needed = ds.size * (ds.dtype.itemsize + (0 if ds.dtype == bool else 1))
        limit = available_memory_bytes() if max_bytes is None else max_bytes
        if limit is not None and needed > limit:
            raise InputShapeError(
                f"{path}:{dataset} has shape {ds.shape}: reading it needs {needed / 2**30:,.1f} GiB of memory, "
                f"more than the {limit / 2**30:,.1f} GiB available; split it into smaller files"
            )
        spikes = ds[()]
    if spikes.ndim == 2:
        spikes = spikes[np.newaxis]
    if spikes.dtype != bool:
        if spikes.dtype.kind not in "iuf" or not np.isin(spikes, (0, 1)).all():
            raise InputShapeError(f"{path}:{dataset} must hold 0/1 spikes, got dtype {spikes.dtype} with other values")
        spikes = spikes.astype(bool)
    if spikes.shape[2] == 0:
        raise InputShapeError(f"{path}:{dataset} has shape {spikes.shape}: no time bins")
    if spikes.shape[0] == 0:  # else predict writes empty arrays and reports success
        raise InputShapeError(f"{path}:{dataset} has shape {spikes.shape}: no simulations")
    return spikes


def list_shards(directory: str | os.PathLike) -> list[Path]:
    """The shard files of a dataset directory in order (temporary `.tmp` files are ignored)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise DatasetError(f"dataset directory not found: {directory}")
    shards = sorted(p for p in directory.glob(SHARD_GLOB) if p.is_file())
    if not shards:
        raise DatasetError(f"no shards ({SHARD_GLOB}) in {directory}")
    return shards


def resolve_shards(path: str | os.PathLike) -> list[Path]:
    """A shard file -> [it]; a directory -> its shards."""
    path = Path(path)
    if path.is_file():
        return [path]
    if path.is_dir():
        return list_shards(path)
    raise DatasetError(f"no such shard file or dataset directory: {path}")


# --------------------------------------------------------------------------- summary

def summarise(paths: Iterable[str | os.PathLike], inputs: bool = True, progress=None) -> dict:
    """Dataset statistics over shards: sizes, output firing, ISIs, soma voltage and input rates.

    `inputs=False` skips decompressing the input rasters (the slow part). `progress`, if
    given, is called once per shard with its path.
    """
    paths = [Path(p) for p in paths]
    if not paths:
        raise DatasetError("no shards to summarise")
    durations: set[int] = set()
    creators: set[str] = set()
    spike_counts: list[int] = []
    isis: list[np.ndarray] = []
    soma_sum = soma_sq = 0.0
    soma_count = 0
    excitatory: list[int] = []
    inhibitory: list[int] = []
    n_segments = None
    for path in paths:
        with _open_h5(path) as f:
            n, duration = _check_structure(f, path)
            durations.add(duration)
            creators.add(plain(f.attrs.get("created_by", "unknown")))
            n_segments = f["segments/index"].shape[0]
            for times in f["output_spike_times"][()]:
                times = np.asarray(times, dtype=np.float64)
                spike_counts.append(times.size)
                if times.size > 1:
                    isis.append(np.diff(np.sort(times)))
            soma = f["soma_voltage"][()].astype(np.float64)
            soma_sum += soma.sum()
            soma_sq += np.square(soma).sum()
            soma_count += soma.size
            if inputs:
                ds = f["input_spikes"]
                for i in range(n):  # one chunk (simulation) at a time keeps memory flat
                    sim = ds[i]
                    excitatory.append(int(np.count_nonzero(sim[:n_segments])))
                    inhibitory.append(int(np.count_nonzero(sim[n_segments:])))
        if progress is not None:
            progress(path)

    if len(durations) != 1:
        raise DatasetError(f"shards of different durations cannot be summarised together: {sorted(durations)} ms")
    duration = durations.pop()
    seconds = duration / 1000.0
    counts = np.asarray(spike_counts, dtype=np.float64)
    rates = counts / seconds
    all_isis = np.concatenate(isis) if isis else np.zeros(0)
    soma_mean = soma_sum / soma_count
    summary = {
        "shards": len(paths),
        "simulations": int(counts.size),
        "duration_ms": int(duration),
        "total_seconds": float(counts.size * seconds),
        "created_by": sorted(creators),
        "output_spikes": int(counts.sum()),
        "output_rate_hz_mean": float(rates.mean()),
        "output_rate_hz_std": float(rates.std()),
        "fraction_without_spikes": float(np.mean(counts == 0)),
        "isi_count": int(all_isis.size),
        "isi_mean_ms": float(all_isis.mean()) if all_isis.size else None,
        "isi_cv": float(all_isis.std() / all_isis.mean()) if all_isis.size and all_isis.mean() > 0 else None,
        "isi_min_ms": float(all_isis.min()) if all_isis.size else None,
        "soma_voltage_mean_mV": float(soma_mean),
        "soma_voltage_std_mV": float(math.sqrt(max(soma_sq / soma_count - soma_mean**2, 0.0))),
    }
    if inputs:
        exc = np.asarray(excitatory, dtype=np.float64)
        inh = np.asarray(inhibitory, dtype=np.float64)
        summary.update({
            "excitatory_spikes_per_simulation": float(exc.mean()),
            "inhibitory_spikes_per_simulation": float(inh.mean()),
            "excitatory_rate_hz_per_synapse": float(exc.mean() / n_segments / seconds),
            "inhibitory_rate_hz_per_synapse": float(inh.mean() / n_segments / seconds),
        })
    return summary
