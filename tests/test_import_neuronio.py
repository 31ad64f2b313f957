"""Importing NeuronIO pickles: structure, Python-2 pickles, resumability and refusing malicious pickles."""

from __future__ import annotations

import os
import pickle
import re
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import pipelines.__main__ as dispatcher
from simulation.dataset import read_shard
from simulation.errors import DatasetError
from simulation.neuronio_import import import_neuronio, load_neuronio_pickle

PROJECT_ROOT = Path(__file__).resolve().parents[1]
N_BASAL, N_APICAL = 262, 377
N_SEGMENTS = N_BASAL + N_APICAL
DURATION_S = 0.3
T = 300


# --------------------------------------------------------------------------- building NeuronIO files

class Python2StylePickler(pickle._Pickler):
    """Writes what Python 2's cPickle (protocol 2) with numpy 1.x wrote: str/bytes as BINSTRING,
    `__builtin__` and `numpy.core.multiarray` module names."""

    dispatch = pickle._Pickler.dispatch.copy()

    def _save_py2_str(self, obj):
        data = obj.encode("latin1") if isinstance(obj, str) else obj
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    dispatch[bytes] = _save_py2_str
    dispatch[str] = _save_py2_str

    def save_global(self, obj, name=None):
        module = obj.__module__.replace("numpy._core", "numpy.core").replace("builtins", "__builtin__")
        self.write(pickle.GLOBAL + f"{module}\n{name or obj.__qualname__}\n".encode())
        self.memoize(obj)


def segment_layout():
    """Sections of 3 or 1 segments (basal then apical), as NeuronIO's Params list them."""
    section_index, section_type, section_length, lengths, distance = [], [], [], [], []
    k = 0
    for region, n_segments in (("basal", N_BASAL), ("apical", N_APICAL)):
        left = n_segments
        while left:
            nseg = 3 if left >= 3 else 1
            length = 30.0 + 17.0 * nseg
            section_type.append(region)
            section_length.append(length)
            for j in range(nseg):
                section_index.append(k)
                lengths.append(length / nseg)
                distance.append(11.58 + 20.0 * k + length * (2 * j + 1) / (2 * nseg))
            left -= nseg
            k += 1
    return section_index, section_type, section_length, lengths, distance


def neuronio_experiment(seed: int, n_simulations: int = 3, dendrites: bool = True) -> tuple[dict, dict]:
    """A dict in exactly the NeuronIO file structure, and the truth to compare against."""
    rng = np.random.default_rng(seed)
    section_index, section_type, section_length, lengths, distance = segment_layout()
    simulations, truth = [], {"inputs": [], "soma": [], "nexus": [], "spikes": [], "dendrites": []}
    for i in range(n_simulations):
        raster = rng.random((2 * N_SEGMENTS, T)) < 0.02
        maps = []
        for block in (raster[:N_SEGMENTS], raster[N_SEGMENTS:]):
            rows, times = np.nonzero(block)  # numpy int64 keys and times, as the original script
            spike_map = {}
            for row, time in zip(rows, times):
                spike_map.setdefault(row, []).append(time)
            maps.append(spike_map)
        soma = rng.normal(-70, 4, T).astype(np.float16)
        nexus = rng.normal(-72, 4, T).astype(np.float16)
        out = (np.array([12.125, 150.5, 299.875]) if i == 0 else np.array([]) if i == 1 else np.array([3.0])).astype(np.float16)
        dvt = rng.normal(-70, 5, (N_SEGMENTS, T)).astype(np.float16)
        sim = {
            "recordingTimeHighRes": np.arange(0, T, 0.125).astype(np.float32),
            "somaVoltageHighRes": np.repeat(soma, 8),
            "nexusVoltageHighRes": np.repeat(nexus, 8),
            "recordingTimeLowRes": np.arange(T).astype(np.float32),
            "somaVoltageLowRes": soma,
            "nexusVoltageLowRes": nexus,
            "exInputSpikeTimes": maps[0],
            "inhInputSpikeTimes": maps[1],
            "outputSpikeTimes": out,
        }
        if dendrites:
            sim["dendriticVoltagesLowRes"] = dvt
        simulations.append(sim)
        for key, value in (("inputs", raster), ("soma", soma), ("nexus", nexus), ("spikes", out), ("dendrites", dvt)):
            truth[key].append(value)
    params = {
        "randomSeed": 1000 + seed,
        "numSimulations": n_simulations,
        "totalSimDurationInSec": DURATION_S,
        "collectAndSaveDVTs": dendrites,
        "numSamplesPerMS_HighRes": 8,
        "excitatorySynapseType": "NMDA",
        "inhibitorySynapseType": "GABA_A",
        "useActiveDendrites": True,
        "Ih_vshift": 0,
        "inst_rate_sampling_time_interval_options_ms": [25, 30, 35, 40, 45, 55, 60, 65, 70, 75, 80, 85, 90, 100, 150, 200, 300, 450],
        "num_bas_ex_spikes_per_100ms_range": [0, 800],
        "num_bas_ex_inh_spike_diff_per_100ms_range": [-600, 200],
        "num_apic_ex_spikes_per_100ms_range": [0, 800],
        "num_apic_ex_inh_spike_diff_per_100ms_range": [-600, 200],
        "allSectionsType": section_type,
        "allSections_DistFromSoma": [0.0] * len(section_type),
        "allSectionsLength": section_length,
        "allSegmentsType": ["basal"] * N_BASAL + ["apical"] * N_APICAL,
        "allSegmentsLength": lengths,
        "allSegments_DistFromSoma": distance,
        "allSegments_SectionDistFromSoma": [0.0] * N_SEGMENTS,
        "allSegments_SectionInd": section_index,
        "ISICV": 0.5,
        "listOfISIs": [138.375],
        "numOutputSpikesPerSim": [3, 0, 1][:n_simulations],
        "totalNumOutputSpikes": 4,
    }
    experiment = {"Params": params, "Results": {"listOfSingleSimulationDicts": simulations}}
    truth["params"] = params
    return experiment, truth


def write_pickle(path, obj, python2: bool = True):
    with open(path, "wb") as handle:
        if python2:
            Python2StylePickler(handle, protocol=2).dump(obj)
        else:
            pickle.dump(obj, handle, protocol=pickle.HIGHEST_PROTOCOL)


@pytest.fixture
def neuronio_dir(tmp_path):
    """Two NeuronIO files: a Python-2-style one and a Python 3 one."""
    source = tmp_path / "neuronio"
    source.mkdir()
    truths = []
    for seed, python2 in ((0, True), (1, False)):
        experiment, truth = neuronio_experiment(seed)
        write_pickle(source / f"exBas_0_800__sim_{seed}__randomSeed_{1000 + seed}.p", experiment, python2=python2)
        truths.append(truth)
    return source, truths


# --------------------------------------------------------------------------- conversion

def test_python2_style_pickle_loads_with_numpy_arrays(neuronio_dir):
    source, truths = neuronio_dir
    path = sorted(source.iterdir())[0]
    assert b"numpy.core.multiarray\n_reconstruct" in path.read_bytes()  # really the old module names
    experiment = load_neuronio_pickle(path)
    sim = experiment["Results"]["listOfSingleSimulationDicts"][0]
    assert sim["somaVoltageLowRes"].dtype == np.float16
    assert np.array_equal(sim["somaVoltageLowRes"], truths[0]["soma"][0])
    assert experiment["Params"]["excitatorySynapseType"] == "NMDA"


def test_import_converts_every_field(neuronio_dir, tmp_path):
    source, truths = neuronio_dir
    out = tmp_path / "shards"
    done = import_neuronio(source, out, compression_level=1)
    assert [(p.name, status) for p, status in done] == [("shard_00000.h5", "written"), ("shard_00001.h5", "written")]

    for k, truth in enumerate(truths):
        shard = read_shard(out / f"shard_{k:05d}.h5")
        assert shard.input_spikes.shape == (3, 1278, T)
        assert np.array_equal(shard.input_spikes, np.stack(truth["inputs"]))
        assert np.array_equal(shard.soma_voltage, np.stack(truth["soma"]).astype(np.float32))
        assert np.array_equal(shard.nexus_voltage, np.stack(truth["nexus"]).astype(np.float32))
        assert np.array_equal(shard.segment_voltages, np.stack(truth["dendrites"]).astype(np.float32))
        for got, want in zip(shard.output_spike_times, truth["spikes"]):
            assert got.dtype == np.float64 and np.array_equal(got, want.astype(np.float64))
        # float16 times keep their quantisation (299.875 -> 300.0), bins by int(t - 0.5)
        assert list(shard.output_spike_times[0]) == [12.125, 150.5, 300.0]
        assert list(np.flatnonzero(shard.output_spikes[0])) == [11, 150, 299]
        assert not shard.output_spikes[1].any()
        assert list(np.flatnonzero(shard.output_spikes[2])) == [2]
        assert list(shard.simulation_index) == [0, 1, 2]

        segments = shard.segments
        assert list(segments["region"][[0, 261, 262, 638]]) == ["basal", "basal", "apical", "apical"]
        assert list(segments["section"][[0, 1, 2, 3]]) == ["dend[0]", "dend[0]", "dend[0]", "dend[1]"]
        assert segments["section"][262] == "apic[0]"
        np.testing.assert_allclose(segments["x"][:3], [1 / 6, 0.5, 5 / 6])
        np.testing.assert_allclose(segments["length_um"], truth["params"]["allSegmentsLength"])
        np.testing.assert_allclose(segments["distance_um"], truth["params"]["allSegments_DistFromSoma"])

        attrs = shard.attrs
        assert attrs["created_by"] == "import-neuronio"
        assert attrs["distance_origin"] == "soma(0)"
        assert attrs["master_seed"] == 1000 + k and attrs["shard_index"] == k
        assert attrs["source_file"].endswith(f"randomSeed_{1000 + k}.p")
        assert attrs["config"]["inputs"]["duration_ms"] == T
        assert attrs["config"]["solver"]["method"] == "cvode"
        assert '"excitatorySynapseType": "NMDA"' in attrs["source_params"]


def test_import_is_resumable(neuronio_dir, tmp_path):
    source, _ = neuronio_dir
    out = tmp_path / "shards"
    import_neuronio(source, out, compression_level=1)
    first = out / "shard_00000.h5"
    stamp = first.stat().st_mtime_ns
    done = import_neuronio(source, out, compression_level=1)
    assert [status for _, status in done] == ["skipped", "skipped"]
    assert first.stat().st_mtime_ns == stamp


def test_import_without_segment_voltages(neuronio_dir, tmp_path):
    source, _ = neuronio_dir
    import_neuronio(sorted(source.iterdir())[0], tmp_path / "shards", keep_segment_voltages=False)
    assert read_shard(tmp_path / "shards" / "shard_00000.h5").segment_voltages is None


# --------------------------------------------------------------------------- malicious and broken pickles

class RunsAShellCommand:
    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


class CallsEval:
    def __init__(self, code):
        self.code = code

    def __reduce__(self):
        import builtins

        return builtins.eval, (self.code,)


def _payloads(sentinel):
    shell = RunsAShellCommand(f"touch {sentinel}")
    python = CallsEval(f"open({str(sentinel)!r}, 'w').close()")
    return {
        "system": {"Params": {}, "Results": {"listOfSingleSimulationDicts": [shell]}},
        "eval": {"Params": python, "Results": {}},
    }


@pytest.mark.parametrize("kind, reference", [("system", r"(os|posix)\.system"), ("eval", r"builtins\.eval")])
def test_malicious_pickle_is_refused_and_never_runs(tmp_path, kind, reference):
    sentinel = tmp_path / "payload_ran"
    path = tmp_path / "evil.p"
    write_pickle(path, _payloads(sentinel)[kind], python2=False)

    with pytest.raises(DatasetError, match=f"refusing to load .*evil.p: pickle references {reference}"):
        load_neuronio_pickle(path)
    with pytest.raises(DatasetError, match="refusing to load"):
        import_neuronio(path, tmp_path / "shards")
    assert not sentinel.exists()
    assert not (tmp_path / "shards").exists() or not any((tmp_path / "shards").iterdir())

    # the payload is real: an unrestricted pickle.load (in a throwaway process) does run it
    subprocess.run([sys.executable, "-c", f"import pickle; pickle.load(open({str(path)!r}, 'rb'))"],
                   capture_output=True, timeout=60)
    assert sentinel.exists()


def test_python2_builtins_are_mapped_and_still_restricted(tmp_path):
    path = tmp_path / "py2.p"
    payload = {"Params": {"tags": {1, 2}}, "Results": {"listOfSingleSimulationDicts": []}}
    write_pickle(path, payload, python2=True)
    assert b"__builtin__\nset" in path.read_bytes()
    assert load_neuronio_pickle(path)["Params"]["tags"] == {1, 2}

    evil = tmp_path / "py2_evil.p"
    evil.write_bytes(b"\x80\x02c__builtin__\neval\nq\x00U\x041+1q\x01\x85q\x02Rq\x03.")
    with pytest.raises(DatasetError, match=r"pickle references __builtin__\.eval"):
        load_neuronio_pickle(evil)


def test_garbage_and_wrong_structure_are_dataset_errors(tmp_path):
    garbage = tmp_path / "garbage.p"
    garbage.write_bytes(os.urandom(64) + b"not a pickle")
    with pytest.raises(DatasetError, match="garbage.p"):
        load_neuronio_pickle(garbage)
    plain = tmp_path / "list.p"
    write_pickle(plain, [1, 2, 3], python2=False)
    with pytest.raises(DatasetError, match="'Params' and 'Results'"):
        load_neuronio_pickle(plain)
    empty = tmp_path / "empty_dir"
    empty.mkdir()
    with pytest.raises(DatasetError, match="no NeuronIO pickles"):
        import_neuronio(empty, tmp_path / "out")


# --------------------------------------------------------------------------- `python -m pipelines import-neuronio`

@pytest.fixture
def cli(monkeypatch):
    """The real dispatcher, restricted to this module's verbs."""
    monkeypatch.setattr(dispatcher, "VERBS", {k: dispatcher.VERBS[k] for k in ("import-neuronio", "inspect")})
    return dispatcher.main


def test_cli_converts_and_inspects(neuronio_dir, tmp_path, cli, capsys):
    source, _ = neuronio_dir
    out = tmp_path / "shards"
    assert cli(["import-neuronio", str(source), str(out), "--compression-level", "1"]) == 0
    assert "2 shard(s) written" in capsys.readouterr().out
    assert cli(["import-neuronio", str(source), str(out)]) == 0
    assert "2 already present" in capsys.readouterr().out
    assert cli(["inspect", str(out), "--json"]) == 0
    assert '"simulations": 6' in capsys.readouterr().out


def test_a_full_disk_is_one_line_and_keeps_the_shards_already_converted(neuronio_dir, tmp_path, cli_on_a_full_disk):
    """A full disk while writing the second shard: exit 2 and one line naming it; the first shard is kept
    as it was and no partial file is left (RLIMIT_FSIZE below the shard's size, see conftest)."""
    source, _ = neuronio_dir
    out = tmp_path / "shards"
    import_neuronio(sorted(source.iterdir())[0], out, compression_level=1)  # the first file, converted earlier
    before = (out / "shard_00000.h5").read_bytes()
    assert len(before) > 20_000  # a shard does not fit under the limit below
    error = cli_on_a_full_disk("import-neuronio", str(source), str(out), "--compression-level", "1",
                               max_file_bytes=20_000)
    assert error.startswith(f"error: cannot write {out / 'shard_00001.h5'}: File too large; ") and "intact" in error
    assert [p.name for p in out.iterdir()] == ["shard_00000.h5"]
    assert (out / "shard_00000.h5").read_bytes() == before


def test_cli_refuses_a_malicious_pickle_with_exit_code_2(tmp_path, cli, capsys):
    sentinel = tmp_path / "payload_ran"
    write_pickle(tmp_path / "evil.p", _payloads(sentinel)["system"], python2=False)
    assert cli(["import-neuronio", str(tmp_path / "evil.p"), str(tmp_path / "shards")]) == 2
    last_line = capsys.readouterr().err.strip().splitlines()[-1]  # after the progress bar
    assert last_line.startswith("error: refusing to load") and "posix.system" in last_line
    assert not sentinel.exists()


# --------------------------------------------------------------------------- pickle bombs

class AsksForBytes:
    """bytes(10**13): a 40-byte pickle asking for 10 TB."""

    def __reduce__(self):
        return bytearray, (10**13,)


class AsksForAnEmptyArray:
    """numpy's own array constructor with a shape of 10**11 elements (numpy pickles use shape (0,))."""

    def __reduce__(self):
        from numpy._core.multiarray import _reconstruct

        return _reconstruct, (np.ndarray, (10**11,), b"b")


def billion_laughs_experiment() -> dict:
    """A valid experiment whose spike times are a 40-deep tree of shared lists: 1 kB on disk, 2**40 numbers unfolded."""
    experiment, _ = neuronio_experiment(0, n_simulations=1, dendrites=False)
    laughs = [1.0]
    for _ in range(40):
        laughs = [laughs, laughs]
    experiment["Results"]["listOfSingleSimulationDicts"][0]["exInputSpikeTimes"] = {0: laughs}
    return experiment


@pytest.mark.parametrize("payload, message", [
    (lambda: {"Params": AsksForBytes(), "Results": {}}, r"refusing bytearray\(10000000000000\): a size, not data"),
    (lambda: {"Params": AsksForAnEmptyArray(), "Results": {}}, r"refusing an empty array of shape \(100000000000,\)"),
    (billion_laughs_experiment, r"its containers unfold to more than [\d,]+ elements through shared references"),
])
def test_a_pickle_bomb_is_refused_in_one_line(tmp_path, payload, message):
    """Issue 9, defect 7: a small pickle that unfolds into more memory than the machine has gave a traceback
    (or got the process killed). The command runs with its address space capped at 4 GiB, so that a
    regression fails this test instead of exhausting the machine."""
    import resource

    bomb = tmp_path / "bomb.p"
    write_pickle(bomb, payload(), python2=False)
    assert bomb.stat().st_size < 200_000

    def capped():
        resource.setrlimit(resource.RLIMIT_AS, (4 * 2**30, 4 * 2**30))

    env = dict(os.environ, PYTHONPATH=str(PROJECT_ROOT))
    result = subprocess.run([sys.executable, "-m", "pipelines", "import-neuronio", str(bomb), str(tmp_path / "shards")],
                            cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=120, preexec_fn=capped)
    assert result.returncode == 2, result.stderr[-2000:]
    last_line = result.stderr.strip().splitlines()[-1]  # after the progress bar
    assert last_line.startswith("error: ") and "Traceback" not in result.stderr
    assert re.search(message, last_line), last_line
