"""Parallel dataset generation on real dask clusters with real NEURON workers.

One local cluster (2 single-threaded worker processes) serves the whole module; a tiny
dataset of 3 shards x 2 simulations x 300 ms is simulated once on it, uninterrupted, and
every other run (1 worker, resumed, killed workers, an external scheduler) must reproduce
its arrays exactly.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import pipelines.__main__ as dispatcher
from common.files import temporary_path
from simulation.cluster import close_client, make_client
from simulation.config import load_simulation_config
from simulation.dataset import read_shard
from simulation.errors import DatasetError
from simulation.inputs import generate_input_spikes, simulation_rng
from simulation.parallel import SimulationsFailed, generate_dataset
from simulation.plan import data_identity, inspect_output_dir, plan_shards
from simulation.tasks import TASK_PREFIX
from test_common import damage_hdf5_groups

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SEED = 7
# how long a killed worker's nanny may take to start a new one: seconds on an idle machine, more than a minute
# on a 2-core machine busy with other simulations (wait_for_workers returns as soon as both are back)
WORKER_RESTART_S = 240


def write_config(directory: Path, n_shards: int = 3, seed: int = SEED, duration_ms: int = 300, retries: int = 1,
                 extra: str = "", name: str = "tiny.toml") -> Path:
    """A dataset small enough for tests: 300 ms simulations at a fixed 0.1 ms step."""
    path = Path(directory) / name
    path.write_text(f"""
[solver]
method = "fixed"
dt_ms = 0.1

[inputs]
duration_ms = {duration_ms}

[dataset]
n_shards = {n_shards}
simulations_per_shard = 2
seed = {seed}

[parallel]
workers = 2
retries = {retries}
{extra}
""")
    return path


def assert_same_shards(paths_a, paths_b) -> None:
    """Every array and every attribute equal, shard by shard."""
    assert [Path(p).name for p in paths_a] == [Path(p).name for p in paths_b]
    for a, b in zip(paths_a, paths_b):
        shard_a, shard_b = read_shard(a), read_shard(b)
        for name in ("input_spikes", "soma_voltage", "nexus_voltage", "output_spikes", "simulation_index"):
            np.testing.assert_array_equal(getattr(shard_a, name), getattr(shard_b, name), err_msg=f"{a.name}: {name}")
        for times_a, times_b in zip(shard_a.output_spike_times, shard_b.output_spike_times):
            np.testing.assert_array_equal(times_a, times_b)
        for key in shard_a.segments:
            np.testing.assert_array_equal(shard_a.segments[key], shard_b.segments[key])
        # a shard written when the dataset had fewer shards says so in its config; nothing else may differ
        attrs_a, attrs_b = dict(shard_a.attrs), dict(shard_b.attrs)
        assert data_identity(attrs_a.pop("config")) == data_identity(attrs_b.pop("config"))
        assert attrs_a == attrs_b


def identity(path: Path) -> tuple[int, int]:
    """(inode, mtime_ns): changes if the file is rewritten, even with the same bytes."""
    stat = path.stat()
    return stat.st_ino, stat.st_mtime_ns


def subprocess_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(PROJECT_ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["NEURON_MODULE_OPTIONS"] = "-nogui"
    return env


def run_cli(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipelines", *args], cwd=PROJECT_ROOT, env=subprocess_env(),
                          capture_output=True, text=True, timeout=300, **kwargs)


# --------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def client():
    """Two single-threaded worker processes; a dying worker's simulation is retried once."""
    client = make_client(None, n_workers=2, retries=1)
    yield client
    close_client(client)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, client, morphology_path):
    """The tiny dataset, simulated once without interruption: (config path, config, shard paths)."""
    directory = tmp_path_factory.mktemp("reference")
    config_path = write_config(directory)
    config = load_simulation_config(config_path)
    paths = generate_dataset(config, directory / "data", morphology_path, client)
    return config_path, config, paths


def worker_pids(client) -> dict[str, int]:
    return client.run(os.getpid)


def kill_worker_running(client, simulation_index: int | None, stop: threading.Event, kills: list, times: int = 1) -> None:
    """Background thread: SIGKILL the worker process running simulation `simulation_index` (any if None), `times` times."""
    killed_addresses = set()  # a restarted worker comes back under a new address
    while len(kills) < times and not stop.is_set():
        for address, keys in client.processing().items():
            running = [k for k in keys if str(k).startswith(TASK_PREFIX)
                       and (simulation_index is None or str(k).split("-")[1] == str(simulation_index))]
            if running and address not in killed_addresses:
                try:
                    pid = client.run(os.getpid, workers=[address])[address]
                except Exception:  # the worker is already gone: look again
                    break
                os.kill(pid, signal.SIGKILL)
                killed_addresses.add(address)
                kills.append((running[0], pid))
                break
        time.sleep(0.01)


# --------------------------------------------------------------------------- the plan

def test_plan_shards_assigns_consecutive_simulations(tmp_path):
    config = load_simulation_config(write_config(tmp_path, n_shards=3))
    plans = plan_shards(config)
    assert [p.file_name for p in plans] == ["shard_00000.h5", "shard_00001.h5", "shard_00002.h5"]
    assert [p.simulation_indices for p in plans] == [(0, 1), (2, 3), (4, 5)]


# --------------------------------------------------------------------------- determinism

def test_reference_follows_the_seed_rule(reference):
    _, config, paths = reference
    assert [p.name for p in paths] == ["shard_00000.h5", "shard_00001.h5", "shard_00002.h5"]
    shard = read_shard(paths[1])
    np.testing.assert_array_equal(shard.simulation_index, [2, 3])
    is_basal = shard.segments["region"] == "basal"
    for row, index in enumerate(shard.simulation_index):
        # simulation i's inputs come from SeedSequence([seed, i]) alone, on whatever worker ran it
        expected = generate_input_spikes(config.inputs, shard.segments["length_um"], is_basal, simulation_rng(SEED, index))
        np.testing.assert_array_equal(shard.input_spikes[row], expected)
    assert not np.array_equal(shard.soma_voltage[0], shard.soma_voltage[1])
    assert shard.attrs["created_by"] == "simulate" and shard.attrs["master_seed"] == SEED


def test_one_worker_gives_the_same_dataset_as_two(reference, tmp_path, morphology_path):
    _, config, reference_paths = reference
    one_worker = make_client(None, n_workers=1)
    try:
        assert len(one_worker.nthreads()) == 1
        paths = generate_dataset(config, tmp_path / "data", morphology_path, one_worker)
    finally:
        close_client(one_worker)
    assert_same_shards(paths, reference_paths)


# --------------------------------------------------------------------------- resuming

def test_finished_shards_are_kept_and_the_dataset_can_grow(reference, client, tmp_path, morphology_path):
    config_path, _, reference_paths = reference
    out = tmp_path / "data"
    small = load_simulation_config(write_config(tmp_path, n_shards=1, name="small.toml"))
    [first] = generate_dataset(small, out, morphology_path, client)
    before = identity(first)
    stale = temporary_path(out / "shard_00001.h5")
    stale.write_bytes(b"half a shard from a killed run")
    older = out / "shard_00002.h5.tmp"  # the one temporary name of earlier versions
    older.write_bytes(b"half a shard")

    done = []
    paths = generate_dataset(load_simulation_config(config_path), out, morphology_path, client,
                             progress=lambda n, total: done.append((n, total)))
    assert identity(first) == before  # not rewritten
    assert not stale.exists() and not older.exists()
    assert done[0] == (2, 6) and done[-1] == (6, 6)  # the kept shard counts as done from the start
    assert_same_shards(paths, reference_paths)


def test_truncated_shard_is_simulated_again(reference, client, tmp_path, morphology_path):
    config_path, config, reference_paths = reference
    out = tmp_path / "data"
    shutil.copytree(reference_paths[0].parent, out)
    kept = identity(out / "shard_00000.h5")
    damaged = out / "shard_00001.h5"
    damaged.write_bytes(damaged.read_bytes()[: damaged.stat().st_size // 2])

    state = inspect_output_dir(config, out, morphology_path)
    assert [p.index for p in state.todo] == [1]
    assert "shard_00001.h5" in state.invalid and "truncated" in state.invalid["shard_00001.h5"]
    paths = generate_dataset(config, out, morphology_path, client)
    assert identity(out / "shard_00000.h5") == kept
    assert_same_shards(paths, reference_paths)


def test_a_shard_with_damaged_metadata_is_simulated_again(reference, tmp_path, morphology_path):
    """Bytes overwritten in place (the file opens): h5py's RuntimeError used to end a resumed simulate with a traceback."""
    _, config, reference_paths = reference
    out = tmp_path / "data"
    shutil.copytree(reference_paths[0].parent, out)
    damage_hdf5_groups(out / "shard_00001.h5")
    state = inspect_output_dir(config, out, morphology_path)
    assert [p.index for p in state.todo] == [1]
    assert state.invalid["shard_00001.h5"].startswith("cannot read shard (corrupt?)")


def test_another_dataset_in_the_output_directory_is_refused(reference, client, tmp_path, morphology_path):
    _, _, reference_paths = reference
    other = load_simulation_config(write_config(tmp_path, seed=SEED + 1))
    with pytest.raises(DatasetError, match=r"another dataset .*seed = 7 there, 8 in this config"):
        generate_dataset(other, reference_paths[0].parent, morphology_path, client)
    longer = load_simulation_config(write_config(tmp_path, duration_ms=400, name="longer.toml"))
    with pytest.raises(DatasetError, match=r"duration_ms = 300 there, 400 in this config"):
        inspect_output_dir(longer, reference_paths[0].parent, morphology_path)


# --------------------------------------------------------------------------- failures

def test_simulation_on_a_killed_worker_is_retried(reference, client, tmp_path, morphology_path):
    _, config, reference_paths = reference
    pids_before = set(worker_pids(client).values())
    stop, kills = threading.Event(), []
    killer = threading.Thread(target=kill_worker_running, args=(client, None, stop, kills), daemon=True)
    killer.start()
    try:
        paths = generate_dataset(config, tmp_path / "data", morphology_path, client)
    finally:
        stop.set()
        killer.join()
    assert len(kills) == 1 and kills[0][1] in pids_before
    client.wait_for_workers(2, timeout=WORKER_RESTART_S)  # the nanny restarted the killed worker
    assert kills[0][1] not in worker_pids(client).values()
    assert_same_shards(paths, reference_paths)


def test_simulation_failing_after_retries_is_reported_by_index_and_seed(reference, client, tmp_path, morphology_path):
    _, config, reference_paths = reference
    out = tmp_path / "data"
    client.wait_for_workers(2, timeout=WORKER_RESTART_S)
    stop, kills = threading.Event(), []
    # the cluster allows one retry: killing the worker under simulation 3 twice fails it for good
    killer = threading.Thread(target=kill_worker_running, args=(client, 3, stop, kills, 2), daemon=True)
    killer.start()
    try:
        with pytest.raises(SimulationsFailed) as failed:
            generate_dataset(config, out, morphology_path, client)
    finally:
        stop.set()
        killer.join()
    assert len(kills) == 2
    assert [f.simulation_index for f in failed.value.failures] == [3]
    message = str(failed.value)
    assert "simulation 3 (seed SeedSequence([7, 3])): KilledWorker" in message
    # the shards of the other simulations were written, the failed simulation's shard was not
    assert sorted(p.name for p in failed.value.written) == ["shard_00000.h5", "shard_00002.h5"]
    assert sorted(p.name for p in out.glob("shard_*")) == ["shard_00000.h5", "shard_00002.h5"]

    # a re-run simulates only the missing shard
    client.wait_for_workers(2, timeout=WORKER_RESTART_S)
    kept = identity(out / "shard_00000.h5")
    paths = generate_dataset(config, out, morphology_path, client)
    assert identity(out / "shard_00000.h5") == kept
    assert_same_shards(paths, reference_paths)


# --------------------------------------------------------------------------- the command line

def test_a_test_split_alone_equals_the_same_shard_of_the_whole_dataset(reference, client, tmp_path, morphology_path):
    """--shards -1: the last shard alone (e.g. to score a model on an earlier dataset's test split without its
    training data); the same run without it adds the others, and the whole equals a dataset made in one go."""
    config_path, config, reference_paths = reference
    out = tmp_path / "data"
    done = []
    [last] = generate_dataset(config, out, morphology_path, client, progress=lambda n, total: done.append((n, total)),
                              shards=[-1])
    assert last.name == "shard_00002.h5" and sorted(p.name for p in out.glob("shard_*.h5")) == ["shard_00002.h5"]
    assert done[-1] == (2, 2)
    assert_same_shards([last], reference_paths[-1:])
    before = identity(last)
    paths = generate_dataset(config, out, morphology_path, client)
    assert identity(last) == before  # kept, not simulated again
    assert_same_shards(paths, reference_paths)


def test_cli_simulates_only_the_shards_asked_for_and_refuses_one_outside_the_dataset(reference, tmp_path, capsys):
    config_path, _, reference_paths = reference
    done = run_cli("simulate", "--config", str(config_path), "--out", str(tmp_path / "data"), "--shards", "0", "-1")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "(only shards 0, 2)" in done.stdout and "2 shards, 4 of 4 simulations" in done.stdout
    assert sorted(p.name for p in (tmp_path / "data").glob("shard_*.h5")) == ["shard_00000.h5", "shard_00002.h5"]
    assert_same_shards(sorted((tmp_path / "data").glob("shard_*.h5")), [reference_paths[0], reference_paths[2]])
    code = dispatcher.main(["simulate", "--config", str(config_path), "--out", str(tmp_path / "other"), "--shards", "3"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: shard 3 is not in this dataset's 3 shards") and err.count("\n") == 1
    assert not (tmp_path / "other").exists()


def test_cli_reports_bad_input_on_one_line(tmp_path, capsys, morphology_path):
    typo = write_config(tmp_path, extra="", name="typo.toml")
    typo.write_text(typo.read_text().replace("seed = 7", "sead = 7"))
    cases = [
        (["--config", str(typo)], "unknown key 'sead'"),
        (["--config", str(tmp_path / "missing.toml")], "config file not found"),
        (["--config", str(write_config(tmp_path)), "--morphology", str(tmp_path / "no.asc")], "morphology file not found"),
    ]
    for args, message in cases:
        code = dispatcher.main(["simulate", *args, "--out", str(tmp_path / "data")])
        err = capsys.readouterr().err
        assert code == 2, args
        assert err.startswith("error: ") and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "data").exists()


def test_cli_resumes_after_being_killed(reference, tmp_path):
    config_path, _, reference_paths = reference
    out = tmp_path / "data"
    command = [sys.executable, "-m", "pipelines", "simulate", "--config", str(config_path), "--out", str(out), "--workers", "2"]
    # its own session, so that the kill takes the whole run down at once: client and workers
    run = subprocess.Popen(command, cwd=PROJECT_ROOT, env=subprocess_env(), start_new_session=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        # shards are written as they complete, not necessarily in order (a worker still
        # building its cell lets the other run ahead), so wait for the first of any
        while not list(out.glob("shard_*.h5")):
            assert run.poll() is None, "the run ended before writing its first shard"
            assert time.monotonic() < deadline, "no shard after 240 s"
            time.sleep(0.01)
        os.killpg(run.pid, signal.SIGKILL)
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
        run.wait()
    finished = {p.name: identity(p) for p in out.glob("shard_*.h5")}
    assert 1 <= len(finished) < 3, f"killed too late to test anything: {sorted(finished)}"

    resumed = run_cli("simulate", "--config", str(config_path), "--out", str(out), "--workers", "2")
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming: {len(finished)} of 3 shards already done" in resumed.stdout
    for name, before in finished.items():
        assert identity(out / name) == before, f"{name} was rewritten"
    assert not list(out.glob("*.tmp"))
    assert_same_shards(sorted(out.glob("shard_*.h5")), reference_paths)


def worker_processes(pid: int) -> list[int]:
    """The dask worker processes that process `pid` spawned (Linux /proc), not its other helpers."""
    workers = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            command = (stat.parent / "cmdline").read_bytes()
        except (OSError, ValueError):
            continue
        if parent == pid and b"spawn_main" in command:  # not multiprocessing's resource tracker
            workers.append(int(stat.parent.name))
    return workers


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds worker processes through /proc")
def test_cli_lists_failed_simulations_and_exits_1(reference, tmp_path):
    """Both workers killed mid-run with no retries allowed: the run goes on, lists what failed, keeps the rest."""
    config_path = write_config(tmp_path, retries=0, name="no_retries.toml")
    out = tmp_path / "data"
    stdout, stderr = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
    command = [sys.executable, "-m", "pipelines", "simulate", "--config", str(config_path), "--out", str(out), "--workers", "2"]
    with open(stdout, "w") as out_file, open(stderr, "w") as err_file:
        run = subprocess.Popen(command, cwd=PROJECT_ROOT, env=subprocess_env(), start_new_session=True,
                               stdout=out_file, stderr=err_file)
    try:
        deadline = time.monotonic() + 240
        while not list(out.glob("shard_*.h5")):
            assert run.poll() is None and time.monotonic() < deadline, "no shard written"
            time.sleep(0.01)
        # the first shard is out, 4 simulations are left: both workers are busy with one each
        victims = worker_processes(run.pid)
        assert len(victims) == 2
        for pid in victims:
            os.kill(pid, signal.SIGKILL)
        run.wait(timeout=240)  # the nanny restarts the workers, which finish the other simulations
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
        run.wait()
    output = stdout.read_text() + stderr.read_text()
    assert run.returncode == 1, output
    written = sorted(p.name for p in out.glob("shard_*.h5"))
    assert 1 <= len(written) < 3, output
    failed = [int(line.split()[1]) for line in output.splitlines() if line.startswith("  simulation ")]
    assert failed, output
    for index in failed:
        assert f"simulation {index} (seed SeedSequence([7, {index}])): KilledWorker" in output
        assert f"shard_{index // 2:05d}.h5" not in written
    assert f"{len(written)} shard(s) were written; re-run the same command to retry the others" in output


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_cli_on_an_external_scheduler_and_worker(reference, tmp_path, external_dask_cluster):
    """docs/cluster.md, for real: `dask scheduler` + `dask worker --nthreads 1`, then --scheduler."""
    _, _, reference_paths = reference
    address = external_dask_cluster("--nworkers", "1")
    config_path = write_config(tmp_path, n_shards=1, name="one_shard.toml")
    out = tmp_path / "data"
    result = run_cli("simulate", "--config", str(config_path), "--out", str(out), "--scheduler", address)
    assert result.returncode == 0, result.stderr + (tmp_path / "cluster.log").read_text()
    assert f"scheduler {address}: 1 workers, 1 threads" in result.stdout
    assert_same_shards(sorted(out.glob("shard_*.h5")), reference_paths[:1])


def test_cli_reports_an_unreachable_scheduler(tmp_path, capsys):
    import dask

    with dask.config.set({"distributed.comm.timeouts.connect": "2s"}):
        code = dispatcher.main(["simulate", "--config", str(write_config(tmp_path)), "--out", str(tmp_path / "data"),
                                "--scheduler", f"tcp://127.0.0.1:{free_port()}"])
    assert code == 2
    assert "cannot reach the dask scheduler" in capsys.readouterr().err


# --------------------------------------------------------------------------- one run per directory, full and read-only disks

def test_cli_refuses_a_directory_another_run_writes_into(reference, tmp_path, capsys):
    """Issue 9, defect 1: a second `simulate` (another seed) into the same directory mixed the datasets silently."""
    out = tmp_path / "data"
    code = ("import time; from common.locks import DirectoryLock; "
            f"DirectoryLock({str(out)!r}, 'simulate').acquire(); print('held', flush=True); time.sleep(120)")
    first = subprocess.Popen([sys.executable, "-c", code], cwd=PROJECT_ROOT, env=subprocess_env(),
                             stdout=subprocess.PIPE, text=True)
    try:
        assert first.stdout.readline().strip() == "held"  # a real run in another process, mid-way
        other_seed = write_config(tmp_path, seed=SEED + 1, name="other_seed.toml")
        assert dispatcher.main(["simulate", "--config", str(other_seed), "--out", str(out), "--workers", "1"]) == 2
        captured = capsys.readouterr()
        assert "local cluster" not in captured.out  # refused before any worker started
        assert captured.err.count("\n") == 1 and f"is in use by simulate (pid {first.pid} on {socket.gethostname()}" in captured.err
        assert not list(out.glob("shard_*"))
    finally:
        first.kill()
        first.wait()


def test_cli_on_a_full_disk_stops_with_one_line_and_keeps_finished_shards(reference, tmp_path):
    """Issue 9, defect 4: a full disk made `simulate` segfault (HDF5 met ENOSPC while closing a file).

    The disk is made "full" for the run with RLIMIT_FSIZE (no privileges needed): every write
    past 20 kB fails with EFBIG, as ENOSPC does; the tiny shards here are about 100 kB.
    """
    import resource

    config_path, _, reference_paths = reference
    out = tmp_path / "data"
    out.mkdir()
    shutil.copy(reference_paths[0], out / "shard_00000.h5")  # finished by an earlier run
    kept = identity(out / "shard_00000.h5")

    def small_disk():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a failing write, not a killed process
        resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))

    result = subprocess.run([sys.executable, "-m", "pipelines", "simulate", "--config", str(config_path), "--out", str(out),
                             "--workers", "1"], cwd=PROJECT_ROOT, env=subprocess_env(), capture_output=True, text=True,
                            timeout=300, preexec_fn=small_disk)
    assert result.returncode == 2, result.stderr[-3000:]
    error = result.stderr.strip().splitlines()[-1]  # after the progress bar
    assert error.startswith("error: cannot write ") and "File too large" in error and "intact" in error, error
    assert "Traceback" not in result.stderr, result.stderr
    assert identity(out / "shard_00000.h5") == kept
    assert sorted(p.name for p in out.iterdir()) == [".lock", "shard_00000.h5"]  # no temporary file left behind


@pytest.fixture
def read_only_directory(tmp_path):
    """A directory nobody may write into: permissions for a normal user; for root, a read-only tmpfs."""
    directory = tmp_path / "read_only"
    directory.mkdir()
    if os.geteuid() != 0:
        directory.chmod(0o555)
        yield directory
        directory.chmod(0o755)
        return
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(directory)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip("running as root without permission to mount: no way to make a read-only directory")
    try:
        yield directory
    finally:
        subprocess.run(["umount", str(directory)], check=True)


def test_cli_into_a_read_only_directory_fails_before_simulating(reference, read_only_directory, capsys):
    """Issue 9, defect 4: a read-only output directory gave a traceback, and only after all the computing."""
    config_path, _, _ = reference
    code = dispatcher.main(["simulate", "--config", str(config_path), "--out", str(read_only_directory), "--workers", "1"])
    captured = capsys.readouterr()
    assert code == 2 and "local cluster" not in captured.out
    assert captured.err.startswith(f"error: cannot write to {read_only_directory}: ") and captured.err.count("\n") == 1, \
        captured.err


def _batch_of_payloads(indices: tuple[int, ...], payload_bytes: int) -> list[dict]:
    """A task's results: one dict per simulation with an incompressible payload, as a GPU batch returns."""
    rng = np.random.default_rng(indices[0])
    return [{"simulation_index": i, "payload": rng.integers(0, 255, payload_bytes, dtype=np.uint8)} for i in indices]


def test_a_batch_spanning_many_shards_is_fetched_from_its_worker_once(tmp_path):
    """A GPU batch holds the simulations of many shards: the driver fetches its results once, not once
    per shard (with 16 shards per 2048-simulation batch that was 16 x 2 GB moved per batch), and still
    writes every shard with its own simulations, in order."""
    from simulation.parallel import run_shards
    from simulation.plan import ShardPlan
    from simulation.tasks import Task

    shards = [ShardPlan(k, tuple(range(4 * k, 4 * k + 4))) for k in range(6)]
    tasks = [Task(tuple(range(0, 12)), _batch_of_payloads, (tuple(range(0, 12)), 1 << 16)),
             Task(tuple(range(12, 24)), _batch_of_payloads, (tuple(range(12, 24)), 1 << 16))]
    client = make_client(None, n_workers=1, retries=0)
    fetched_keys: list[str] = []
    real_gather = client.gather

    def counting_gather(futures, *args, **kwargs):  # the real gather, recording what it was asked for
        fetched_keys.extend(future.key for future in futures)
        return real_gather(futures, *args, **kwargs)

    client.gather = counting_gather
    written = {}

    def write(shard, results):
        written[shard.index] = [(r["simulation_index"], int(r["payload"][:8].sum())) for r in results]
        return tmp_path / shard.file_name

    try:
        run_shards(client, tasks, shards, write, retries=0)
    finally:
        close_client(client)
    assert sorted(fetched_keys) == sorted(set(fetched_keys)) and len(fetched_keys) == 2  # each batch once
    expected = {r["simulation_index"]: int(r["payload"][:8].sum())
                for task in tasks for r in _batch_of_payloads(*task.args)}
    assert written == {shard.index: [(i, expected[i]) for i in shard.simulation_indices] for shard in shards}


def test_a_simulation_longer_than_the_schedulers_worker_ttl_is_not_taken_for_a_dead_worker(tmp_path):
    """NEURON's psolve holds the GIL for a whole simulation, so a worker sends no heartbeat while it runs one.
    With dask's worker-ttl (5 minutes by default; 2 s here) a longer simulation (a slow or busy core, long
    durations) got its live worker removed and restarted, over and over: make_client turns the ttl off (the
    nanny still sees a worker process die, and pc.timeout a stalled step)."""
    config = write_config(tmp_path, n_shards=1, duration_ms=3000, retries=0)
    env = dict(subprocess_env(), DASK_DISTRIBUTED__SCHEDULER__WORKER_TTL="2s")
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "pipelines", "simulate", "--config", str(config),
                           "--out", str(tmp_path / "data")], cwd=PROJECT_ROOT, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert len(list((tmp_path / "data").glob("shard_*.h5"))) == 1
    assert time.monotonic() - started > 4  # the simulations did outlast the ttl
