"""Convert the original NeuronIO pickle files (Beniaguev et al. 2021) into HDF5 shards.

Each NeuronIO file is a pickled dict {"Params": ..., "Results": {"listOfSingleSimulationDicts":
[...]}} written by Python 2 (protocol 2). Every simulation dict holds the input spike
times as {segment index: [times in ms]} for "exInputSpikeTimes" and "inhInputSpikeTimes",
the 1-ms soma and nexus traces ("somaVoltageLowRes", "nexusVoltageLowRes", float16), the
output spike times ("outputSpikeTimes", float16) and, when saved, the 639 dendritic traces
("dendriticVoltagesLowRes", float16). One pickle becomes one shard of the schema in
simulation/dataset.py.

Pickles can run arbitrary code when loaded, so they are read by an unpickler that admits
only the few globals plain containers and numpy arrays need; anything else is refused
before it is called.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import pickle
from pathlib import Path
from typing import Any, Callable

import numpy as np

from common.files import as_output_error, check_writable
from common.jsonio import plain
from common.spikes import spike_raster

from .config import DatasetConfig, InputConfig, RecordingConfig, SimulationConfig, SolverConfig
from .dataset import read_shard_attrs, shard_path, write_shard
from .errors import ConfigError, DatasetError

PICKLE_SUFFIXES = (".p", ".pkl", ".pickle")


# --------------------------------------------------------------------------- safe loading

def _numpy_core(submodule: str):
    """numpy 2 moved numpy.core to numpy._core; old pickles name the former."""
    try:
        return importlib.import_module(f"numpy._core.{submodule}")
    except ImportError:
        return importlib.import_module(f"numpy.core.{submodule}")


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    """Python 3 protocol-2 pickles store bytes as _codecs.encode(text, 'latin1'); nothing else is allowed."""
    if encoding.lower().replace("_", "-") not in ("latin1", "latin-1", "iso-8859-1") or not isinstance(text, str):
        raise pickle.UnpicklingError(f"refusing _codecs.encode with encoding {encoding!r}")
    return text.encode("latin1")


def _allowed_globals() -> dict[tuple[str, str], Any]:
    multiarray = _numpy_core("multiarray")
    numeric = _numpy_core("numeric")
    allowed: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("collections", "OrderedDict"): __import__("collections").OrderedDict,
        ("_codecs", "encode"): _latin1_encode,
    }
    for core in ("numpy.core", "numpy._core"):
        allowed[(f"{core}.multiarray", "_reconstruct")] = _empty_shell(multiarray._reconstruct)
        allowed[(f"{core}.multiarray", "scalar")] = multiarray.scalar
        allowed[(f"{core}.numeric", "_frombuffer")] = numeric._frombuffer  # protocol-5 pickles
    for name in ("set", "frozenset", "list", "dict", "tuple", "complex", "str", "int", "float", "bool"):
        allowed[("builtins", name)] = getattr(__import__("builtins"), name)
    for name in ("bytearray", "bytes"):
        allowed[("builtins", name)] = _sized_from_data(getattr(__import__("builtins"), name))
    return allowed


def _empty_shell(reconstruct):
    """numpy pickles an array as an empty shell (shape (0,)) filled by its state; a large shell is a pickle bomb."""
    def build(subtype, shape, dtype):
        if int(np.prod(shape, dtype=np.float64)) > 1:
            raise pickle.UnpicklingError(f"refusing an empty array of shape {shape}: numpy pickles never ask for one")
        return reconstruct(subtype, shape, dtype)
    return build


def _sized_from_data(make):
    """bytes / bytearray from the pickle's data only: bytes(10**12) would allocate a terabyte (a pickle bomb)."""
    def build(*args):
        if args and isinstance(args[0], int):
            raise pickle.UnpicklingError(f"refusing {make.__name__}({args[0]}): a size, not data (a pickle bomb?)")
        return make(*args)
    return build


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler for data only: plain containers, numbers, strings and numpy arrays."""

    def __init__(self, file, source: str, **kwargs):
        super().__init__(file, **kwargs)
        self._source = source
        self._allowed = _allowed_globals()

    def find_class(self, module: str, name: str):
        # Python 2 pickles name the builtins module __builtin__
        key = ("builtins" if module == "__builtin__" else module, name)
        if key not in self._allowed:
            raise DatasetError(
                f"refusing to load {self._source}: pickle references {module}.{name} "
                f"(only plain containers and numpy arrays are allowed)"
            )
        return self._allowed[key]

    def persistent_load(self, pid):
        raise DatasetError(f"refusing to load {self._source}: pickle uses persistent ids")


def load_neuronio_pickle(path: str | os.PathLike) -> dict:
    """Load one NeuronIO pickle safely; Python 2 strings are decoded as latin1 (as numpy expects)."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"NeuronIO file not found: {path}")
    try:
        with open(path, "rb") as handle:
            data = RestrictedUnpickler(handle, source=str(path), encoding="latin1").load()
    except DatasetError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError,
            UnicodeError, OverflowError) as err:
        raise DatasetError(f"{path}: not a readable NeuronIO pickle ({type(err).__name__}: {str(err)[:120]})") from None
    except (MemoryError, RecursionError) as err:
        raise DatasetError(f"refusing to load {path}: {_bomb(err)}") from None
    if not isinstance(data, dict) or "Params" not in data or "Results" not in data:
        raise DatasetError(f"{path}: not a NeuronIO file (expected a dict with 'Params' and 'Results')")
    # every element of a real file is stored in it, so its containers unfold to at most a few
    # elements per byte; shared references can make a 1-kB pickle unfold to 2**40 (a pickle bomb)
    limit = 1_000_000 + 4 * path.stat().st_size
    if _unfolded_size(data, limit) > limit:
        raise DatasetError(f"refusing to load {path}: its containers unfold to more than {limit:,} elements through "
                           f"shared references, more than a file of its size can hold (a pickle bomb?)")
    return data


def _unfolded_size(data: Any, limit: int) -> int:
    """The number of container elements met walking `data` as a tree (a shared object counts each time), up to `limit` + 1.

    Iterative, so deep nesting cannot overflow the stack; stops as soon as the count passes `limit`.
    """
    count, stack = 0, [data]
    while stack and count <= limit:
        value = stack.pop()
        if isinstance(value, dict):
            stack.extend(value.keys())
            stack.extend(value.values())
            count += len(value)
        elif isinstance(value, (list, tuple, set, frozenset)):
            stack.extend(value)
            count += len(value)
        else:
            count += 1  # a number, a string, a numpy array (its bytes are in the file)
    return count


def _bomb(err: BaseException) -> str:
    what = "more memory than this machine has" if isinstance(err, MemoryError) else "nesting too deep to follow"
    return f"its content needs {what} ({type(err).__name__}; a pickle bomb?)"


# --------------------------------------------------------------------------- conversion

def _get(mapping: dict, key: str, where: str, *alternatives: str):
    for k in (key, *alternatives):
        if k in mapping:
            return mapping[k]
    raise DatasetError(f"{where}: missing key '{key}'")


def _segment_table(params: dict, where: str) -> dict[str, np.ndarray]:
    """The segment table from NeuronIO's Params (distances there are from soma(0), spec 6.5)."""
    region = np.asarray([str(t) for t in _get(params, "allSegmentsType", where)], dtype=str)
    length = np.asarray(_get(params, "allSegmentsLength", where), dtype=np.float64)
    n = region.size
    if length.shape != (n,):
        raise DatasetError(f"{where}: allSegmentsLength has {length.size} entries for {n} segments")
    try:
        distance = np.asarray(_get(params, "allSegments_DistFromSoma", where, "allSegmentsDistFromSoma"), dtype=np.float64)
    except DatasetError:
        distance = np.full(n, np.nan)

    section = np.full(n, "", dtype=object)
    x = np.full(n, np.nan)
    if "allSegments_SectionInd" in params and "allSectionsType" in params:
        section_index = np.asarray(params["allSegments_SectionInd"], dtype=np.int64)
        section_type = [str(t) for t in params["allSectionsType"]]
        n_basal_sections = section_type.count("basal")
        for k in np.unique(section_index):
            rows = np.flatnonzero(section_index == k)
            name = f"dend[{k}]" if section_type[k] == "basal" else f"apic[{k - n_basal_sections}]"
            section[rows] = name
            # a section's segments come in increasing x, centred at (2j + 1) / (2 nseg)
            x[rows] = (2 * np.arange(rows.size) + 1) / (2 * rows.size)
    return {
        "index": np.arange(n, dtype=np.int64),
        "section": section.astype(str),
        "x": x,
        "region": region,
        "distance_um": distance,
        "length_um": length,
    }


def _spike_dict_to_raster(spike_times: dict, n_segments: int, duration: int, where: str) -> np.ndarray:
    raster = np.zeros((n_segments, duration), dtype=bool)
    for segment, times in spike_times.items():
        segment = int(segment)
        times = np.asarray(times, dtype=np.float64).reshape(-1)
        bins = times.astype(np.int64)
        if not 0 <= segment < n_segments or np.any(bins != times) or np.any((bins < 0) | (bins >= duration)):
            raise DatasetError(f"{where}: input spike times of segment {segment} are not whole ms in [0, {duration})")
        raster[segment, bins] = True
    return raster


def _small_params(params: dict) -> dict:
    """NeuronIO's own parameters that fit in an attribute: scalars, strings and short lists."""
    kept = {}
    for key, value in params.items():
        if isinstance(value, (np.ndarray, bytes)):
            continue  # data, not parameters
        value = plain(value)
        if isinstance(value, (bool, int, float, str)):
            kept[str(key)] = value
        elif isinstance(value, list) and len(value) <= 64 and all(isinstance(v, (bool, int, float, str)) for v in value):
            kept[str(key)] = value
    return kept


def _import_config(params: dict, duration: int, n: int, seed: int, segment_voltages: bool) -> dict:
    """A SimulationConfig describing the NeuronIO run as closely as the config can (CVode, its ranges)."""
    inputs = InputConfig(duration_ms=duration)
    ranges = {
        "rate_change_interval_ms": params.get("inst_rate_sampling_time_interval_options_ms"),
        "excitation_per_100ms": params.get("num_bas_ex_spikes_per_100ms_range"),
        "inhibition_minus_excitation_per_100ms": params.get("num_bas_ex_inh_spike_diff_per_100ms_range"),
    }
    for key, value in ranges.items():
        if value is None:
            continue
        try:
            value = tuple(type(getattr(inputs, key)[0])(v) for v in value)
            inputs = dataclasses.replace(inputs, **{key: value})
        except (ConfigError, ValueError, TypeError):
            pass  # keep the default; the original values are in the source_params attribute
    config = SimulationConfig(
        inputs=inputs,
        solver=SolverConfig(method="cvode"),
        recording=RecordingConfig(segment_voltages=segment_voltages),
        dataset=DatasetConfig(n_shards=1, simulations_per_shard=n, seed=max(seed, 0)),
    )
    return config.to_dict()


def convert_experiment(experiment: dict, source: str, shard_index: int, keep_segment_voltages: bool = True) -> dict:
    """The keyword arguments of write_shard for one loaded NeuronIO file."""
    params, results = experiment["Params"], experiment["Results"]
    simulations = _get(results, "listOfSingleSimulationDicts", f"{source} Results")
    if not simulations:
        raise DatasetError(f"{source}: the file holds no simulations")
    duration = int(round(float(_get(params, "totalSimDurationInSec", f"{source} Params")) * 1000))
    segments = _segment_table(params, f"{source} Params")
    n_segments = segments["index"].size
    n = len(simulations)

    input_spikes = np.zeros((n, 2 * n_segments, duration), dtype=bool)
    soma = np.zeros((n, duration), dtype=np.float32)
    nexus = np.zeros((n, duration), dtype=np.float32)
    output_spikes = np.zeros((n, duration), dtype=bool)
    spike_times = []
    has_dendrites = keep_segment_voltages and all("dendriticVoltagesLowRes" in s for s in simulations)
    dendrites = np.zeros((n, n_segments, duration), dtype=np.float32) if has_dendrites else None

    for i, sim in enumerate(simulations):
        where = f"{source} simulation {i}"
        input_spikes[i, :n_segments] = _spike_dict_to_raster(_get(sim, "exInputSpikeTimes", where), n_segments, duration, where)
        input_spikes[i, n_segments:] = _spike_dict_to_raster(_get(sim, "inhInputSpikeTimes", where), n_segments, duration, where)
        for name, target in (("somaVoltageLowRes", soma), ("nexusVoltageLowRes", nexus)):
            trace = np.asarray(_get(sim, name, where), dtype=np.float32).reshape(-1)
            if trace.size != duration:
                raise DatasetError(f"{where}: {name} has {trace.size} samples, expected {duration}")
            target[i] = trace
        # keep NeuronIO's float16 spike times (widened exactly to float64) and its bin rule
        times = np.asarray(_get(sim, "outputSpikeTimes", where), dtype=np.float64).reshape(-1)
        spike_times.append(times)
        output_spikes[i] = spike_raster(times, duration)
        if dendrites is not None:
            traces = np.asarray(sim["dendriticVoltagesLowRes"], dtype=np.float32)
            if traces.shape != (n_segments, duration):
                raise DatasetError(f"{where}: dendriticVoltagesLowRes has shape {traces.shape}, expected {(n_segments, duration)}")
            dendrites[i] = traces

    seed = int(params.get("randomSeed", -1))
    attrs = {
        "config": _import_config(params, duration, n, seed, dendrites is not None),
        "master_seed": seed,
        "shard_index": int(shard_index),
        "created_by": "import-neuronio",
        "seed_rule": "NeuronIO: numpy legacy np.random.seed(master_seed), one stream for the whole file",
        "neuron_version": "unknown (original NeuronIO simulation)",
        "mechanisms_sha256": "unknown",
        "morphology_sha256": "unknown",
        "distance_origin": "soma(0)",  # NeuronIO's allSegments_DistFromSoma (spec 6.5)
        "source_file": Path(source).name,
        "source_params": _small_params(params),
    }
    return {
        "input_spikes": input_spikes,
        "soma_voltage": soma,
        "nexus_voltage": nexus,
        "output_spikes": output_spikes,
        "output_spike_times": spike_times,
        # NeuronIO has no dataset-wide index: the position within the source file
        "simulation_index": np.arange(n, dtype=np.int64),
        "segments": segments,
        "attrs": attrs,
        "segment_voltages": dendrites,
    }


def find_neuronio_pickles(source: str | os.PathLike) -> list[Path]:
    """A pickle file -> [it]; a directory -> its *.p / *.pkl / *.pickle files, sorted by name."""
    source = Path(source)
    if source.is_file():
        return [source]
    if not source.is_dir():
        raise DatasetError(f"NeuronIO source not found: {source}")
    files = sorted(p for p in source.iterdir() if p.is_file() and p.suffix in PICKLE_SUFFIXES)
    if not files:
        raise DatasetError(f"no NeuronIO pickles ({', '.join('*' + s for s in PICKLE_SUFFIXES)}) in {source}")
    return files


def import_neuronio(
    source: str | os.PathLike,
    out_dir: str | os.PathLike,
    compression_level: int = 4,
    keep_segment_voltages: bool = True,
    progress: Callable[[Path, Path, str], None] | None = None,
) -> list[tuple[Path, str]]:
    """Convert every NeuronIO pickle of `source` into `out_dir/shard_NNNNN.h5` (sorted order).

    Resumable: a shard that already exists for the same source file is skipped. Returns
    [(shard path, "written" | "skipped")]; `progress(source, shard, status)` is called per file.
    """
    files = find_neuronio_pickles(source)
    out_dir = Path(out_dir)
    check_writable(out_dir)  # before converting, not after it
    done = []
    for k, pickle_path in enumerate(files):
        target = shard_path(out_dir, k)
        if target.exists():
            existing = read_shard_attrs(target).get("source_file")
            if existing != pickle_path.name:
                raise DatasetError(
                    f"{target} already exists but was converted from {existing!r}, not {pickle_path.name!r}; "
                    f"use an empty output directory"
                )
            status = "skipped"
        else:
            data = load_neuronio_pickle(pickle_path)
            try:
                arrays = convert_experiment(data, str(pickle_path), k, keep_segment_voltages)
            except (MemoryError, RecursionError) as err:  # a small file whose shared references unfold hugely
                raise DatasetError(f"refusing to convert {pickle_path}: {_bomb(err)}") from None
            del data
            with as_output_error(target):  # a full disk: one line, the shards written before it are kept
                write_shard(target, compression_level=compression_level, **arrays)
            status = "written"
        done.append((target, status))
        if progress is not None:
            progress(pickle_path, target, status)
    return done
