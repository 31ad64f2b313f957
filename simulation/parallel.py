"""Simulate a dataset in parallel with dask: one task per simulation, shards written as they complete.

    plan_shards(config)            shard i holds simulations i*n .. i*n + n-1 (n = simulations_per_shard)
    generate_dataset(...)          submit every simulation of every unfinished shard, write each
                                   shard (dataset.write_shard, atomic) once all of its simulations
                                   are done, skip shards already on disk, report failures
    resimulate(...)                the same machinery for given input rasters -> one shard

Why one task per simulation rather than per shard: a 6-s simulation takes 20-65 s of one
core (bench/simulation_speed.py), a shard of 128 of them up to two hours; per-simulation tasks keep every worker busy until the last
minute whatever the worker count, and a lost worker costs one simulation, not a shard.

Determinism. Simulation i draws its inputs from SeedSequence([master_seed, i])
(inputs.simulation_rng) on whichever worker runs it, and a shard's rows are sorted by
simulation index before writing, so the data never depend on the number of workers or on
the order in which tasks finish.

What travels. A worker returns its input raster bit-packed (np.packbits: 1278 x 6000 bits =
0.96 MB instead of 7.7 MB of bools) with the 1-ms traces; results stay on the worker that
made them until their shard is complete, so the client holds only the shard it is writing
(~1 GB for 128 x 6 s, the unpacked rasters). (Packing and unpacking a 6-s raster took 8 ms here; regenerating it on the client
from the seed instead took 0.6 s and would need the segment table there too.)

Resuming. A shard under its final name is complete (dataset.write_shard renames a finished
temporary file), so a re-run skips every shard that passes validate_shard and belongs to the
same dataset; a stale `*.tmp` of a killed run is removed; a shard that fails validation
(truncated by a copy, a full disk) is simulated again and replaced, which loses nothing
because its content is fixed by the config and the seed.

Libraries do not print: progress goes to an optional callback `progress(done, total)`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from .config import SimulationConfig
from .errors import DatasetError, InputShapeError, MorphologyError, UserInputError

Progress = Callable[[int, int], None]

# Every task key starts with this word: dask groups tasks by it, and a group much larger
# than the cluster is queued on the scheduler and handed out one task per free thread.
TASK_PREFIX = "l5pc_simulation"

# Tables that do not change a shard's content: who computes it, how many shards in total
# (a dataset may grow by raising n_shards) and how hard the inputs are compressed.
NOT_PART_OF_THE_DATA = {"parallel": None, "dataset": ("n_shards", "compression_level")}


# --------------------------------------------------------------------------- the plan

@dataclass(frozen=True)
class ShardPlan:
    """Shard `index` holds the simulations `simulation_indices` (dataset-wide indices)."""

    index: int
    simulation_indices: tuple[int, ...]

    @property
    def file_name(self) -> str:
        return f"shard_{self.index:05d}.h5"


def plan_shards(config: SimulationConfig) -> list[ShardPlan]:
    """Shard i holds simulations i*n .. i*n + n - 1: a shard's content never depends on n_shards."""
    n = config.dataset.simulations_per_shard
    return [ShardPlan(i, tuple(range(i * n, (i + 1) * n))) for i in range(config.dataset.n_shards)]


# --------------------------------------------------------------------------- failures

@dataclass(frozen=True)
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


# --------------------------------------------------------------------------- identity of a dataset

def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def data_identity(config_dict: dict[str, Any]) -> dict[str, Any]:
    """The parts of a config that determine a shard's arrays."""
    identity = {}
    for table, values in config_dict.items():
        if table not in NOT_PART_OF_THE_DATA:
            identity[table] = values
        elif NOT_PART_OF_THE_DATA[table] is not None:
            identity[table] = {k: v for k, v in values.items() if k not in NOT_PART_OF_THE_DATA[table]}
    return identity


def _first_difference(expected: dict, found: dict, where: str = "") -> str | None:
    for key in sorted(set(expected) | set(found)):
        a, b = expected.get(key), found.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            diff = _first_difference(a, b, f"{where}[{key}]" if not where else f"{where}.{key}")
            if diff:
                return diff
        elif a != b:
            name = f"{where}.{key}" if where else key
            return f"{name} = {b!r} there, {a!r} in this config"
    return None


def dataset_attrs(config: SimulationConfig, morphology: Path) -> dict[str, Any]:
    """The provenance attributes every shard of this dataset carries (dataset.REQUIRED_ATTRS)."""
    from .mechanisms import mechanisms_sha256, neuron_version

    return {
        "config": config.to_dict(),
        "master_seed": config.dataset.seed,
        "neuron_version": neuron_version(),
        "mechanisms_sha256": mechanisms_sha256(),
        "morphology_sha256": file_sha256(morphology),
        "morphology_file": morphology.name,
    }


@dataclass
class OutputState:
    """What a previous run left in the output directory."""

    done: list[ShardPlan] = field(default_factory=list)  # complete shards of this dataset: skipped
    todo: list[ShardPlan] = field(default_factory=list)  # to simulate (missing or invalid)
    invalid: dict[str, str] = field(default_factory=dict)  # file name -> why it will be re-simulated
    stale_temporaries: list[Path] = field(default_factory=list)  # *.tmp of a killed run

    @property
    def simulations_done(self) -> int:
        return sum(len(plan.simulation_indices) for plan in self.done)

    @property
    def simulations_todo(self) -> int:
        return sum(len(plan.simulation_indices) for plan in self.todo)


def inspect_output_dir(config: SimulationConfig, out_dir: str | os.PathLike, morphology: Path) -> OutputState:
    """Sort the planned shards into done and to-do; refuse a directory holding another dataset.

    Every readable shard_*.h5 in `out_dir` (planned or not) must come from the same data config,
    mechanisms and morphology, else DatasetError: mixing two datasets in one directory would
    silently corrupt every later stage.
    """
    from .dataset import open_shard, read_attrs

    out_dir = Path(out_dir)
    state = OutputState()
    if out_dir.exists() and not out_dir.is_dir():
        raise DatasetError(f"output path exists and is not a directory: {out_dir}")
    planned = {plan.file_name: plan for plan in plan_shards(config)}
    existing = sorted(out_dir.glob("shard_*.h5")) if out_dir.is_dir() else []
    state.stale_temporaries = sorted(out_dir.glob("shard_*.h5.tmp")) if out_dir.is_dir() else []

    expected = dataset_attrs(config, morphology)
    expected_identity = data_identity(expected["config"])
    valid: set[str] = set()
    for path in existing:
        try:
            with open_shard(path) as f:  # schema checks (dataset.validate_shard's) on open
                attrs = read_attrs(f)
                simulation_index = tuple(int(i) for i in f["simulation_index"][()])
        except DatasetError as err:
            if path.name in planned:
                state.invalid[path.name] = str(err).removeprefix(f"{path}: ")
            continue  # an unplanned damaged file is not ours to replace
        found = attrs.get("config") if isinstance(attrs.get("config"), dict) else {}
        difference = _first_difference(expected_identity, data_identity(found))
        for key in ("mechanisms_sha256", "morphology_sha256"):
            if difference is None and attrs.get(key) != expected[key]:
                difference = f"{key} = {attrs.get(key)!r} there, {expected[key]!r} here"
        if difference is None and attrs.get("created_by") != "simulate":
            difference = f"created_by = {attrs.get('created_by')!r} there"
        if difference is not None:
            raise DatasetError(
                f"{out_dir} holds shards of another dataset ({path.name}: {difference}); "
                f"use another --out directory or delete those shards"
            )
        plan = planned.get(path.name)
        if plan is not None:
            if (attrs.get("shard_index"), simulation_index) != (plan.index, plan.simulation_indices):
                raise DatasetError(f"{path}: holds shard {attrs.get('shard_index')} (simulations {simulation_index[:2]}...), "
                                   f"expected shard {plan.index} (simulations {plan.simulation_indices[:2]}...)")
            valid.add(path.name)

    for name, plan in planned.items():
        (state.done if name in valid else state.todo).append(plan)
    return state


# --------------------------------------------------------------------------- what runs on a worker

def _segment_table_dict(segments) -> dict[str, np.ndarray]:
    from .dataset import SEGMENT_FIELDS

    return {name: np.asarray(getattr(segments, name)) for name in SEGMENT_FIELDS}


def describe_cell(config: SimulationConfig, morphology: str) -> dict[str, np.ndarray]:
    """Worker task: build the worker's simulator (errors surface once, here) and return its segment table."""
    from .run import get_simulator

    return _segment_table_dict(get_simulator(config, morphology).segments)


def _pack_result(simulation_index: int, result, cpu_seconds: float, packed_inputs: np.ndarray | None) -> dict:
    return {
        "simulation_index": int(simulation_index),
        "packed_input_spikes": packed_inputs,
        "soma_voltage": result.soma_voltage,
        "nexus_voltage": result.nexus_voltage,
        "output_spike_times": result.output_spike_times,
        "output_spikes": result.output_spikes,
        "segment_voltages": result.segment_voltages,
        "cpu_seconds": cpu_seconds,
    }


def simulate_seeded(config: SimulationConfig, morphology: str, simulation_index: int) -> dict:
    """Worker task: draw simulation i's inputs from (master seed, i), simulate, return compact results."""
    from .inputs import generate_input_spikes, simulation_rng
    from .run import get_simulator

    simulator = get_simulator(config, morphology)  # built once per worker process
    rng = simulation_rng(config.dataset.seed, simulation_index)
    segments = simulator.segments
    input_spikes = generate_input_spikes(config.inputs, segments.length_um, segments.is_basal, rng)
    started = time.process_time()
    result = simulator.run(input_spikes)
    return _pack_result(simulation_index, result, time.process_time() - started, np.packbits(input_spikes, axis=-1))


def simulate_given(config: SimulationConfig, morphology: str, row: int, packed_inputs: np.ndarray, duration_ms: int) -> dict:
    """Worker task: simulate one given (bit-packed) input raster."""
    from .run import get_simulator

    simulator = get_simulator(config, morphology)
    input_spikes = np.unpackbits(packed_inputs, axis=-1, count=duration_ms).astype(bool)
    started = time.process_time()
    result = simulator.run(input_spikes)
    return _pack_result(row, result, time.process_time() - started, None)


def check_worker(morphology: str) -> str | None:
    """Run on every worker before submitting: None, or why this worker cannot simulate."""
    if not Path(morphology).is_file():
        return f"cannot read the morphology {morphology} (workers need the same path, e.g. a shared file system)"
    return None


# --------------------------------------------------------------------------- the client side

def make_client(scheduler_address: str | None = None, n_workers: int = 0, retries: int = 2):
    """A dask Client: connected to `scheduler_address`, else to a new LocalCluster.

    The local cluster runs `n_workers` (0: one per core) single-threaded worker processes:
    NEURON is not thread-safe and a process holds one cell. A simulation whose worker dies
    under it (out of memory, killed) is restarted on another worker up to `retries` times
    (dask's allowed-failures; exceptions are retried by generate_dataset). `client.cluster`
    is the local cluster (None for an existing scheduler), closed by close_client. Worker
    processes inherit this process's environment and sys.path; workers started elsewhere
    need the project installed (pip install -e .), see docs/cluster.md.
    """
    import logging

    import dask
    from distributed import Client, LocalCluster

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
    }
    with dask.config.set(settings):
        cluster = LocalCluster(
            n_workers=n_workers or available_cores(), threads_per_worker=1, processes=True,
            dashboard_address=":0", silence_logs=logging.ERROR,  # a free port: never clash with another cluster
        )
    return Client(cluster)


def close_client(client) -> None:
    """Close the client and, if make_client started one, its local cluster."""
    cluster = getattr(client, "cluster", None)
    client.close()
    if cluster is not None:
        cluster.close()


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        return os.cpu_count() or 1


def _prepare_workers(client, config: SimulationConfig, morphology: Path) -> dict[str, np.ndarray]:
    """Compile the mechanisms here (workers then only load them), check the workers, get the segment table."""
    from distributed import wait

    from .mechanisms import compile_mechanisms

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
    future = client.submit(describe_cell, config, str(morphology), key=f"describe_cell-{_token()}", pure=False)
    wait([future])
    if future.status == "error":
        error = future.exception()
        if isinstance(error, UserInputError):  # e.g. a [cell] nexus_section the cell lacks
            raise error
        raise RuntimeError(f"building the cell on a worker failed: {type(error).__name__}: {error}")
    return future.result()


def _token() -> str:
    return os.urandom(4).hex()


def _stack_shard(results: list[dict], duration_ms: int, input_spikes: np.ndarray | None = None) -> dict:
    """Per-simulation results (sorted by index) -> the arrays of dataset.write_shard."""
    if input_spikes is None:
        input_spikes = np.stack([np.unpackbits(r["packed_input_spikes"], axis=-1, count=duration_ms) for r in results]).astype(bool)
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


def _failure_message(future) -> str:
    error = future.exception()
    message = str(error).splitlines()[0] if str(error) else ""
    return f"{type(error).__name__}: {message}" if message else type(error).__name__


def generate_dataset(
    config: SimulationConfig,
    out_dir: str | os.PathLike,
    morphology: str | os.PathLike,
    client,
    progress: Progress | None = None,
) -> list[Path]:
    """Simulate every shard of `config` that `out_dir` lacks; returns the paths of all planned shards.

    Raises DatasetError if `out_dir` holds another dataset's shards, and SimulationsFailed
    (after writing every shard whose simulations all succeeded) if some simulations failed
    after `config.parallel.retries` retries.
    """
    from distributed import as_completed

    from .dataset import write_shard

    out_dir = Path(out_dir)
    morphology = Path(morphology)
    if not morphology.is_file():
        raise MorphologyError(f"morphology file not found: {morphology}")
    state = inspect_output_dir(config, out_dir, morphology)
    for stale in state.stale_temporaries:
        stale.unlink(missing_ok=True)
    total = config.dataset.n_shards * config.dataset.simulations_per_shard
    done = state.simulations_done
    paths = [out_dir / plan.file_name for plan in plan_shards(config)]
    if state.todo:
        segments = _prepare_workers(client, config, morphology)
    if progress:
        progress(done, total)
    if not state.todo:
        return paths

    out_dir.mkdir(parents=True, exist_ok=True)
    attrs = dataset_attrs(config, morphology) | {"created_by": "simulate"}
    duration = config.inputs.duration_ms

    # one map call for all simulations, in shard order: dask queues them in this order
    shard_of = {i: plan for plan in state.todo for i in plan.simulation_indices}
    indices = list(shard_of)
    token = _token()
    futures = client.map(
        simulate_seeded, [config] * len(indices), [str(morphology)] * len(indices), indices,
        key=[f"{TASK_PREFIX}-{i}-{token}" for i in indices], retries=config.parallel.retries, pure=False,
    )
    index_of = {future.key: i for future, i in zip(futures, indices)}
    finished: dict[int, dict[int, Any]] = {plan.index: {} for plan in state.todo}  # shard -> {simulation: future}
    failures: list[SimulationFailure] = []
    written: list[Path] = []
    try:
        for future in as_completed(futures):
            i = index_of[future.key]
            plan = shard_of[i]
            finished[plan.index][i] = future
            done += 1
            if progress:
                progress(done, total)
            if len(finished[plan.index]) < len(plan.simulation_indices):
                continue
            # every simulation of this shard has finished, successfully or not
            by_index = finished.pop(plan.index)
            shard_futures = [by_index[j] for j in plan.simulation_indices]
            results, shard_failures = _gather(client, shard_futures, plan.simulation_indices, config.dataset.seed)
            if shard_failures:
                failures += shard_failures
            else:
                written.append(write_shard(
                    out_dir / plan.file_name, **_stack_shard(results, duration),
                    simulation_index=np.asarray(plan.simulation_indices, dtype=np.int64),
                    segments=segments, attrs=attrs | {"shard_index": plan.index},
                    compression_level=config.dataset.compression_level,
                ))
            del results
            for shard_future in shard_futures:  # free the results on the workers
                shard_future.release()
    finally:
        client.cancel([f for f in futures if not f.done()])
    if failures:
        raise SimulationsFailed(failures, written)
    return paths


def _gather(client, futures: list, indices: Sequence[int], master_seed: int | None):
    """(results, []) of finished futures, or (None, failures) if any of them failed.

    A result can also fail after its task finished: when the worker holding it dies, dask
    recomputes it, and that attempt may fail too.
    """
    failures = [SimulationFailure(i, master_seed, _failure_message(f)) for i, f in zip(indices, futures) if f.status == "error"]
    if failures:
        return None, failures
    try:
        return client.gather(futures), []
    except Exception:  # noqa: BLE001  (a task's own exception, re-raised by dask)
        failures = [SimulationFailure(i, master_seed, _failure_message(f)) for i, f in zip(indices, futures) if f.status == "error"]
        if not failures:
            raise
        return None, failures


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
    from distributed import as_completed

    from .dataset import write_shard

    input_spikes = np.asarray(input_spikes)
    if input_spikes.ndim != 3 or input_spikes.shape[0] == 0 or input_spikes.shape[2] == 0:
        raise InputShapeError(f"input_spikes has shape {input_spikes.shape}, expected (n, 1278, T) with n, T >= 1")
    n, _, duration = input_spikes.shape
    config = dataclasses.replace(config, inputs=dataclasses.replace(config.inputs, duration_ms=int(duration)))
    morphology = Path(morphology)
    if not morphology.is_file():
        raise MorphologyError(f"morphology file not found: {morphology}")
    segments = _prepare_workers(client, config, morphology)
    if input_spikes.shape[1] != 2 * len(segments["index"]):
        raise InputShapeError(
            f"input_spikes has {input_spikes.shape[1]} rows, the cell has {2 * len(segments['index'])} synapses"
        )
    if progress:
        progress(0, n)

    token = _token()
    futures = [
        client.submit(simulate_given, config, str(morphology), row, np.packbits(input_spikes[row], axis=-1), int(duration),
                      key=f"{TASK_PREFIX}-{row}-{token}", retries=config.parallel.retries, pure=False)
        for row in range(n)
    ]
    try:
        for done, _ in enumerate(as_completed(futures), start=1):
            if progress:
                progress(done, n)
        results, failures = _gather(client, futures, range(n), None)
    finally:
        client.cancel([f for f in futures if not f.done()])
    if failures:
        raise SimulationsFailed(failures, [])

    attrs = dataset_attrs(config, morphology) | {"created_by": "resimulate", "master_seed": -1, "shard_index": 0}
    attrs |= extra_attrs or {}
    return write_shard(
        out_path, **_stack_shard(results, duration, input_spikes=input_spikes.astype(bool)),
        simulation_index=np.arange(n, dtype=np.int64) if simulation_index is None else np.asarray(simulation_index, dtype=np.int64),
        segments=segments, attrs=attrs, compression_level=config.dataset.compression_level,
    )
