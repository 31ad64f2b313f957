"""`python -m pipelines validate`: score the published ELM checkpoints on fresh simulations.

    python -m pipelines validate --config configs/validate.toml --out data/validate
    python -m pipelines validate ... --checkpoints ../shared/pretrained/elmneuron --morphology cell1.asc

The external check of the simulator: the published Branch-ELM / ELM models (Spieler et
al. 2024) were fitted to NeuronIO; on data from a faithful re-implementation they should
score close to their published test numbers (spike AUC about 0.99, soma RMSE about 0.6 mV).
A few fresh 6-s simulations (configs/validate.toml: NeuronIO's variable-step solver, a seed
of its own) are simulated into --out (resumable, as `simulate`), then every published model
folder is scored with windowed inference and aligned soma voltage, as published, and a
table of ours beside theirs is printed and written to OUT/validation.json. With only a
few simulations AUC and TP @ FP are noisy: the table says how many spikes they rest on.
One run at a time writes into --out (a lock file, OUT/.lock, names its owner, as `simulate`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pipelines.common import ProgressBar, add_cluster_arguments, solver_name, start_cluster


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, default=Path("configs/validate.toml"),
                        help="TOML config: simulation tables plus [data]/[evaluate] (default: configs/validate.toml)")
    parser.add_argument("--out", type=Path, default=Path("data/validate"),
                        help="directory for the fresh shards and validation.json (default: data/validate)")
    parser.add_argument("--morphology", type=Path, default=None,
                        help="cell1.asc (default: $L5PC_MORPHOLOGY, else data/morphology/cell1.asc)")
    parser.add_argument("--checkpoints", type=Path, default=None,
                        help="folder of published elmneuron models (default: $ELMNEURON_CHECKPOINTS, "
                             "else ../shared/pretrained/elmneuron beside the project)")
    parser.add_argument("--device", default=None, help="override [evaluate] device: 'auto', 'cpu', 'cuda', 'cuda:N'")
    add_cluster_arguments(parser)


def _fmt(value, digits: int) -> str:
    return "–" if value is None or value != value else f"{value:.{digits}f}"


def _simulate_missing_shards(args, config, morphology) -> bool:
    """The fresh simulations (resumable: finished shards are kept). False if some failed."""
    import time

    from simulation.cluster import close_client
    from simulation.parallel import SimulationsFailed, generate_dataset
    from simulation.plan import inspect_output_dir

    state = inspect_output_dir(config, args.out, morphology)
    if not state.todo:
        print(f"all {config.dataset.n_shards} shard(s) already simulated in {args.out}")
        return True
    client, where = start_cluster(args, config)
    print(where, flush=True)
    started = time.perf_counter()
    try:
        with ProgressBar("simulate") as progress:
            generate_dataset(config, args.out, morphology, client, progress=progress)
    except SimulationsFailed as err:
        print(str(err))
        print("re-run the same command to retry the failed simulations")
        return False
    finally:
        close_client(client)
    print(f"simulated in {time.perf_counter() - started:,.1f} s wall time")
    return True


def _score(folders, shards, data_config, evaluate_config, n_simulations: int) -> list[dict]:
    """Every published model, scored as published; prints the table of ours beside theirs."""
    from tqdm import tqdm

    from surrogate.evaluation import score_published_checkpoints

    with tqdm(total=n_simulations * len(folders), unit="sim", desc="score published models") as bar:
        rows = score_published_checkpoints(folders, shards, data_config, evaluate_config, progress=bar.update)

    first = rows[0]["ours"]
    print(f"\n{first['simulations']} simulations ({first['simulations_kept']} kept by the 0-"
          f"{first['max_spike_bins']} spike-bin filter), {first['bins_evaluated']} bins after the first "
          f"{first['ignore_first_ms']} ms, {first['spike_bins_evaluated']} spike bins: "
          + ("AUC and TP @ FP rest on few spikes, read them as rough" if first["spike_bins_evaluated"] < 200 else
             "enough spikes for a rough AUC"))
    header = (f"{'model':<16} {'d_m':>4} {'params':>7} | {'AUC ours':>8} {'AUC pub':>8} | "
              f"{'TP@1% ours':>10} {'TP@1% pub':>9} | {'RMSE ours':>9} {'RMSE pub':>8} | {'RMSE raw':>8}")
    print(header)
    print("-" * len(header))
    for row in rows:
        ours, pub = row["ours"], row["published_test"]
        print(f"{row['model']:<16} {row['num_memory']:>4} {row['num_parameters']:>7} | "
              f"{_fmt(ours['spike']['auc'], 4):>8} {_fmt(pub['auc'], 4):>8} | "
              f"{_fmt(ours['spike']['tp_at_fp'].get('0.0100'), 3):>10} {_fmt(pub['tp_at_fp'].get('0.0100'), 3):>9} | "
              f"{_fmt(ours['soma']['aligned']['rmse_mV'], 3):>9} {_fmt(pub['soma_rmse_mV'], 3):>8} | "
              f"{_fmt(ours['soma']['raw']['rmse_mV'], 3):>8}")
    print("(RMSE in mV on the soma voltage clipped at -55 mV; 'ours' aligned as published, 'raw' without alignment)")
    return rows


def main(args: argparse.Namespace) -> int:
    import dataclasses

    from common.files import as_output_error, check_writable
    from common.jsonio import write_json
    from common.locks import DirectoryLock, describe_owner
    from simulation.config import load_simulation_config
    from simulation.dataset import list_shards
    from simulation.errors import ConfigError
    from simulation.paths import resolve_morphology
    from surrogate.evaluation import find_published_checkpoints, load_evaluation_config, published_checkpoint_dir

    config = load_simulation_config(args.config)
    data_config, evaluate_config = load_evaluation_config(args.config)
    if args.device is not None:
        try:
            evaluate_config = dataclasses.replace(evaluate_config, device=args.device)
        except ValueError as err:
            raise ConfigError(f"--device: {err}") from None
    morphology = resolve_morphology(args.morphology)
    folders = find_published_checkpoints(published_checkpoint_dir(args.checkpoints))  # fail before simulating
    d = config.dataset
    print(f"{args.config}: {d.n_shards} shard(s) x {d.simulations_per_shard} simulations x "
          f"{config.inputs.duration_ms} ms, seed {d.seed}, solver {solver_name(config)} -> {args.out}")

    # one run per output directory (its shards and validation.json); refused before any worker starts
    with DirectoryLock(args.out, "validate") as lock:
        if lock.stale:
            print(f"taking over the lock of a run that ended without releasing it: {describe_owner(lock.stale)}")
        check_writable(args.out)  # before the computing, not after it
        if not _simulate_missing_shards(args, config, morphology):
            return 1
        shards = list_shards(args.out)
        rows = _score(folders, shards, data_config, evaluate_config, d.n_shards * d.simulations_per_shard)
        out = args.out / "validation.json"
        first = rows[0]["ours"]
        with as_output_error(out):
            write_json(out, {
                "config": str(args.config),
                "simulation": {"shards": [p.name for p in shards], "simulations": first["simulations"],
                               "duration_ms": config.inputs.duration_ms, "seed": d.seed,
                               "solver": solver_name(config), "morphology": str(morphology)},
                "evaluation": {"protocol": "windowed", "window_ms": data_config.window_ms,
                               "burn_in_ms": data_config.burn_in_ms, "ignore_first_ms": data_config.ignore_first_ms,
                               "max_spike_bins": evaluate_config.max_spike_bins,
                               "simulations_kept": first["simulations_kept"],
                               "spike_bins_evaluated": first["spike_bins_evaluated"],
                               "soma": "aligned as published (spec 7.3); raw also given"},
                "models": rows,
            })
    print(f"wrote {out}")
    return 0
