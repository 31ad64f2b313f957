"""Simulate in parallel with dask: submit tasks, write each shard as soon as its simulations are done.

    generate_dataset(config, out_dir, morphology, client)            every unfinished shard of a seeded dataset
    generate_datasets([(config, out_dir), ...], morphology, client)  several at once (GPU batches span them)
    resimulate(config, input_spikes, out_path, morphology, client)   given input rasters -> one shard
    run_shards(client, tasks, shards, write, ...)                    the one loop over completed tasks both use

The other parts of parallel generation live beside this module:

    plan.py      which shards, their provenance, what an output directory already holds (resume)
    cluster.py   the dask client, and getting the workers ready (mechanisms, morphology, cell)
    tasks.py     what runs on a worker: a Task simulates a list of simulations

Determinism. Simulation i draws its inputs from SeedSequence([master_seed, i])
(inputs.simulation_rng) on whichever worker runs it, and a shard's rows are put in the order
of its simulation indices before writing, so the data never depend on the number of workers,
on how simulations are grouped into tasks, or on the order in which tasks finish.

Memory. Results stay on the worker that made them until their shard is complete, so the
client holds only the shard it is writing (~1 GB for 128 x 6 s, the unpacked rasters).

Failures. A task that raises is retried `[parallel] retries` times (a dying worker is handled
by the scheduler's allowed-failures, see cluster.make_client). A simulation that still fails
is reported by index and seed; every shard whose simulations all succeeded is written.

Libraries do not print: progress goes to an optional callback `progress(done, total)`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from common.files import as_output_error, check_writable
from common.locks import DirectoryLock

from .cluster import GPU_RESOURCE, gpu_workers, prepare_workers, unique_token
from .config import SimulationConfig
from .errors import InputShapeError, UserInputError
from .morphology import check_morphology
from .plan import OutputState, ShardPlan, dataset_attrs, inspect_output_dir, plan_shards
from .gpu.worker import simulate_given_batch, simulate_seeded_batch
from .tasks import Task, run_task, simulate_given, simulate_seeded

# Re-exported: a caller of generate_dataset also starts and stops a client (bench/, docs/cluster.md).
from .cluster import close_client, make_client  # noqa: E402, F401

Progress = Callable[[int, int], None]
WriteShard = Callable[[ShardPlan, list[dict]], Path]


# --------------------------------------------------------------------------- failures

@dataclasses.dataclass(frozen=True)
class SimulationFailure:
    """One simulation that still failed after its retries."""

    simulation_index: int
    master_seed: int | None  # None for a re-simulation of given inputs
    error: str

    def __str__(self) -> str:
        if self.master_seed is None:
            return f"simulation {self.simulation_index} (input row {self.simulation_index}): {self.error}"
        return (f"simulation {self.simulation_index} (seed SeedSequence([{self.master_seed}, "
                f"{self.simulation_index}])): {self.error}")


class SimulationsFailed(RuntimeError):
    """Some simulations failed even after their retries; the shards of the others were written."""

    def __init__(self, failures: Sequence[SimulationFailure], written: Sequence[Path]):
        self.failures = sorted(failures, key=lambda f: f.simulation_index)
        self.written = list(written)
        lines = [f"{len(self.failures)} simulation(s) failed; their shards were not written:"]
        lines += [f"  {failure}" for failure in self.failures]
        super().__init__("\n".join(lines))


# --------------------------------------------------------------------------- the loop

def run_shards(
    client,
    tasks: Sequence[Task],
    shards: Sequence[ShardPlan],
    write: WriteShard,
    *,
    retries: int,
    progress: Progress | None = None,
    done: int = 0,
    total: int | None = None,
    resources: dict | None = None,
    simulation_of: dict[int, tuple[int, int]] | None = None,
) -> list[Path]:
    """Run `tasks` on the cluster; `write(shard, results)` each shard once all of its simulations are done.

    `resources` (e.g. {"GPU": 1}) restricts the tasks to the workers that offer them.

    Every simulation index of `shards` must be computed by exactly one task; a task may hold
    simulations of several shards. `results` are the shard's result dicts in the order of its
    `simulation_indices`. `done` and `total` count simulations for `progress` (`done` of an
    earlier run counts as done from the start). Returns the paths `write` returned, in the
    order written; raises SimulationsFailed, after writing every shard whose simulations all
    succeeded, if some simulation failed after its retries.

    The loop's keys (the tasks' `simulation_indices`, the shards' indices) are unique across
    everything simulated; `simulation_of` maps each to its (master seed, simulation index), which
    names a failure. Without it the keys are rows of given inputs, named by row without a seed.
    """
    from distributed import as_completed

    shard_of = {i: shard for shard in shards for i in shard.simulation_indices}
    total = done + len(shard_of) if total is None else total
    token = unique_token()
    # one map call for all tasks, in the given order: dask queues them in this order
    futures = client.map(run_task, list(tasks), key=[task.key(token) for task in tasks], retries=retries, pure=False,
                         resources=resources)
    task_of = {future.key: task for future, task in zip(futures, tasks)}
    waiting = {shard.index: len(shard.simulation_indices) for shard in shards}  # simulations not finished yet
    # a task's results are released from its worker once every shard that needs them is written
    shards_needing = {future.key: len({shard_of[i].index for i in task.simulation_indices})
                      for future, task in zip(futures, tasks)}
    future_of: dict[int, Any] = {}  # simulation index -> the future of its task
    # a task's results once fetched, until its last shard is written: a GPU batch spans many shards, and
    # fetching it again for each would move the whole batch (gigabytes) from the worker once per shard
    fetched: dict[str, list] = {}
    failures: list[SimulationFailure] = []
    written: list[Path] = []
    if progress:
        progress(done, total)
    try:
        for future in as_completed(futures):
            task = task_of[future.key]
            ready = []
            for i in task.simulation_indices:
                future_of[i] = future
                shard = shard_of[i]
                waiting[shard.index] -= 1
                if waiting[shard.index] == 0:
                    ready.append(shard)
            done += len(task.simulation_indices)
            if progress:
                progress(done, total)
            for shard in ready:  # every simulation of this shard has finished, successfully or not
                results, shard_failures = _gather(client, shard, future_of, task_of, fetched, simulation_of)
                if shard_failures:
                    failures += shard_failures
                else:
                    written.append(write(shard, results))
                del results
                for key, shard_future in {future_of[i].key: future_of[i] for i in shard.simulation_indices}.items():
                    shards_needing[key] -= 1
                    if shards_needing[key] == 0:
                        fetched.pop(key, None)
                        shard_future.release()  # free the results on the worker
    finally:
        client.cancel([f for f in futures if not f.done()])
    if failures:
        raise SimulationsFailed(failures, written)
    return written


def _gather(client, shard: ShardPlan, future_of: dict, task_of: dict, fetched: dict[str, list],
            simulation_of: dict[int, tuple[int, int]] | None):
    """(the shard's results in its order, []) or (None, failures) if any of its simulations failed.

    Tasks' results already in `fetched` (task key -> its result list) are not fetched again; the
    others are, and are added to it. A result can also fail after its task finished: when the
    worker holding it dies, dask recomputes it, and that attempt may fail too.
    """
    def failure(key: int) -> SimulationFailure:
        seed, index = simulation_of[key] if simulation_of else (None, key)
        return SimulationFailure(index, seed, _failure_message(future_of[key]))

    def failed() -> list[SimulationFailure]:
        return [failure(i) for i in shard.simulation_indices if future_of[i].status == "error"]

    if failed():
        return None, failed()
    futures = list({future_of[i].key: future_of[i] for i in shard.simulation_indices}.values())
    missing = [future for future in futures if future.key not in fetched]
    try:
        fetched.update(zip([future.key for future in missing], client.gather(missing)))
    except Exception:  # noqa: BLE001  (a task's own exception, re-raised by dask)
        if not failed():
            raise
        return None, failed()
    by_index = {i: result for future in futures
                for i, result in zip(task_of[future.key].simulation_indices, fetched[future.key])}
    return [by_index[i] for i in shard.simulation_indices], []


def _failure_message(future) -> str:
    error = future.exception()
    message = str(error).splitlines()[0] if str(error) else ""
    return f"{type(error).__name__}: {message}" if message else type(error).__name__


def _stack_shard(results: list[dict], duration_ms: int, input_spikes: np.ndarray | None = None) -> dict:
    """Per-simulation results (in shard order) -> the arrays of dataset.write_shard."""
    if input_spikes is None:
        # unpackbits gives 0/1 bytes, which are bools as they are (a view, not a 1-GB copy per 128 x 6 s shard)
        input_spikes = np.stack([np.unpackbits(r["packed_input_spikes"], axis=-1, count=duration_ms) for r in results]).view(bool)
    arrays = {
        "input_spikes": input_spikes,
        "soma_voltage": np.stack([r["soma_voltage"] for r in results]),
        "nexus_voltage": np.stack([r["nexus_voltage"] for r in results]),
        "output_spikes": np.stack([r["output_spikes"] for r in results]),
        "output_spike_times": [r["output_spike_times"] for r in results],
        "segment_voltages": None,
    }
    if results[0]["segment_voltages"] is not None:
        arrays["segment_voltages"] = np.stack([r["segment_voltages"] for r in results])
    return arrays


# --------------------------------------------------------------------------- the drivers

def batches(indices: Sequence[int], size: int) -> list[tuple[int, ...]]:
    return [tuple(indices[k:k + size]) for k in range(0, len(indices), size)]


def task_resources(config: SimulationConfig) -> dict | None:
    """What a task of this config needs from a worker: a GPU for the GPU engine."""
    return {GPU_RESOURCE: 1} if config.solver.method == "gpu" else None


def seeded_tasks(config: SimulationConfig, morphology: Path, simulations: Sequence[tuple[int, SimulationConfig, int]],
                 n_gpu_workers: int = 1) -> list[Task]:
    """How `simulations`, (loop key, its dataset's config, simulation index) in shard order, are grouped into tasks.

    On the CPU engines one simulation per task; on the GPU engine [parallel] gpu_batch_size
    simulations per task, integrated at once on the worker's GPU (a batch may span shards and
    datasets; a simulation's result does not depend on its batch). Dask hands the tasks out in
    order, so a GPU worker's next task is likely the one `n_gpu_workers` places further: its
    task draws those inputs ahead, while the GPU integrates (gpu.worker).
    """
    if config.solver.method == "gpu":
        groups = batches(list(simulations), config.parallel.gpu_batch_size)
        ahead = max(1, n_gpu_workers)

        def seeded(group) -> tuple[tuple[int, int], ...]:
            return tuple((dataset.dataset.seed, i) for _, dataset, i in group)

        return [Task(tuple(key for key, _, _ in group), simulate_seeded_batch,
                     (config, str(morphology), seeded(group), seeded(groups[k + ahead]) if k + ahead < len(groups) else ()))
                for k, group in enumerate(groups)]
    return [Task((key,), simulate_seeded, (dataset, str(morphology), (i,))) for key, dataset, i in simulations]


def generate_dataset(
    config: SimulationConfig,
    out_dir: str | os.PathLike,
    morphology: str | os.PathLike,
    client,
    progress: Progress | None = None,
    shards: Sequence[int] | None = None,
) -> list[Path]:
    """Simulate every shard of `config` that `out_dir` lacks; returns the paths of all planned shards.

    `shards` (indices, -1 the last): only those, e.g. a dataset's test split alone; a later
    run without it adds the others, as if the dataset had been made in one go.

    Holds `out_dir`'s lock (common.locks) while it writes: DirectoryLocked if another run
    writes there. Raises DatasetError if `out_dir` holds another dataset's shards, OutputError
    if it cannot be written (checked before simulating; a full disk while writing a shard
    leaves the finished shards intact), and SimulationsFailed (after writing every shard
    whose simulations all succeeded) if some simulations failed after `config.parallel.retries` retries.
    """
    return generate_datasets([(config, out_dir)], morphology, client, progress, shards)[0]


def generate_datasets(
    datasets: Sequence[tuple[SimulationConfig, str | os.PathLike]],
    morphology: str | os.PathLike,
    client,
    progress: Progress | None = None,
    shards: Sequence[int] | None = None,
) -> list[list[Path]]:
    """generate_dataset for several (config, out_dir) at once; returns each one's planned shard paths.

    The configs may differ in [dataset] alone (seed, shard count): e.g. the test splits of
    several datasets (`shards=[-1]`). Each directory gets exactly what generate_dataset would
    write there. On the GPU engine their simulations share batches, which is the point: a
    batch's time grows slowly with its cells, so six test splits of 128 in one batch of 768
    take little longer than one split alone (bench/pooled_test_set.sh). Locks every directory.
    """
    datasets = [(config, Path(out_dir)) for config, out_dir in datasets]
    check_simulated_together(datasets)
    morphology = check_morphology(morphology)
    plans = [plan_shards(config, shards) for config, _ in datasets]
    total = sum(len(plan.simulation_indices) for dataset_plans in plans for plan in dataset_plans)
    paths = [[out_dir / plan.file_name for plan in dataset_plans] for (_, out_dir), dataset_plans in zip(datasets, plans)]

    def states() -> list[OutputState]:
        return [inspect_output_dir(config, out_dir, morphology, shards) for config, out_dir in datasets]

    def report_done(found: list[OutputState]) -> None:
        if progress:
            progress(sum(state.simulations_done for state in found), total)

    found = states()
    if not any(state.todo for state in found):  # nothing to write: finished datasets may sit on a read-only disk
        report_done(found)
        return paths
    with contextlib.ExitStack() as locks:
        for _, out_dir in datasets:  # re-entrant: the command line already holds them
            locks.enter_context(DirectoryLock(out_dir, "simulate"))
            check_writable(out_dir)
        # again under the locks: the run that held one before may have finished shards meanwhile
        found = states()
        for stale in (path for state in found for path in state.stale_temporaries):  # no other writer can run now
            stale.unlink(missing_ok=True)
        if any(state.todo for state in found):
            _simulate_missing_shards([(config, out_dir, state) for (config, out_dir), state in zip(datasets, found)],
                                     morphology, client, progress, total)
        else:
            report_done(found)
    return paths


def check_simulated_together(datasets: Sequence[tuple[SimulationConfig, str | os.PathLike]]) -> None:
    """UserInputError unless these datasets can share a run: configs alike but for [dataset], directories distinct."""
    if not datasets:
        raise UserInputError("no dataset to simulate")
    first, first_dir = datasets[0]
    for config, out_dir in datasets[1:]:
        differing = [f.name for f in dataclasses.fields(first)
                     if f.name != "dataset" and getattr(config, f.name) != getattr(first, f.name)]
        if differing:
            raise UserInputError(f"datasets simulated together may differ in [dataset] alone: {out_dir}'s config "
                                 f"differs from {first_dir}'s in [{differing[0]}]")
    directories = [Path(out_dir).resolve() for _, out_dir in datasets]
    for k, directory in enumerate(directories):
        if directory in directories[:k]:
            raise UserInputError(f"two datasets simulated together write into the same directory {directory}")


def _simulate_missing_shards(datasets: list[tuple[SimulationConfig, Path, OutputState]], morphology: Path, client,
                             progress: Progress | None, total: int) -> None:
    """Simulate the missing shards of every dataset in one loop of run_shards.

    The loop's keys: dataset d's simulation i is key offset_d + i, its shard k loop shard
    shard_offset_d + k, with offsets 0 for the first dataset (one dataset: the keys are its
    indices) and past the end of the one before for the others.
    """
    from .dataset import write_shard

    config = datasets[0][0]
    segments = prepare_workers(client, config, morphology)
    loop_shards: list[ShardPlan] = []
    target: dict[int, tuple[SimulationConfig, Path, dict, ShardPlan]] = {}  # loop shard -> its dataset and real shard
    simulations: list[tuple[int, SimulationConfig, int]] = []  # (loop key, dataset's config, simulation index)
    simulation_of: dict[int, tuple[int, int]] = {}
    key_offset = shard_offset = 0
    for dataset, out_dir, state in datasets:
        attrs = dataset_attrs(dataset, morphology) | {"created_by": "simulate"}
        for plan in state.todo:
            keys = tuple(key_offset + i for i in plan.simulation_indices)
            loop_shards.append(ShardPlan(shard_offset + plan.index, keys))
            target[shard_offset + plan.index] = (dataset, out_dir, attrs, plan)
            simulations += [(key, dataset, i) for key, i in zip(keys, plan.simulation_indices)]
            simulation_of |= {key: (dataset.dataset.seed, i) for key, i in zip(keys, plan.simulation_indices)}
        key_offset += dataset.dataset.n_shards * dataset.dataset.simulations_per_shard
        shard_offset += dataset.dataset.n_shards

    def write(loop_shard: ShardPlan, results: list[dict]) -> Path:
        dataset, out_dir, attrs, shard = target[loop_shard.index]
        path = out_dir / shard.file_name
        # a full disk, a revoked permission: the shards already written are intact
        with as_output_error(path, "the shards already written are intact: make room and run the same command again to resume"):
            return write_shard(
                path, **_stack_shard(results, dataset.inputs.duration_ms),
                simulation_index=np.asarray(shard.simulation_indices, dtype=np.int64),
                segments=segments, attrs=attrs | {"shard_index": shard.index},
                compression_level=dataset.dataset.compression_level,
            )

    done = sum(state.simulations_done for _, _, state in datasets)
    run_shards(client, seeded_tasks(config, morphology, simulations, gpu_workers(client)), loop_shards, write,
               retries=config.parallel.retries, progress=progress, done=done,
               total=total, resources=task_resources(config), simulation_of=simulation_of)


def resimulate(
    config: SimulationConfig,
    input_spikes: np.ndarray,
    out_path: str | os.PathLike,
    morphology: str | os.PathLike,
    client,
    progress: Progress | None = None,
    simulation_index: np.ndarray | None = None,
    extra_attrs: dict[str, Any] | None = None,
) -> Path:
    """Simulate the cell on each raster of `input_spikes` (n, 1278, T) in parallel; write one shard.

    The config's duration is taken from T. `simulation_index` (default 0..n-1) and
    `extra_attrs` (e.g. master_seed and source_file) are stored in the shard.
    """
    from .dataset import write_shard

    input_spikes = np.asarray(input_spikes)
    if input_spikes.ndim != 3 or input_spikes.shape[0] == 0 or input_spikes.shape[2] == 0:
        raise InputShapeError(f"input_spikes has shape {input_spikes.shape}, expected (n, 1278, T) with n, T >= 1")
    n, _, duration = input_spikes.shape
    config = dataclasses.replace(config, inputs=dataclasses.replace(config.inputs, duration_ms=int(duration)))
    morphology = check_morphology(morphology)
    out_path = Path(out_path)
    check_writable(out_path.parent)  # before simulating, not after
    segments = prepare_workers(client, config, morphology)
    if input_spikes.shape[1] != 2 * len(segments["index"]):
        raise InputShapeError(
            f"input_spikes has {input_spikes.shape[1]} rows, the cell has {2 * len(segments['index'])} synapses"
        )
    attrs = dataset_attrs(config, morphology) | {"created_by": "resimulate", "master_seed": -1, "shard_index": 0}
    attrs |= extra_attrs or {}

    def write(shard: ShardPlan, results: list[dict]) -> Path:
        with as_output_error(out_path):
            return write_shard(
                out_path, **_stack_shard(results, duration, input_spikes=input_spikes.astype(bool)),
                simulation_index=np.arange(n, dtype=np.int64) if simulation_index is None else np.asarray(simulation_index, dtype=np.int64),
                segments=segments, attrs=attrs, compression_level=config.dataset.compression_level,
            )

    # the rows are the simulation indices of the loop; the shard stores `simulation_index`
    function, size = (simulate_given_batch, config.parallel.gpu_batch_size) if config.solver.method == "gpu" else (simulate_given, 1)
    tasks = [Task(rows, function, (config, str(morphology), rows, [np.packbits(input_spikes[row], axis=-1) for row in rows], int(duration)))
             for rows in batches(list(range(n)), size)]
    [path] = run_shards(client, tasks, [ShardPlan(0, tuple(range(n)))], write,
                        retries=config.parallel.retries, progress=progress, total=n,
                        resources=task_resources(config))
    return path
