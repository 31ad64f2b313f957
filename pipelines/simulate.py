"""`python -m pipelines simulate --config C.toml [--config OVERLAY.toml] --out DIR`: simulate a dataset of HDF5 shards
with dask.

Runs on a new local cluster (one single-threaded worker process per core, or --workers N)
or on an existing one (--scheduler tcp://HOST:PORT, see docs/cluster.md). Re-running the same
command resumes: finished shards are kept, the rest is simulated. `--shards I ...` simulates
only those shards (-1: the last, a dataset's test split), as they are in the whole dataset.
`--dataset OVERLAY.toml DIR`, repeated instead of --out, simulates several datasets that differ
in [dataset] alone (their seeds) in one run: on the GPU engine they share batches, so the test
splits of six datasets take about as long as one (bench/pooled_test_set.sh).
One run at a time writes into a directory (a lock file, DIR/.lock, names its owner). Exit
codes: 0 done, 2 bad input (config, morphology, an output directory in use, read-only or
full), 1 some simulations failed (listed).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipelines.common import ProgressBar, add_cluster_arguments, solver_name, start_cluster


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, required=True, action="append",
                        help="TOML config (e.g. configs/quick.toml); repeat to layer overrides "
                             "(configs/datasets/*.toml on configs/neuronio_gpu.toml)")
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--out", type=Path, help="dataset directory for shard_00000.h5, ...")
    where.add_argument("--dataset", type=Path, nargs=2, action="append", metavar=("OVERLAY", "DIR"),
                       help="instead of --out, repeatable: one of several datasets simulated in one run, the "
                            "--config files plus OVERLAY (which may change [dataset] alone, e.g. its seed), into DIR")
    parser.add_argument("--morphology", type=Path, default=None,
                        help="cell1.asc (default: $L5PC_MORPHOLOGY, else data/morphology/cell1.asc)")
    parser.add_argument("--shards", type=int, nargs="+", metavar="I", default=None,
                        help="simulate only these shards of the dataset (-1: the last, its test split); "
                             "the same command without --shards adds the others")
    add_cluster_arguments(parser)


def main(args: argparse.Namespace) -> int:
    import contextlib
    import time

    from common.files import check_writable
    from common.locks import DirectoryLock, describe_owner
    from simulation.cluster import close_client
    from simulation.config import load_simulation_config
    from simulation.dataset import summarise
    from simulation.mechanisms import compile_mechanisms
    from simulation.parallel import SimulationsFailed, check_simulated_together, generate_datasets
    from simulation.paths import resolve_morphology
    from simulation.plan import inspect_output_dir, plan_shards

    if args.out is not None:
        datasets = [(load_simulation_config(args.config), args.out, args.config)]
    else:
        datasets = [(load_simulation_config([*args.config, overlay]), out, [*args.config, overlay])
                    for overlay, out in args.dataset]
    check_simulated_together([(dataset, out) for dataset, out, _ in datasets])
    morphology = resolve_morphology(args.morphology)
    config = datasets[0][0]

    # report what a previous run left before starting any worker (also checks each is our dataset)
    todo = 0
    for dataset, out, files in datasets:
        d = dataset.dataset
        selected = [plan.index for plan in plan_shards(dataset, args.shards)]
        only = f" (only shard{'s' if len(selected) > 1 else ''} {', '.join(map(str, selected))})" if args.shards else ""
        print(f"{' + '.join(map(str, files))}: {d.n_shards} shards{only} x {d.simulations_per_shard} simulations x "
              f"{dataset.inputs.duration_ms} ms, seed {d.seed}, solver {solver_name(dataset)} -> {out}")
        state = inspect_output_dir(dataset, out, morphology, args.shards)
        if state.done:
            print(f"resuming: {len(state.done)} of {len(selected)} shards already done")
        for name, reason in state.invalid.items():
            print(f"{name} is damaged and will be simulated again ({reason})")
        todo += state.simulations_todo
    if not todo:
        print("nothing to do: every shard is already there")
        return 0

    # one run per output directory, for the whole run; refused before any worker starts
    with contextlib.ExitStack() as locks:
        for _, out, _ in datasets:
            lock = locks.enter_context(DirectoryLock(out, "simulate"))
            if lock.stale:
                print(f"taking over the lock of a run that ended without releasing it: {describe_owner(lock.stale)}")
            check_writable(out)  # before the computing, not after it
        # compiled here, once, before any worker exists; workers only load the build
        compile_mechanisms(coreneuron=config.solver.method == "coreneuron")
        client, where = start_cluster(args, config)
        print(where, flush=True)
        started = time.perf_counter()
        failed = None
        try:
            with ProgressBar("simulate") as progress:
                paths = generate_datasets([(dataset, out) for dataset, out, _ in datasets], morphology, client,
                                          progress=progress, shards=args.shards)
        except SimulationsFailed as err:
            failed = err
        finally:
            close_client(client)
    seconds = time.perf_counter() - started

    simulated = todo - (len(failed.failures) if failed else 0)
    print(f"simulated {simulated} simulations ({simulated * config.inputs.duration_ms / 1000:,.1f} s of activity) "
          f"in {seconds:,.1f} s wall time")
    if failed is not None:
        print(str(failed), file=sys.stderr)
        print(f"{len(failed.written)} shard(s) were written; re-run the same command to retry the others", file=sys.stderr)
        return 1
    for (dataset, out, _), dataset_paths in zip(datasets, paths):
        existing = [p for p in dataset_paths if p.is_file()]
        summary = summarise(existing, inputs=False)
        print(f"dataset {out}: {len(existing)} shards, {summary['simulations']} of "
              f"{len(dataset_paths) * dataset.dataset.simulations_per_shard} simulations, "
              f"output rate {summary['output_rate_hz_mean']:.2f} +- {summary['output_rate_hz_std']:.2f} Hz, "
              f"{100 * summary['fraction_without_spikes']:.0f}% silent, "
              f"soma {summary['soma_voltage_mean_mV']:.1f} +- {summary['soma_voltage_std_mV']:.1f} mV")
    return 0
