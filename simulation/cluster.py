"""The dask side: start or join a cluster, and get its workers ready to simulate.

    make_client(scheduler_address, n_workers, retries)   a Client on a new LocalCluster or a running scheduler
    close_client(client)                                 close it (and the local cluster it started)
    prepare_workers(client, config, morphology)          compile here, check every worker, build the cell once
    gpu_workers(client)                                  how many workers offer a GPU

Worker processes inherit this process's environment and sys.path; workers started elsewhere
need the project installed (pip install -e .), see docs/cluster.md.
"""

from __future__ import annotations

import os
import subprocess
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from common.machine import available_cores
from .config import SimulationConfig
from .errors import UserInputError


# The dask resource a GPU worker offers and a GPU task asks for (one GPU each).
GPU_RESOURCE = "GPU"


def visible_gpus() -> list[str]:
    """The GPUs this machine lets a local cluster use: $CUDA_VISIBLE_DEVICES, else what nvidia-smi lists."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [d.strip() for d in listed.split(",") if d.strip() and d.strip() != "-1"]
    try:
        answer = subprocess.run(["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"],
                                capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [line.strip() for line in answer.stdout.splitlines() if line.strip()] if answer.returncode == 0 else []


def make_client(scheduler_address: str | None = None, n_workers: int = 0, retries: int = 2,
                gpu_devices: list[str] | None = None):
    """A dask Client: connected to `scheduler_address`, else to a new local cluster.

    The local cluster runs `n_workers` (0: one per core) single-threaded worker processes:
    NEURON is not thread-safe and a process holds one cell. With `gpu_devices` it runs one
    single-threaded worker per entry instead, offering the resource GPU=1 and pinned to that
    device with CUDA_VISIBLE_DEVICES (an empty entry: not pinned, for the engine's CPU twin).
    A simulation whose worker dies under it (out of memory, killed, a lost GPU) is restarted on
    another worker up to `retries` times (dask's allowed-failures; exceptions are retried by the
    driver's task retries). `client.cluster` is the local cluster (None for an existing
    scheduler), closed by close_client.
    """
    import logging

    import dask
    from distributed import Client, LocalCluster, Nanny, Scheduler, SpecCluster

    if scheduler_address:
        try:
            return Client(scheduler_address, timeout=dask.config.get("distributed.comm.timeouts.connect"))
        except (OSError, TimeoutError) as err:
            raise UserInputError(f"cannot reach the dask scheduler at {scheduler_address}: {err}") from None
    os.environ.setdefault("NEURON_MODULE_OPTIONS", "-nogui")  # no "no DISPLAY" banner from every worker
    settings = {
        # one task per free thread, the rest queued on the scheduler: an idle worker never
        # waits behind a busy one, and a dying worker takes only the simulation it was running
        "distributed.scheduler.worker-saturation": 1.0,
        "distributed.scheduler.allowed-failures": int(retries),
        # NEURON's psolve holds the GIL for a whole simulation, so a worker sends no heartbeat while it
        # runs one; with a ttl (dask's default: 5 minutes) a longer simulation (a slow or busy core, long
        # durations) got its live worker removed and the simulation restarted, until it failed as a
        # KilledWorker. The nanny still sees a worker process die, and pc.timeout a stalled step (run.py).
        "distributed.scheduler.worker-ttl": None,
    }
    # The workers' own logs stay quiet (CRITICAL only): whatever goes wrong in a task reaches the
    # client as its exception or as a lost worker, and the pipeline reports it in one line. What
    # the logs added was noise, e.g. a heartbeat traceback when a run stopping on an error closed
    # the scheduler while a worker was still inside a simulation.
    worker_logs = logging.CRITICAL
    with dask.config.set(settings), _parent_environ_restored(dask.config.get("distributed.nanny.pre-spawn-environ")):
        if gpu_devices is None:
            cluster = LocalCluster(
                n_workers=n_workers or available_cores(), threads_per_worker=1, processes=True,
                dashboard_address=":0", silence_logs=worker_logs,  # a free port: never clash with another cluster
            )
        else:
            if not gpu_devices:
                raise UserInputError("no GPU to start a GPU worker on")
            workers = {}
            for k, device in enumerate(gpu_devices):
                env = {"CUDA_VISIBLE_DEVICES": device} if device else {}
                # no memory limit: dask's default for a 1-thread worker is the machine's memory times its share
                # of the cores (8 GB of 128 GB on 16 cores), and a GPU worker holds a whole batch's inputs and
                # results in host memory (about 1.2 GB per 1000 x 6 s), twice while it draws the next batch
                workers[f"gpu-{device or k}"] = {"cls": Nanny, "options": {
                    "nthreads": 1, "resources": {GPU_RESOURCE: 1}, "env": env, "silence_logs": worker_logs,
                    "memory_limit": 0}}
            # dask starts worker processes with MALLOC_TRIM_THRESHOLD_=65536, which also turns off glibc's
            # adaptive mmap threshold: every array above 128 KB is then mapped and unmapped, and a GPU worker's
            # draw threads (tens of such arrays per raster) fault pages in all the time (2 busy cores: twice the
            # system CPU time, 1.0-1.1 against 1.4-2.0 rasters per second; bench/results/input_drawing.json).
            # GPU workers start without it.
            environ = {key: value for key, value in dask.config.get("distributed.nanny.pre-spawn-environ").items()
                       if key != "MALLOC_TRIM_THRESHOLD_"}
            # nor inherit it: a CPU cluster's nanny that restarted a dead worker wrote it into this process's
            # environment, after that cluster's start (put back on leaving the block)
            os.environ.pop("MALLOC_TRIM_THRESHOLD_", None)
            with dask.config.set({"distributed.nanny.pre-spawn-environ": environ}):
                cluster = SpecCluster(workers=workers, scheduler={"cls": Scheduler,
                                                                  "options": {"dashboard_address": ":0"}},
                                      silence_logs=worker_logs)
    return Client(cluster)


@contextmanager
def _parent_environ_restored(keys):
    """Put back this process's values of `keys` once the cluster has started.

    A dask Nanny writes its pre-spawn settings (MALLOC_TRIM_THRESHOLD_, OMP_NUM_THREADS, ...) into
    the environment of the process that starts it, where they stayed: a GPU cluster started after
    a CPU one in the same process then spawned its workers with MALLOC_TRIM_THRESHOLD_ all the same.
    """
    kept = {key: os.environ.get(key) for key in keys}
    try:
        yield
    finally:
        for key, value in kept.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def close_client(client) -> None:
    """Close the client and, if make_client started one, its local cluster."""
    cluster = getattr(client, "cluster", None)
    client.close()
    if cluster is not None:
        cluster.close()


def unique_token() -> str:
    """A short random word that makes this run's task keys unique on a shared scheduler."""
    return os.urandom(4).hex()


def gpu_workers(client) -> int:
    """How many of the cluster's workers offer a GPU."""
    workers = client.scheduler_info(n_workers=-1)["workers"].values()
    return sum(1 for w in workers if w.get("resources", {}).get(GPU_RESOURCE))


def prepare_workers(client, config: SimulationConfig, morphology: Path) -> dict[str, np.ndarray]:
    """Compile the mechanisms here (workers then only load them), check the workers, get the segment table."""
    from distributed import wait

    from .mechanisms import compile_mechanisms
    from .tasks import check_worker, describe_cell

    compile_mechanisms(coreneuron=config.solver.method == "coreneuron")
    try:
        answers = client.run(check_worker, str(morphology))
    except Exception as err:  # noqa: BLE001  (typically: the workers cannot import this project)
        raise UserInputError(
            f"the dask workers cannot run this project's code ({type(err).__name__}: {err}); install the "
            f"project in the workers' environment (pip install -e .), see docs/cluster.md"
        ) from None
    problems = {address: message for address, message in answers.items() if message}
    if problems:
        address, message = next(iter(problems.items()))
        raise UserInputError(f"dask worker {address}: {message}")
    if config.solver.method == "gpu":
        if not gpu_workers(client):
            raise UserInputError(f"[solver] method = \"gpu\" needs dask workers that offer the resource "
                                 f"{GPU_RESOURCE}=1, and none does (start one per GPU, docs/cluster.md)")
    future = client.submit(describe_cell, config, str(morphology), key=f"describe_cell-{unique_token()}", pure=False)
    wait([future])
    if future.status == "error":
        error = future.exception()
        if isinstance(error, UserInputError):  # e.g. a [cell] nexus_section the cell lacks
            raise error
        raise RuntimeError(f"building the cell on a worker failed: {type(error).__name__}: {error}")
    return future.result()
