"""The ground floor (common/): atomic writes, hashes, strict JSON, config tables, the spike raster."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from common.config import from_table, known_tables, read_toml, require
from common.errors import ConfigError, DatasetError, OutputError
from common.files import (as_output_error, atomic_hdf5, atomic_path, check_writable, file_sha256, read_hdf5, sha256_hex,
                          temporaries, temporary_path, write_text_atomic)
from common.locks import DirectoryLock, DirectoryLocked
from common.jsonio import dumps_json, plain, read_json, update_json_rows, write_json
from common.spikes import spike_raster

PROJECT_ROOT = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- files

def test_atomic_path_replaces_the_file_only_when_the_write_succeeds(tmp_path):
    target = tmp_path / "sub" / "result.txt"
    write_text_atomic(target, "first")
    assert target.read_text() == "first"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half of the second")
            raise RuntimeError("the writer died")
    assert target.read_text() == "first"  # the old content survives a failed write
    assert sorted(p.name for p in target.parent.iterdir()) == ["result.txt"]  # no temporary left


def test_temporary_names_are_unique_hidden_and_found_as_temporaries(tmp_path):
    target = tmp_path / "shard_00001.h5"
    names = {temporary_path(target).name for _ in range(100)}
    assert len(names) == 100  # two writers never share a temporary file
    name = names.pop()
    assert name.startswith(".shard_00001.h5.") and name.endswith(".tmp")
    assert not list(tmp_path.glob("shard_*.h5"))  # a reader's glob never matches it...
    (tmp_path / name).write_bytes(b"x")
    (tmp_path / "shard_00002.h5.tmp").write_bytes(b"x")  # the name of earlier versions
    (tmp_path / "shard_00003.h5").write_bytes(b"x")
    assert [p.name for p in temporaries(tmp_path, "shard_*.h5")] == [name, "shard_00002.h5.tmp"]  # ...but this does


def test_sha256_helpers_agree_with_hashlib(tmp_path):
    data = os.urandom(3 << 20)  # more than one 1 MiB block
    path = tmp_path / "blob"
    path.write_bytes(data)
    expected = hashlib.sha256(data).hexdigest()
    assert sha256_hex(data) == expected
    assert sha256_hex([data[:10], data[10:]]) == expected
    assert file_sha256(path) == expected


# --------------------------------------------------------------------------- strict JSON

def test_update_json_rows_replaces_rows_of_the_same_key_and_keeps_the_rest(tmp_path):
    path = tmp_path / "results" / "bench.json"
    update_json_rows(path, "rows", [{"k": 1, "v": "a"}, {"k": 2, "v": "b"}], key=lambda r: r["k"], updated="t0")
    write_json(path, {**json.loads(path.read_text()), "memory": [{"m": 1}], "note": "kept"})
    update_json_rows(path, "rows", [{"k": 2, "v": "c"}, {"k": 3, "v": "d"}], key=lambda r: r["k"], updated="t1")
    assert json.loads(path.read_text()) == {"rows": [{"k": 1, "v": "a"}, {"k": 2, "v": "c"}, {"k": 3, "v": "d"}],
                                            "updated": "t1", "memory": [{"m": 1}], "note": "kept"}


def test_a_damaged_json_file_is_a_one_line_dataset_error_and_is_not_replaced(tmp_path):
    path = tmp_path / "results.json"
    for damaged in (b'{"rows": [', b'\xff\xfe{"rows": []}'):  # cut short; not UTF-8
        path.write_bytes(damaged)
        with pytest.raises(DatasetError, match=r"results\.json: not valid JSON \(") as err:
            read_json(path)
        assert "\n" not in str(err.value)
        with pytest.raises(DatasetError):
            update_json_rows(path, "rows", [{"k": 1}], key=lambda r: r["k"])
        assert path.read_bytes() == damaged  # the rows it held are not thrown away


def test_strict_json_has_no_nan_and_no_numpy_types(tmp_path):
    value = {"auc": float("nan"), "rate": np.float32(2.5), "n": np.int64(3), "inf": -math.inf,
             "array": np.arange(3), "nested": [(np.float64("nan"), b"bytes")], "path": Path("a/b")}
    expected = {"auc": None, "rate": 2.5, "n": 3, "inf": None, "array": [0, 1, 2],
                "nested": [[None, "bytes"]], "path": "a/b"}
    assert json.loads(dumps_json(value)) == expected
    write_json(tmp_path / "x.json", value)
    text = (tmp_path / "x.json").read_text()
    assert "NaN" not in text and json.loads(text) == expected
    assert plain(np.array(4.0)) == 4.0 and isinstance(plain(np.array(4.0)), float)
    with pytest.raises(TypeError):
        dumps_json({"a set": {1, 2}})  # not JSON: an error, never a silent str()


# --------------------------------------------------------------------------- config tables

def test_each_side_owns_its_tables_and_unknown_tables_are_refused(tmp_path):
    owners = known_tables()
    assert owners["cell"] == owners["dataset"] == "simulation.config"
    assert owners["train"] == owners["data"] == owners["evaluate"] == owners["branch_elm"] == "surrogate.config"
    config = tmp_path / "c.toml"
    config.write_text("[dataset]\nseed = 1\n\n[train]\nepochs = 2\n")
    assert read_toml(config) == {"dataset": {"seed": 1}, "train": {"epochs": 2}}
    config.write_text("[dataset]\nseed = 1\n\n[trian]\nepochs = 2\n")
    with pytest.raises(ConfigError, match=r"unknown table \[trian\]"):
        read_toml(config)


def test_a_simulation_process_reads_a_whole_project_config_without_torch():
    """`simulate` reads configs/quick.toml ([train] and all) and must not pay for importing torch."""
    code = ("import sys; from simulation.config import load_simulation_config; "
            "load_simulation_config('configs/quick.toml'); "
            "assert 'torch' not in sys.modules and 'neuron' not in sys.modules, 'heavy import'")
    result = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)})
    assert result.returncode == 0, result.stderr


def test_simulation_configs_layer_and_a_typo_in_an_overlay_names_the_overlay(tmp_path):
    """`simulate --config configs/neuronio_gpu.toml --config configs/datasets/ten_thousand_simulations.toml`."""
    from simulation.config import load_simulation_config

    base = PROJECT_ROOT / "configs" / "neuronio_gpu.toml"
    overlay = PROJECT_ROOT / "configs" / "datasets" / "ten_thousand_simulations.toml"
    single, layered = load_simulation_config(base), load_simulation_config([base, overlay])
    assert (single.dataset.n_shards, layered.dataset.n_shards) == (48, 80)
    assert dataclasses.replace(layered, dataset=single.dataset) == single  # the overlay changes nothing else
    seeded = tmp_path / "seed.toml"
    seeded.write_text("[dataset]\nseed = 2026\n")
    both = load_simulation_config([base, overlay, seeded])
    assert (both.dataset.n_shards, both.dataset.seed, both.solver.method) == (80, 2026, "gpu")
    seeded.write_text("[dataset]\nsed = 2026\n")
    with pytest.raises(ConfigError, match=r"seed.toml \[dataset\]: unknown key 'sed'"):
        load_simulation_config([base, overlay, seeded])


def test_from_table_names_the_key_and_turns_range_checks_into_config_errors():
    @dataclasses.dataclass(frozen=True)
    class Table:
        rate: float = 1.0

        def __post_init__(self):
            require(self.rate > 0, f"rate must be positive, got {self.rate}")

    assert from_table(Table, {"rate": 2}, "f.toml [t]").rate == 2.0  # an int where a float is expected
    with pytest.raises(ConfigError, match=r"f.toml \[t\]: rate must be positive"):
        from_table(Table, {"rate": -1.0}, "f.toml [t]")
    with pytest.raises(ConfigError, match=r"f.toml \[t\]: unknown key 'rat'"):
        from_table(Table, {"rat": 1.0}, "f.toml [t]")


# --------------------------------------------------------------------------- spikes

def test_spike_raster_uses_the_neuronio_bin_rule():
    # bin int(t - 0.5), truncated toward zero: 0.25 -> 0, 1.0 -> 0, 1.499 -> 0, 1.5 -> 1, 10.0 -> 9
    raster = spike_raster(np.array([0.25, 1.0, 1.499, 1.5, 4.625, 10.0, 10.125, 5999.875]), 6000)
    assert raster.dtype == bool and raster.shape == (6000,)
    assert np.flatnonzero(raster).tolist() == [0, 1, 4, 9, 5999]
    assert not spike_raster(np.array([7000.0, -3.0]), 6000).any()  # outside [0, T): dropped


def test_a_config_that_is_not_utf8_is_a_config_error(tmp_path):
    config = tmp_path / "latin1.toml"
    config.write_bytes("[dataset]\nseed = 1  # café\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"latin1.toml: not UTF-8 text \(byte 0xe9 on line 2\)"):
        read_toml(config)


# --------------------------------------------------------------------------- the directory lock

def hold_lock_in_another_process(directory: Path) -> subprocess.Popen:
    """A real second process holding `directory`'s lock until it is killed."""
    code = ("import sys, time; from common.locks import DirectoryLock; "
            f"DirectoryLock({str(directory)!r}, 'simulate').acquire(); print('held', flush=True); time.sleep(120)")
    holder = subprocess.Popen([sys.executable, "-c", code], cwd=PROJECT_ROOT, stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)})
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_a_held_lock_is_refused_naming_its_owner_and_a_killed_owner_leaves_a_stale_lock(tmp_path):
    import socket

    directory = tmp_path / "data"
    holder = hold_lock_in_another_process(directory)
    try:
        with pytest.raises(DirectoryLocked, match=rf"in use by simulate \(pid {holder.pid} on {socket.gethostname()}"):
            DirectoryLock(directory, "simulate").acquire()
    finally:
        holder.kill()  # SIGKILL: the owner cannot clean up
        holder.wait()
    with DirectoryLock(directory, "simulate") as lock:
        assert lock.stale is not None and lock.stale["pid"] == holder.pid
        assert json.loads((directory / ".lock").read_text())["pid"] == os.getpid()
    assert (directory / ".lock").read_text() == ""  # released: free for the next run
    with DirectoryLock(directory, "simulate") as lock:
        assert lock.stale is None


def test_the_lock_is_reentrant_within_a_process(tmp_path):
    outer = DirectoryLock(tmp_path, "simulate").acquire()
    with DirectoryLock(tmp_path, "simulate"):  # the library inside the command line: no self-refusal
        pass
    assert (tmp_path / ".lock").read_text() != ""  # still held by the outer holder
    outer.release()
    assert (tmp_path / ".lock").read_text() == ""


def test_without_flock_the_owner_is_judged_by_host_and_pid(tmp_path, monkeypatch):
    """Some Lustre and NFS mounts have no flock: a live owner is still refused, a dead one is stale."""
    import errno
    import fcntl

    directory = tmp_path / "data"
    holder = hold_lock_in_another_process(directory)

    def no_flock(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    try:
        monkeypatch.setattr(fcntl, "flock", no_flock)
        with pytest.raises(DirectoryLocked, match=rf"pid {holder.pid}"):
            DirectoryLock(directory, "simulate").acquire()
    finally:
        holder.kill()
        holder.wait()
    with DirectoryLock(directory, "simulate") as lock:
        assert lock.stale["pid"] == holder.pid


def test_an_unwritable_place_is_an_output_error(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(OutputError, match="cannot write to"):
        check_writable(blocker / "data")  # a directory cannot be made inside a file
    with pytest.raises(OutputError, match="cannot write to"):
        DirectoryLock(blocker / "data", "simulate").acquire()


def test_a_failed_write_becomes_one_line_naming_the_file_and_other_errors_pass(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    target = blocker / "result.json"  # its directory cannot be made inside a file: a real OSError
    with pytest.raises(OutputError) as raised:
        with as_output_error(target):
            write_text_atomic(target, "{}")
    message = str(raised.value)
    assert message.startswith(f"cannot write {target}: ") and "intact" in message and "\n" not in message
    with pytest.raises(ValueError, match="not a write error"):  # only OSError is a failed write
        with as_output_error(target):
            raise ValueError("not a write error")


def test_read_hdf5_names_a_missing_truncated_or_foreign_file_in_one_line(tmp_path):
    path = tmp_path / "split.h5"
    with pytest.raises(DatasetError, match=r"^listops test split not found: .*split\.h5 \(run prepare-task\)$"):
        with read_hdf5(path, "listops test split", "run prepare-task"):
            pass
    with atomic_hdf5(path) as f:
        f["x"] = np.arange(1000.0)
    with read_hdf5(path, "listops test split") as f:
        assert f["x"][-1] == 999.0
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(DatasetError, match=r"split\.h5: not a readable HDF5 file \(truncated or corrupt\?\): .*; run prepare-task$") as err:
        with read_hdf5(path, "listops test split", "run prepare-task"):
            pass
    assert "\n" not in str(err.value)


def damage_hdf5_groups(path: Path) -> None:
    """Overwrite the signature of every group's symbol-table node: the file still opens, and h5py raises
    RuntimeError("... bad symbol table node signature") at the first name looked up in it."""
    path.write_bytes(path.read_bytes().replace(b"SNOD", b"XXXX"))


def test_read_hdf5_names_damaged_metadata_in_one_line_and_leaves_the_callers_errors_alone(tmp_path):
    path = tmp_path / "split.h5"
    with atomic_hdf5(path) as f:
        f["x"] = np.arange(1000.0)
    with pytest.raises(RuntimeError, match="the caller's"):  # not the file's fault: passed on as raised
        with read_hdf5(path, "listops test split"):
            raise RuntimeError("the caller's own error")
    with pytest.raises(KeyError):
        with read_hdf5(path, "listops test split"):
            {}["absent"]
    damage_hdf5_groups(path)
    with pytest.raises(DatasetError, match=r"split\.h5: cannot read listops test split \(corrupt\?\): .*symbol table"
                                           r".*; run prepare-task$") as err:
        with read_hdf5(path, "listops test split", "run prepare-task") as f:
            f["x"]
    assert "\n" not in str(err.value)
