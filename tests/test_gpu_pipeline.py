"""`[solver] method = "gpu"` in the pipeline: simulate, resimulate and resume on real dask clusters.

On a machine without a GPU the engine runs on its CPU twin (`gpu_backend = "cpu"`), which is
the same program as the CUDA kernel (tests/test_gpu_engine_cuda.py checks that on a GPU): the
orchestration tested here, batches of simulations per task on workers that offer the resource
GPU=1, shards written as their simulations complete, is the one a GPU machine runs.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

import pipelines.__main__ as dispatcher
from simulation.cluster import close_client, make_client
from simulation.config import load_simulation_config
from simulation.dataset import read_shard
from simulation.errors import UserInputError
from simulation.gpu.engine import GPUEngine
from simulation.gpu.export import export_cell
from simulation.inputs import generate_input_spikes, simulation_rng
from simulation.parallel import generate_dataset, resimulate
from simulation.run import get_simulator

SEED = 11


def write_config(directory: Path, n_shards: int = 2, batch: int = 4, backend: str = "cpu", workers: int = 2) -> Path:
    """3 simulations per shard, GPU batches of 4: a batch spans two shards."""
    path = Path(directory) / "gpu.toml"
    path.write_text(f"""
[solver]
method = "gpu"
dt_ms = 0.025
scheme = "crank-nicolson"
gpu_backend = "{backend}"

[inputs]
duration_ms = 300
excitation_per_100ms = [600.0, 800.0]
inhibition_minus_excitation_per_100ms = [-600.0, -300.0]

[dataset]
n_shards = {n_shards}
simulations_per_shard = 3
seed = {SEED}

[parallel]
workers = {workers}
gpu_batch_size = {batch}
""")
    return path


@pytest.fixture(scope="module")
def reference(tmp_path_factory, morphology_path):
    """The dataset made once through the CLI, with 2 twin workers."""
    directory = tmp_path_factory.mktemp("gpu_pipeline")
    config_path = write_config(directory)
    out = directory / "data"
    assert dispatcher.main(["simulate", "--config", str(config_path), "--out", str(out),
                            "--morphology", str(morphology_path)]) == 0
    return config_path, sorted(out.glob("shard_*.h5"))


def test_dataset_is_the_engine_on_the_seeded_inputs(reference, morphology_path):
    """Simulation i of the shards is the engine run on SeedSequence([seed, i])'s inputs, in the right row."""
    config_path, paths = reference
    config = load_simulation_config(config_path)
    simulator = get_simulator(config, morphology_path)
    segments = simulator.segments
    rasters = np.stack([generate_input_spikes(config.inputs, segments.length_um, segments.is_basal, simulation_rng(SEED, i))
                        for i in range(6)])
    direct = GPUEngine(export_cell(simulator), config.solver, config.recording, backend="cpu").run(rasters)
    shards = [read_shard(p) for p in paths]
    assert [list(s.simulation_index) for s in shards] == [[0, 1, 2], [3, 4, 5]]
    soma = np.concatenate([s.soma_voltage for s in shards])
    assert np.array_equal(np.concatenate([s.input_spikes for s in shards]), rasters)
    assert np.array_equal(soma, np.stack([r.soma_voltage for r in direct]))
    assert sum(len(t) for s in shards for t in s.output_spike_times) >= 1, "the inputs should make the cell fire"
    assert shards[0].attrs["config"]["solver"]["method"] == "gpu"


def test_same_data_whatever_the_workers_and_batches(reference, tmp_path, morphology_path):
    """One worker and batches of 1 give the same bytes as two workers and batches of 4."""
    _, paths = reference
    config = load_simulation_config(write_config(tmp_path, batch=1, workers=1))
    client = make_client(gpu_devices=[""])
    try:
        again = generate_dataset(config, tmp_path / "data", morphology_path, client)
    finally:
        close_client(client)
    for a, b in zip(paths, again):
        shard_a, shard_b = read_shard(a), read_shard(b)
        for name in ("input_spikes", "soma_voltage", "nexus_voltage", "output_spikes"):
            np.testing.assert_array_equal(getattr(shard_a, name), getattr(shard_b, name))


def test_a_batch_draws_the_next_batch_inputs_while_it_simulates(reference, morphology_path):
    """simulate_seeded_batch(..., prefetch): the next batch's inputs are drawn ahead and then used as they are;
    a batch other than the one prefetched draws its own, and the results are those of the shards either way."""
    from simulation.gpu import worker
    from simulation.parallel import seeded_tasks
    from simulation.plan import plan_shards

    config_path, paths = reference
    config = load_simulation_config(config_path)
    simulations = [(i, config, i) for plan in plan_shards(config) for i in plan.simulation_indices]
    tasks = seeded_tasks(config, morphology_path, simulations)
    assert [t.simulation_indices for t in tasks] == [(0, 1, 2, 3), (4, 5)]  # batches of 4, one ahead
    assert [t.args[2:] for t in tasks] == [(((SEED, 0), (SEED, 1), (SEED, 2), (SEED, 3)), ((SEED, 4), (SEED, 5))),
                                           (((SEED, 4), (SEED, 5)), ())]
    assert [t.args[3] for t in seeded_tasks(config, morphology_path, simulations, n_gpu_workers=2)] == [(), ()]
    soma = np.concatenate([read_shard(p).soma_voltage for p in paths])
    first = worker.simulate_seeded_batch(config, str(morphology_path), ((SEED, 0), (SEED, 1)), prefetch=((SEED, 4), (SEED, 5)))
    ahead = {key[-1]: future for key, future in worker._prefetched.items()}
    assert sorted(ahead) == [4, 5]
    second = worker.simulate_seeded_batch(config, str(morphology_path), ((SEED, 4), (SEED, 5)))
    assert all(future.done() for future in ahead.values()) and not worker._prefetched
    drawn = [ahead[i].result()[1] for i in (4, 5)]  # the prefetched rasters are the ones returned
    assert all(r["packed_input_spikes"] is d for r, d in zip(second, drawn))
    worker.simulate_seeded_batch(config, str(morphology_path), ((SEED, 2),), prefetch=((SEED, 3),))
    third = worker.simulate_seeded_batch(config, str(morphology_path), ((SEED, 1),))  # (3,) went elsewhere: dropped
    assert not worker._prefetched
    for result in first + second + third:
        np.testing.assert_array_equal(result["soma_voltage"], soma[result["simulation_index"]])


def test_several_datasets_share_batches_and_each_gets_its_own_shards(reference, tmp_path, morphology_path):
    """simulate --dataset OVERLAY DIR (twice) --shards -1: the test splits of two datasets of different seeds and
    sizes in one run, in batches of 4 that span both (3 + 3 simulations); each directory holds what a run of its
    own would write: seed 11's last shard is the reference's, seed 12's the engine on SeedSequence([12, i])."""
    config_path, paths = reference
    overlays = []
    for seed, n_shards in ((SEED, 2), (12, 3)):
        overlays.append(tmp_path / f"seed{seed}.toml")
        overlays[-1].write_text(f"[dataset]\nseed = {seed}\nn_shards = {n_shards}\n")
    code = dispatcher.main(["simulate", "--config", str(config_path), "--dataset", str(overlays[0]), str(tmp_path / "a"),
                            "--dataset", str(overlays[1]), str(tmp_path / "b"), "--shards", "-1",
                            "--morphology", str(morphology_path)])
    assert code == 0
    assert [p.name for p in (tmp_path / "a").glob("shard_*.h5")] == ["shard_00001.h5"]
    assert [p.name for p in (tmp_path / "b").glob("shard_*.h5")] == ["shard_00002.h5"]
    ours, theirs = read_shard(tmp_path / "a" / "shard_00001.h5"), read_shard(paths[1])
    for name in ("input_spikes", "soma_voltage", "nexus_voltage", "output_spikes", "simulation_index"):
        np.testing.assert_array_equal(getattr(ours, name), getattr(theirs, name))
    assert ours.attrs["master_seed"] == SEED and ours.attrs["shard_index"] == 1

    other = read_shard(tmp_path / "b" / "shard_00002.h5")
    config = load_simulation_config([config_path, overlays[1]])
    simulator = get_simulator(config, morphology_path)
    segments = simulator.segments
    rasters = np.stack([generate_input_spikes(config.inputs, segments.length_um, segments.is_basal, simulation_rng(12, i))
                        for i in (6, 7, 8)])
    direct = GPUEngine(export_cell(simulator), config.solver, config.recording, backend="cpu").run(rasters)
    assert list(other.simulation_index) == [6, 7, 8] and other.attrs["master_seed"] == 12
    assert other.attrs["config"]["dataset"]["n_shards"] == 3 and other.attrs["shard_index"] == 2
    np.testing.assert_array_equal(other.input_spikes, rasters)
    np.testing.assert_array_equal(other.soma_voltage, np.stack([r.soma_voltage for r in direct]))
    # a run of its own finds seed 12's split done: the shard is the dataset's, not a look-alike
    again = dispatcher.main(["simulate", "--config", str(config_path), "--config", str(overlays[1]), "--out",
                             str(tmp_path / "b"), "--shards", "-1", "--morphology", str(morphology_path)])
    assert again == 0 and [p.name for p in (tmp_path / "b").glob("shard_*.h5")] == ["shard_00002.h5"]


@pytest.mark.parametrize("overlay,same_dir,named", [("[dataset]\nseed = 12\n[inputs]\nduration_ms = 200\n", False, "[inputs]"),
                                                    ("[dataset]\nseed = 12\n", True, "same directory")])
def test_datasets_that_cannot_share_a_run_are_one_line_errors(tmp_path, morphology_path, capsys, overlay, same_dir, named):
    config_path = write_config(tmp_path)
    (tmp_path / "other.toml").write_text(overlay)
    (tmp_path / "same.toml").write_text("")
    second = tmp_path / "a" if same_dir else tmp_path / "b"
    code = dispatcher.main(["simulate", "--config", str(config_path), "--dataset", str(tmp_path / "same.toml"), str(tmp_path / "a"),
                            "--dataset", str(tmp_path / "other.toml"), str(second), "--morphology", str(morphology_path)])
    assert code == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and named in error[0]
    assert not (tmp_path / "a").exists() or not list((tmp_path / "a").glob("shard_*.h5"))


def test_an_overlay_config_grows_the_dataset_as_one_file_would(reference, tmp_path, morphology_path):
    """--config BASE --config OVERLAY (configs/datasets/*.toml): the overlay's [dataset] n_shards, the base's
    everything else; the shards are those of the one-file config."""
    _, paths = reference
    base = write_config(tmp_path, n_shards=1)
    overlay = tmp_path / "two_shards.toml"
    overlay.write_text("[dataset]\nn_shards = 2\n")
    out = tmp_path / "data"
    assert dispatcher.main(["simulate", "--config", str(base), "--config", str(overlay), "--out", str(out),
                            "--morphology", str(morphology_path)]) == 0
    assert sorted(p.name for p in out.glob("shard_*.h5")) == [p.name for p in paths]
    for ours, theirs in zip(sorted(out.glob("shard_*.h5")), paths):
        np.testing.assert_array_equal(read_shard(ours).soma_voltage, read_shard(theirs).soma_voltage)


def test_resume_keeps_finished_shards(reference, tmp_path, morphology_path):
    _, paths = reference
    out = tmp_path / "data"
    first = write_config(tmp_path, n_shards=1)
    assert dispatcher.main(["simulate", "--config", str(first), "--out", str(out), "--morphology", str(morphology_path)]) == 0
    shard_0 = (out / "shard_00000.h5").read_bytes()
    second = write_config(tmp_path, n_shards=2)
    assert dispatcher.main(["simulate", "--config", str(second), "--out", str(out), "--morphology", str(morphology_path)]) == 0
    assert (out / "shard_00000.h5").read_bytes() == shard_0
    np.testing.assert_array_equal(read_shard(out / "shard_00001.h5").soma_voltage, read_shard(paths[1]).soma_voltage)


def test_resimulate_on_the_gpu_engine_reproduces_the_shard(reference, tmp_path, morphology_path):
    config_path, paths = reference
    out = tmp_path / "again.h5"
    assert dispatcher.main(["resimulate", str(paths[1]), str(out), "--config", str(config_path),
                            "--morphology", str(morphology_path)]) == 0
    original, again = read_shard(paths[1]), read_shard(out)
    np.testing.assert_array_equal(again.soma_voltage, original.soma_voltage)
    np.testing.assert_array_equal(again.simulation_index, original.simulation_index)


def test_local_gpu_workers_have_no_memory_limit():
    """A GPU worker holds a batch's inputs and results (GBs): dask's per-thread default limit would kill it."""
    client = make_client(gpu_devices=[""])
    try:
        [worker] = client.scheduler_info(n_workers=-1)["workers"].values()
        assert worker["resources"] == {"GPU": 1} and worker["memory_limit"] == 0
    finally:
        close_client(client)


def test_gpu_workers_keep_glibcs_adaptive_mmap_threshold():
    """dask's MALLOC_TRIM_THRESHOLD_ (set for every worker it spawns) would turn off glibc's adaptive mmap
    threshold; GPU workers, whose threads draw rasters of tens of large arrays, start without it, and
    CPU workers keep dask's setting. A CPU cluster started first leaves this process's environment
    as it was (a Nanny writes its settings into it), so a GPU cluster after it still starts without."""
    import os

    def environ():
        return os.environ.get("MALLOC_TRIM_THRESHOLD_"), os.environ.get("OMP_NUM_THREADS")

    here = environ()
    for kind, expected in (("cpu", ("65536", "1")), ("gpu", (None, "1"))):  # dask's other settings stay
        client = make_client(n_workers=1) if kind == "cpu" else make_client(gpu_devices=[""])
        try:
            assert list(client.run(environ).values()) == [expected], kind
        finally:
            close_client(client)
        assert environ() == here


def test_gpu_workers_start_without_it_after_a_cpu_worker_was_restarted():
    """A nanny that restarts a CPU worker (it died, or was restarted) writes MALLOC_TRIM_THRESHOLD_ into this process's
    environment after its cluster started; a GPU cluster started later still spawns its workers without it."""
    import os

    cpu = make_client(n_workers=1)
    try:
        cpu.restart()
    finally:
        close_client(cpu)
    gpu = make_client(gpu_devices=[""])
    try:
        assert list(gpu.run(lambda: os.environ.get("MALLOC_TRIM_THRESHOLD_")).values()) == [None]
    finally:
        close_client(gpu)


def test_gpu_tasks_need_gpu_workers(tmp_path, morphology_path):
    """A cluster whose workers offer no GPU is refused with a clear error, never left waiting."""
    config = load_simulation_config(write_config(tmp_path))
    client = make_client(n_workers=1)
    try:
        with pytest.raises(UserInputError, match="resource GPU"):
            generate_dataset(config, tmp_path / "data", morphology_path, client)
    finally:
        close_client(client)


def test_no_visible_gpu_is_a_one_line_error(tmp_path, morphology_path, monkeypatch, capsys):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    config_path = write_config(tmp_path, backend="cuda")
    code = dispatcher.main(["simulate", "--config", str(config_path), "--out", str(tmp_path / "data"),
                            "--morphology", str(morphology_path)])
    assert code == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "needs an NVIDIA GPU" in error[0]


@pytest.mark.parametrize("line,named", [('gpu_precision = "float16"', "gpu_precision"), ('gpu_math = "fastest"', "gpu_math"),
                                        ('gpu_launch = "3x32/2"', "gpu_launch")])
def test_bad_gpu_settings_are_config_errors(tmp_path, morphology_path, capsys, line, named):
    config_path = write_config(tmp_path)
    config_path.write_text(config_path.read_text().replace('gpu_backend = "cpu"', f'gpu_backend = "cpu"\n{line}'))
    code = dispatcher.main(["simulate", "--config", str(config_path), "--out", str(tmp_path / "data"),
                            "--morphology", str(morphology_path)])
    assert code == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and named in error[0]


def test_gpu_pipeline_matches_neuron_fixed_step(reference, tmp_path, morphology_path):
    """The same inputs through NEURON's fixed step (Crank-Nicolson, dt 0.025): within 1e-3 mV."""
    config_path, paths = reference
    shard = read_shard(paths[0])
    config = load_simulation_config(config_path)
    neuron = dataclasses.replace(config, solver=dataclasses.replace(config.solver, method="fixed"))
    client = make_client(n_workers=2)
    try:
        out = resimulate(neuron, shard.input_spikes, tmp_path / "neuron.h5", morphology_path, client)
    finally:
        close_client(client)
    assert np.max(np.abs(read_shard(out).soma_voltage - shard.soma_voltage)) < 1e-3


# --------------------------------------------------------------------------- workers that die, workers elsewhere

def test_a_killed_gpu_worker_loses_no_shard(reference, tmp_path, morphology_path):
    """SIGKILL the worker running a batch: the batch is run again on a (restarted) worker, the data are the same."""
    import os
    import signal
    import threading
    import time

    from simulation.tasks import TASK_PREFIX

    _, paths = reference
    config = load_simulation_config(write_config(tmp_path, batch=3))
    client = make_client(gpu_devices=["", ""], retries=1)
    kills, stop = [], threading.Event()

    def kill_one_running_batch():
        while not kills and not stop.is_set():
            for address, keys in client.processing().items():
                if any(str(k).startswith(TASK_PREFIX) for k in keys):
                    try:
                        pid = client.run(os.getpid, workers=[address])[address]
                    except Exception:  # noqa: BLE001  (gone already: look again)
                        break
                    os.kill(pid, signal.SIGKILL)
                    kills.append(pid)
                    break
            time.sleep(0.01)

    killer = threading.Thread(target=kill_one_running_batch, daemon=True)
    killer.start()
    try:
        again = generate_dataset(config, tmp_path / "data", morphology_path, client)
    finally:
        stop.set()
        killer.join()
        close_client(client)
    assert len(kills) == 1
    for a, b in zip(paths, again):
        np.testing.assert_array_equal(read_shard(a).soma_voltage, read_shard(b).soma_voltage)


def test_gpu_workers_on_an_external_scheduler(reference, tmp_path, external_dask_cluster):
    """docs/cluster.md's recipe: `dask scheduler`, `dask worker --nthreads 1 --resources GPU=1`, then --scheduler."""
    import os
    import subprocess
    import sys

    _, paths = reference
    project = Path(__file__).resolve().parents[1]
    env = dict(os.environ, NEURON_MODULE_OPTIONS="-nogui",
               PYTHONPATH=os.pathsep.join([str(project), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    address = external_dask_cluster("--resources", "GPU=1")
    config_path = write_config(tmp_path, n_shards=1)
    out = tmp_path / "data"
    result = subprocess.run([sys.executable, "-m", "pipelines", "simulate", "--config", str(config_path), "--out", str(out),
                             "--scheduler", address], cwd=project, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr + (tmp_path / "cluster.log").read_text()
    np.testing.assert_array_equal(read_shard(out / "shard_00000.h5").soma_voltage, read_shard(paths[0]).soma_voltage)


def test_the_neuronio_gpu_config_splits_its_simulations_into_equal_batches():
    """configs/neuronio_gpu.toml: equal GPU batches (a small remainder batch costs about as much GPU time as a
    full one), at least two so that the next batch's inputs are drawn while the GPU integrates one, and the
    setting chosen by the fidelity benchmark."""
    config = load_simulation_config(Path(__file__).resolve().parents[1] / "configs" / "neuronio_gpu.toml")
    total = config.dataset.n_shards * config.dataset.simulations_per_shard
    assert total % config.parallel.gpu_batch_size == 0 and total // config.parallel.gpu_batch_size >= 2
    assert (config.solver.method, config.solver.scheme, config.solver.dt_ms) == ("gpu", "crank-nicolson", 0.0125)
