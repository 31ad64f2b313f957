"""What several verbs share: the cluster options, starting a cluster, the progress bar, solver names.

Imports only the standard library at module top (the dispatcher imports every verb module
to build --help); dask and tqdm are imported where they are used.
"""

from __future__ import annotations

import argparse


def add_cluster_arguments(parser: argparse.ArgumentParser) -> None:
    """--scheduler / --workers / --gpus, for every verb that simulates (simulate, resimulate, validate)."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--scheduler", metavar="ADDRESS", default=None,
                       help="use a running dask scheduler, e.g. tcp://10.0.0.5:8786 (docs/cluster.md)")
    group.add_argument("--workers", type=int, metavar="N", default=None,
                       help="local worker processes (default: [parallel] workers, 0 = one per core; "
                            "[solver] method = \"gpu\": one per GPU)")
    parser.add_argument("--gpus", type=int, metavar="N", default=None,
                        help="[solver] method = \"gpu\": use N of the visible GPUs, one worker each "
                             "(default: [parallel] gpus, 0 = all)")


def _local_gpu_devices(args, config) -> list[str]:
    """One entry per GPU worker of a local cluster: the devices to pin, or "" for the engine's CPU twin."""
    from simulation.cluster import visible_gpus
    from simulation.errors import UserInputError

    if config.solver.gpu_backend == "cpu":  # the CPU twin: workers as asked, no device
        return [""] * (args.workers or config.parallel.workers or 1)
    devices = visible_gpus()
    if not devices:
        raise UserInputError("[solver] method = \"gpu\" needs an NVIDIA GPU and none is visible (nvidia-smi, "
                             "CUDA_VISIBLE_DEVICES); [solver] gpu_backend = \"cpu\" runs the engine's CPU twin instead")
    wanted = args.gpus or config.parallel.gpus or len(devices)
    if wanted > len(devices):
        raise UserInputError(f"{wanted} GPUs asked for, {len(devices)} visible ({', '.join(devices)})")
    return devices[:wanted]


def start_cluster(args, config):
    """The dask client for --scheduler / --workers / --gpus / [parallel], with a one-line description."""
    from common.machine import available_cores
    from simulation.cluster import make_client
    from simulation.errors import UserInputError

    for name in ("workers", "gpus"):
        value = getattr(args, name, None)
        if value is not None and value < 1:
            raise UserInputError(f"--{name} must be at least 1, got {value}")
    gpu_devices = None
    if config.solver.method == "gpu" and not args.scheduler:
        gpu_devices = _local_gpu_devices(args, config)
    n_workers = args.workers or config.parallel.workers or available_cores()
    client = make_client(args.scheduler, n_workers, retries=config.parallel.retries, gpu_devices=gpu_devices)
    if args.scheduler:
        if not client.scheduler_info(n_workers=-1)["workers"]:
            print(f"waiting for workers to join {args.scheduler} ...", flush=True)
            client.wait_for_workers(1)
        n_threads = sum(client.nthreads().values())
        where = f"scheduler {args.scheduler}: {len(client.nthreads())} workers, {n_threads} threads"
    elif gpu_devices is not None:
        pinned = [d for d in gpu_devices if d]
        where = (f"local cluster: {len(gpu_devices)} GPU worker(s), GPU {', '.join(pinned)}" if pinned else
                 f"local cluster: {len(gpu_devices)} worker(s) running the GPU engine's CPU twin")
    else:
        where = f"local cluster: {n_workers} worker processes x 1 thread"
    try:
        import bokeh  # noqa: F401  (the dashboard needs it)

        where += f", dashboard {client.dashboard_link}"
    except ImportError:
        pass
    return client, where


class ProgressBar:
    """A tqdm bar driven by progress(done, total) callbacks.

    The bar is made at the first call, with the work finished by an earlier run as its
    `initial`, so that its rate and ETA count only this run's simulations.
    """

    def __init__(self, description: str, unit: str = "sim"):
        self.description, self.unit, self.bar = description, unit, None

    def __call__(self, done: int, total: int) -> None:
        from tqdm import tqdm

        if self.bar is None:
            self.bar = tqdm(desc=self.description, unit=self.unit, total=total, initial=done,
                            dynamic_ncols=True, smoothing=0.05)
        else:
            self.bar.update(done - self.bar.n)

    def __enter__(self) -> "ProgressBar":
        return self

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.close()


class TrainingBars:
    """Two tqdm bars for a training run (epochs; batches of the current epoch), driven by the
    `progress(event, info)` callbacks of surrogate.train.fit and surrogate.sequence_train.fit_sequence.

    The verb says what a line reads: `describe_start(info)` for the first line, and
    `describe_epoch(info) -> (postfix dict, line)` after every epoch. A context manager: the
    bars close (inner first, so an error starts on a line of its own) however the run ends.
    """

    def __init__(self, describe_start, describe_epoch):
        self.describe_start, self.describe_epoch, self.bars = describe_start, describe_epoch, {}

    def __call__(self, event: str, info: dict) -> None:
        from tqdm import tqdm

        bars = self.bars
        if event == "start":
            done = info["first_epoch"] - 1
            verb = f"resuming after epoch {done}" if info["resumed"] else "training"
            tqdm.write(f"{verb}: {self.describe_start(info)}")
            bars["epochs"] = tqdm(total=info["epochs"], initial=done, desc="epochs", unit="epoch", position=0)
            bars["steps"] = tqdm(total=info["batches_per_epoch"], desc=f"epoch {done + 1}", unit="batch",
                                 position=1, leave=False)
        elif event == "steps":
            bars["steps"].update(info["steps"])
            bars["steps"].set_postfix(loss=f"{info['loss']:.4f}", lr=f"{info['lr']:.2e}")
        elif event == "validate":
            bars["steps"].set_description(f"epoch {info['epoch']} validating")
        elif event == "epoch":
            postfix, line = self.describe_epoch(info)
            bars["epochs"].update(1)
            bars["epochs"].set_postfix(**postfix, best="*" if info["improved"] else "")
            tqdm.write(f"epoch {info['epoch']}/{info['epochs']}: {line}{' (best)' if info['improved'] else ''}")
            if info["epoch"] < info["epochs"]:
                bars["steps"].reset()
                bars["steps"].set_description(f"epoch {info['epoch'] + 1}")
        elif event == "stopped":
            tqdm.write(f"stopping after epoch {info['epoch']} of {info['epochs']}: the next epoch would pass "
                       f"max_time_s = {info['max_time_s']:g} s; the same command resumes")
        elif event == "test":
            tqdm.write(f"testing epoch {info['epoch']} on {info['examples']} test examples")

    def __enter__(self) -> "TrainingBars":
        return self

    def __exit__(self, *exc) -> None:
        for bar in reversed(self.bars.values()):
            bar.close()


def solver_name(config) -> str:
    """The solver setting in a few words, e.g. "cvode (atol 0.001)" or "coreneuron dt 0.05 ms"."""
    solver = config.solver
    if solver.method == "cvode":
        return f"cvode (atol {solver.cvode_atol:g})"
    name = f"{solver.method} {solver.scheme} dt {solver.dt_ms:g} ms"
    if solver.method == "gpu":
        name += f", {solver.gpu_precision}" + (" on the CPU twin" if solver.gpu_backend == "cpu" else "")
    return name
