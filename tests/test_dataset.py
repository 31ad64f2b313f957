"""The HDF5 shard schema: round trips, atomic writes, validation of damaged files, summaries, inspect."""

from __future__ import annotations

import json
import shutil

import h5py
import numpy as np
import pytest

import pipelines.__main__ as dispatcher
from common.files import temporary_path
from common.spikes import spike_raster
from simulation.config import SimulationConfig
from simulation.dataset import (
    SCHEMA_VERSION,
    list_shards,
    open_shard,
    read_input_spikes,
    read_shard,
    shard_path,
    summarise,
    validate_shard,
    write_shard,
)
from simulation.errors import DatasetError, InputShapeError
from test_common import damage_hdf5_groups

N_SEGMENTS = 639
DURATION = 200


def segment_table() -> dict[str, np.ndarray]:
    return {
        "index": np.arange(N_SEGMENTS),
        "section": np.array([f"dend[{i // 3}]" if i < 262 else f"apic[{(i - 262) // 3}]" for i in range(N_SEGMENTS)]),
        "x": np.tile([1 / 6, 0.5, 5 / 6], 213),
        "region": np.array(["basal"] * 262 + ["apical"] * 377),
        "distance_um": np.linspace(5.0, 1300.0, N_SEGMENTS),
        "length_um": np.linspace(1.7, 39.9, N_SEGMENTS),
    }


def shard_arrays(seed: int = 0, n: int = 3, duration: int = DURATION, segment_voltages: bool = False) -> dict:
    """Keyword arguments of write_shard: random inputs, voltages and known output spikes."""
    rng = np.random.default_rng(seed)
    spike_times = [np.array([10.0, 20.0, 40.0]), np.array([]), np.array([100.5])][:n]
    spike_times += [np.array([5.125 * (k + 1)]) for k in range(n - len(spike_times))]
    return {
        "input_spikes": rng.random((n, 2 * N_SEGMENTS, duration)) < 0.01,
        "soma_voltage": rng.normal(-70.0, 3.0, (n, duration)).astype(np.float32),
        "nexus_voltage": rng.normal(-72.0, 4.0, (n, duration)).astype(np.float32),
        "output_spikes": np.stack([spike_raster(t, duration) for t in spike_times]),
        "output_spike_times": spike_times,
        "simulation_index": np.arange(n) + 10 * seed,
        "segments": segment_table(),
        "attrs": {
            "config": SimulationConfig().to_dict(),
            "master_seed": 42,
            "shard_index": seed,
            "created_by": "simulate",
            "neuron_version": "9.0.2",
            "mechanisms_sha256": "ab" * 32,
            "morphology_sha256": "cd" * 32,
        },
        "segment_voltages": rng.normal(-70, 5, (n, N_SEGMENTS, duration)).astype(np.float32) if segment_voltages else None,
    }


@pytest.fixture
def shard_file(tmp_path):
    return write_shard(shard_path(tmp_path, 0), **shard_arrays(0), compression_level=1)


# --------------------------------------------------------------------------- round trip

@pytest.mark.parametrize("with_segment_voltages", [False, True])
def test_write_read_round_trip(tmp_path, with_segment_voltages):
    arrays = shard_arrays(1, segment_voltages=with_segment_voltages)
    path = write_shard(tmp_path / "shard_00001.h5", **arrays)
    assert [p.name for p in tmp_path.iterdir()] == ["shard_00001.h5"]  # no temporary file left

    shard = read_shard(path)
    assert np.array_equal(shard.input_spikes, arrays["input_spikes"]) and shard.input_spikes.dtype == bool
    for name in ("soma_voltage", "nexus_voltage"):
        assert getattr(shard, name).dtype == np.float32
        assert np.array_equal(getattr(shard, name), arrays[name])
    assert np.array_equal(shard.output_spikes, arrays["output_spikes"])
    assert len(shard.output_spike_times) == 3
    for got, want in zip(shard.output_spike_times, arrays["output_spike_times"]):
        assert got.dtype == np.float64 and np.array_equal(got, want)
    assert shard.simulation_index.dtype == np.int64 and list(shard.simulation_index) == [10, 11, 12]
    for key, column in segment_table().items():
        assert np.array_equal(shard.segments[key], column), key
    assert shard.segments["section"][300] == "apic[12]"
    if with_segment_voltages:
        assert np.array_equal(shard.segment_voltages, arrays["segment_voltages"])
    else:
        assert shard.segment_voltages is None

    attrs = shard.attrs
    assert attrs["config"] == SimulationConfig().to_dict()
    assert SimulationConfig.from_dict(attrs["config"]) == SimulationConfig()
    assert attrs["schema_version"] == SCHEMA_VERSION
    assert attrs["seed_rule"] == "SeedSequence([master_seed, simulation_index])"
    assert attrs["dt_ms"] == 1.0 and attrs["duration_ms"] == DURATION
    assert attrs["distance_origin"] == "soma(0.5)"
    assert attrs["master_seed"] == 42 and attrs["created_by"] == "simulate" and attrs["neuron_version"] == "9.0.2"
    assert shard.n_simulations == 3 and shard.duration_ms == DURATION

    assert read_shard(path, inputs=False).input_spikes is None
    assert validate_shard(path, deep=True) == {"simulations": 3, "duration_ms": DURATION}


def test_input_spikes_are_chunked_per_simulation_and_compressed(shard_file):
    with h5py.File(shard_file) as f:
        ds = f["input_spikes"]
        assert ds.chunks == (1, 1278, DURATION)
        assert ds.compression == "gzip" and ds.shuffle
        assert f["output_spike_times"].dtype.metadata["vlen"] == np.float64


@pytest.mark.parametrize("level", [0, 1, 4, 9])
def test_input_spikes_chunks_are_what_hdf5s_own_gzip_filter_writes(tmp_path, level):
    """write_shard deflates the rows itself (in threads) and writes the chunks directly: byte for byte
    what HDF5's shuffle + gzip pipeline writes for the same raster (level 0 stores the bytes in
    blocks of another size), and decoded by it as usual."""
    arrays = shard_arrays(3, n=5)
    path = write_shard(tmp_path / "shard_00003.h5", **arrays, compression_level=level)
    with h5py.File(tmp_path / "by_hdf5.h5", "w") as f:
        f.create_dataset("input_spikes", data=arrays["input_spikes"], chunks=(1, 1278, DURATION),
                         compression="gzip", compression_opts=level, shuffle=True)
    with h5py.File(path) as ours, h5py.File(tmp_path / "by_hdf5.h5") as theirs:
        assert ours["input_spikes"].compression_opts == level
        for row in range(5):
            mask, chunk = ours["input_spikes"].id.read_direct_chunk((row, 0, 0))
            assert mask == 0
            assert level == 0 or chunk == theirs["input_spikes"].id.read_direct_chunk((row, 0, 0))[1]
        assert np.array_equal(ours["input_spikes"][...], arrays["input_spikes"])


def test_open_shard_reads_windows_lazily(shard_file):
    whole = read_shard(shard_file)
    with open_shard(shard_file) as f:
        window = f["input_spikes"][2, :, 50:120]
        soma = f["soma_voltage"][1, 30:60]
    assert np.array_equal(window, whole.input_spikes[2, :, 50:120])
    assert np.array_equal(soma, whole.soma_voltage[1, 30:60])


# --------------------------------------------------------------------------- refusing bad arrays

@pytest.mark.parametrize("name, bad, message", [
    ("soma_voltage", np.zeros((3, DURATION + 1), np.float32), r"soma_voltage has shape \(3, 201\)"),
    ("input_spikes", np.zeros((3, 1277, DURATION), bool), r"input_spikes has shape \(3, 1277, 200\)"),
    ("input_spikes", np.full((3, 1278, DURATION), 2, np.int8), "0/1"),
    ("output_spike_times", [np.zeros(1)] * 2, "2 entries, expected 3"),
    ("simulation_index", np.arange(4), r"simulation_index has shape \(4,\)"),
    ("segment_voltages", np.zeros((3, 638, DURATION), np.float32), "segment_voltages has shape"),
])
def test_wrong_shapes_are_refused(tmp_path, name, bad, message):
    arrays = shard_arrays(0)
    arrays[name] = bad
    with pytest.raises(InputShapeError, match=message):
        write_shard(tmp_path / "shard_00000.h5", **arrays)
    assert list(tmp_path.iterdir()) == []


def test_missing_attributes_are_refused(tmp_path):
    arrays = shard_arrays(0)
    del arrays["attrs"]["morphology_sha256"]
    with pytest.raises(InputShapeError, match="morphology_sha256"):
        write_shard(tmp_path / "shard_00000.h5", **arrays)


def test_failed_write_leaves_no_file_and_keeps_the_old_shard(tmp_path):
    target = tmp_path / "shard_00000.h5"
    arrays = shard_arrays(0)
    arrays["attrs"]["unstorable"] = {1, 2}  # h5py cannot store a set: fails after the datasets are written
    with pytest.raises(TypeError):
        write_shard(target, **arrays)
    assert list(tmp_path.iterdir()) == []  # neither the shard nor its .tmp

    write_shard(target, **shard_arrays(0))
    before = target.read_bytes()
    with pytest.raises(TypeError):
        write_shard(target, **arrays)
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shard_00000.h5"]


# --------------------------------------------------------------------------- damaged files

def _single_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message
    return message


def test_truncated_shard_is_a_dataset_error(shard_file, tmp_path):
    truncated = tmp_path / "truncated.h5"
    data = shard_file.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    for check in (validate_shard, read_shard):
        with pytest.raises(DatasetError) as err:
            check(truncated)
        assert "truncated.h5" in _single_line(err)


def test_non_hdf5_and_missing_files_are_dataset_errors(tmp_path):
    text = tmp_path / "notes.h5"
    text.write_text("not an HDF5 file\n")
    with pytest.raises(DatasetError, match="not a readable HDF5 file") as err:
        validate_shard(text)
    _single_line(err)
    with pytest.raises(DatasetError, match="not found"):
        validate_shard(tmp_path / "absent.h5")


def _damage(path, action):
    with h5py.File(path, "a") as f:
        action(f)


@pytest.mark.parametrize("action, message", [
    (lambda f: f.__delitem__("nexus_voltage"), "missing dataset 'nexus_voltage'"),
    (lambda f: (f.__delitem__("soma_voltage"), f.create_dataset("soma_voltage", data=np.zeros((2, DURATION)))),
     "inconsistent shapes: soma_voltage"),
    (lambda f: (f.__delitem__("output_spikes"), f.create_dataset("output_spikes", data=np.zeros((3, 150), bool))),
     "inconsistent shapes: output_spikes"),
    (lambda f: f.attrs.__setitem__("schema_version", 2), "schema_version 2"),
    (lambda f: f.attrs.__delitem__("schema_version"), "no schema_version"),
])
def test_schema_violations_are_dataset_errors(shard_file, action, message):
    _damage(shard_file, action)
    with pytest.raises(DatasetError, match=message) as err:
        validate_shard(shard_file)
    _single_line(err)
    with pytest.raises(DatasetError):
        read_shard(shard_file)


# --------------------------------------------------------------------------- input files for re-simulation

def test_read_input_spikes_from_a_shard_and_from_a_bare_file(shard_file, tmp_path):
    expected = shard_arrays(0)["input_spikes"]
    assert np.array_equal(read_input_spikes(shard_file), expected)

    bare = tmp_path / "inputs.h5"
    with h5py.File(bare, "w") as f:
        f["input_spikes"] = expected.astype(np.uint8)
        f["one"] = expected[0]
    spikes = read_input_spikes(bare)
    assert spikes.dtype == bool and np.array_equal(spikes, expected)
    assert read_input_spikes(bare, dataset="one").shape == (1, 1278, DURATION)


def test_read_input_spikes_refuses_wrong_shapes_and_missing_datasets(tmp_path):
    path = tmp_path / "inputs.h5"
    with h5py.File(path, "w") as f:
        f["input_spikes"] = np.zeros((2, 1000, 50), bool)
        f["flat"] = np.zeros(1278, bool)
        f["counts"] = np.full((1, 1278, 10), 3, np.int32)
    with pytest.raises(InputShapeError, match=r"\(2, 1000, 50\)"):
        read_input_spikes(path)
    with pytest.raises(InputShapeError, match=r"\(1278,\)"):
        read_input_spikes(path, dataset="flat")
    with pytest.raises(InputShapeError, match="0/1"):
        read_input_spikes(path, dataset="counts")
    with pytest.raises(DatasetError, match="no dataset 'spikes'.*counts, flat, input_spikes"):
        read_input_spikes(path, dataset="spikes")
    with h5py.File(path, "w") as f:
        f["input_spikes"] = np.zeros((0, 1278, 50), bool)
    with pytest.raises(InputShapeError, match=r"\(0, 1278, 50\): no simulations"):
        read_input_spikes(path)
    with pytest.raises(DatasetError, match=r"^input file not found: .*absent\.h5$"):
        read_input_spikes(tmp_path / "absent.h5")


# --------------------------------------------------------------------------- directories and summaries

def test_list_shards_is_sorted_and_ignores_temporary_files(tmp_path):
    for index in (2, 0, 1):
        write_shard(shard_path(tmp_path, index), **shard_arrays(index), compression_level=1)
    temporary_path(shard_path(tmp_path, 3)).write_bytes(b"half written")
    (tmp_path / "shard_00004.h5.tmp").write_bytes(b"half written by an earlier version")
    (tmp_path / "notes.txt").write_text("x")
    assert [p.name for p in list_shards(tmp_path)] == ["shard_00000.h5", "shard_00001.h5", "shard_00002.h5"]

    with pytest.raises(DatasetError, match="not found"):
        list_shards(tmp_path / "missing")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DatasetError, match="no shards"):
        list_shards(empty)


def test_summarise_computes_rates_isis_and_input_volume(tmp_path):
    paths = [write_shard(shard_path(tmp_path, i), **shard_arrays(i), compression_level=1) for i in range(2)]
    summary = summarise(paths)
    # per shard: spikes at [10, 20, 40], none, [100.5] in 200 ms -> 15, 0, 5 Hz
    assert summary["shards"] == 2 and summary["simulations"] == 6 and summary["duration_ms"] == DURATION
    assert summary["output_spikes"] == 8
    assert summary["output_rate_hz_mean"] == pytest.approx(20 / 3)
    assert summary["output_rate_hz_std"] == pytest.approx(np.std([15, 0, 5, 15, 0, 5]))
    assert summary["fraction_without_spikes"] == pytest.approx(1 / 3)
    assert summary["isi_count"] == 4
    assert summary["isi_mean_ms"] == pytest.approx(15.0)
    assert summary["isi_cv"] == pytest.approx(5.0 / 15.0)
    assert summary["isi_min_ms"] == pytest.approx(10.0)

    arrays = [shard_arrays(i) for i in range(2)]
    soma = np.concatenate([a["soma_voltage"] for a in arrays]).astype(np.float64)
    assert summary["soma_voltage_mean_mV"] == pytest.approx(soma.mean())
    assert summary["soma_voltage_std_mV"] == pytest.approx(soma.std(), rel=1e-6)
    inputs = np.concatenate([a["input_spikes"] for a in arrays])
    excitatory = inputs[:, :N_SEGMENTS].sum(axis=(1, 2)).mean()
    assert summary["excitatory_spikes_per_simulation"] == pytest.approx(excitatory)
    assert summary["inhibitory_spikes_per_simulation"] == pytest.approx(inputs[:, N_SEGMENTS:].sum(axis=(1, 2)).mean())
    assert summary["excitatory_rate_hz_per_synapse"] == pytest.approx(excitatory / N_SEGMENTS / 0.2)
    assert "excitatory_spikes_per_simulation" not in summarise(paths, inputs=False)
    json.dumps(summary)  # plain JSON types only


# --------------------------------------------------------------------------- `python -m pipelines inspect`

@pytest.fixture
def cli(monkeypatch):
    """The real dispatcher, restricted to this module's verb (other verbs are other modules' business)."""
    monkeypatch.setattr(dispatcher, "VERBS", {"inspect": dispatcher.VERBS["inspect"]})
    return dispatcher.main


def test_inspect_prints_a_table_and_json(tmp_path, cli, capsys):
    for i in range(2):
        write_shard(shard_path(tmp_path, i), **shard_arrays(i), compression_level=1)
    assert cli(["inspect", str(tmp_path)]) == 0
    table = capsys.readouterr().out
    assert "simulations" in table and "6" in table and "ISI CV" in table and "excitatory input spikes" in table

    assert cli(["inspect", str(shard_path(tmp_path, 1)), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["simulations"] == 3 and summary["output_spikes"] == 4


def test_inspect_reports_a_damaged_shard_in_one_line(tmp_path, cli, capsys):
    good = write_shard(shard_path(tmp_path, 0), **shard_arrays(0), compression_level=1)
    broken = shard_path(tmp_path, 1)
    shutil.copy(good, broken)
    broken.write_bytes(broken.read_bytes()[:4000])
    assert cli(["inspect", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "shard_00001.h5" in err and "\n" not in err
    assert cli(["inspect", str(tmp_path / "nowhere")]) == 2


def test_inspect_reports_a_shard_with_damaged_metadata_in_one_line(tmp_path, cli, capsys):
    """A shard whose bytes were overwritten in place (same size, opens fine): h5py's RuntimeError at the
    first dataset looked up used to end inspect, fit and evaluate with a traceback."""
    path = write_shard(shard_path(tmp_path, 0), **shard_arrays(0), compression_level=1)
    damage_hdf5_groups(path)
    with pytest.raises(DatasetError, match="shard_00000.h5: cannot read shard") as err:
        validate_shard(path)
    _single_line(err)
    assert cli(["inspect", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "shard_00000.h5: cannot read shard (corrupt?)" in err and err.count("\n") == 1
    assert "Traceback" not in err


def test_non_finite_voltages_are_rejected_naming_the_simulation(tmp_path, cli, capsys):
    """Issue 9, defect 6: NaN in soma_voltage passed `inspect` ("nan mV") and reached evaluate and fit."""
    arrays = shard_arrays(2)  # simulations 20, 21, 22
    arrays["soma_voltage"][1, 57] = np.nan
    arrays["soma_voltage"][2, 3] = np.inf
    path = write_shard(shard_path(tmp_path, 2), **arrays, compression_level=1)
    with pytest.raises(DatasetError, match=r"soma_voltage of simulation 21 \(row 1\) is not finite: 1 NaN or "
                                           r"infinite value\(s\), the first at t = 57 ms; 1 more simulation"):
        validate_shard(path)
    assert cli(["inspect", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "simulation 21" in err and err.count("\n") == 1

    arrays = shard_arrays(3, segment_voltages=True)
    arrays["segment_voltages"][2, 100, 7] = -np.inf
    path = write_shard(tmp_path / "deep.h5", **arrays, compression_level=1)
    validate_shard(path)  # segment voltages are read only by a deep check (they are large)
    with pytest.raises(DatasetError, match=r"segment_voltages of simulation 32 \(row 0\) is not finite.*t = 7 ms"):
        validate_shard(path, deep=True)


def test_inspect_reports_shards_of_another_dataset(tmp_path, cli, capsys):
    """Issue 9, defect 1: two `simulate` runs with different seeds left a mixed directory that inspect accepted."""
    for i in range(3):
        write_shard(shard_path(tmp_path, i), **shard_arrays(i), compression_level=1)
    other = shard_arrays(3)
    other["attrs"]["config"]["dataset"]["seed"] = 8
    other["attrs"]["master_seed"] = 8
    write_shard(shard_path(tmp_path, 3), **other, compression_level=1)
    assert cli(["inspect", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "mixes shards of different datasets" in err
    assert "shard_00003.h5: [dataset].seed = 8 there, 0 in shard_00000.h5 and 2 other shard(s)" in err, err

    # a larger dataset (n_shards) or other workers is still one dataset
    grown = shard_arrays(3)
    grown["attrs"]["config"]["dataset"]["n_shards"] = 40
    grown["attrs"]["config"]["parallel"]["workers"] = 7
    write_shard(shard_path(tmp_path, 3), **grown, compression_level=1)
    assert cli(["inspect", str(tmp_path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["shards"] == 4
