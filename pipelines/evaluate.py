"""`python -m pipelines evaluate`: score trained surrogates on the test split (spec section 7).

    python -m pipelines evaluate --config configs/quick.toml --data data/quick --runs runs/quick
    python -m pipelines evaluate ... --models branch-elm,tcn
    python -m pipelines evaluate ... --checkpoint ../shared/pretrained/elmneuron/num_memory_20

For every run directory RUNS/<model>/ (elm, branch-elm, tcn, lstm: those present, or --models),
the best checkpoint is run over the test shards (the split of [data], by shard) twice: in
500-ms windows with 150-ms burn-in as published, and in one pass over each whole
simulation. RUNS/<model>/evaluation.json gets the metrics of both; predictions.h5 the ROC
points and a few example traces for the report. --checkpoint PATH (repeatable) scores any
checkpoint file, run directory or published elmneuron folder instead; its results go to
RUNS/<folder name>/. --all-shards scores every shard of --data (a separate test dataset)
rather than its test split; a run is still refused shards it was trained or validated on.
--data repeated (with --all-shards) pools several test datasets into one test set, so that a
score rests on more spike bins than one test split holds:

    python -m pipelines evaluate --config configs/neuronio.toml --all-shards --data TEST_A --data TEST_B \
        --runs runs/pooled --checkpoint checkpoints/branch-elm-d20
"""

from __future__ import annotations

import argparse
from pathlib import Path

from surrogate.registry import MODEL_KINDS  # names only: building the parser imports no torch


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, type=Path, action="append",
                        help="TOML config ([data] split and windows, [evaluate]); repeat to layer overrides")
    parser.add_argument("--data", required=True, type=Path, action="append",
                        help="dataset directory of HDF5 shards; repeat (with --all-shards) to pool test datasets")
    parser.add_argument("--runs", required=True, type=Path, help="directory of run directories (RUNS/<model>/)")
    parser.add_argument("--models", default=None,
                        help="comma-separated run names to score (default: every one of elm, branch-elm, tcn, lstm present)")
    parser.add_argument("--checkpoint", action="append", type=Path, default=[], metavar="PATH",
                        help="score this checkpoint file, run directory or published elmneuron folder instead "
                             "(repeatable); results go to RUNS/<its folder name>/")
    parser.add_argument("--device", default=None, help="override [evaluate] device: 'auto', 'cpu', 'cuda', 'cuda:N'")
    parser.add_argument("--batch-size", type=int, default=None, help="override [evaluate] batch_size (simulations)")
    parser.add_argument("--all-shards", action="store_true",
                        help="score every shard of --data (a dataset made for testing only, e.g. a CVode test set) "
                             "instead of its [data] test split")


def _targets(args, runs: Path) -> list[tuple[str, Path, Path]]:
    """(name, checkpoint or run dir, output dir) of everything to score; one-line errors for what is missing."""
    from simulation.errors import UserInputError
    from surrogate.checkpoints import run_dir_of

    if args.checkpoint:
        if args.models:
            raise UserInputError("give either --models or --checkpoint, not both")
        targets = []
        for path in args.checkpoint:
            if not path.exists():
                raise UserInputError(f"checkpoint not found: {path}")
            folder, run_dir = (path if path.is_dir() else path.parent), run_dir_of(path)
            # a checkpoint in its run's own folder is named after it; an epoch checkpoint after its run and epoch
            name = folder.name if run_dir == folder else f"{run_dir.name}-{path.stem}"
            targets.append((name, path, runs / name))
        return targets

    if not runs.is_dir():
        raise UserInputError(f"runs directory not found: {runs} (train models first: python -m pipelines fit)")
    if args.models:
        names = [m.strip() for m in args.models.split(",") if m.strip()]
        missing = [n for n in names if not (runs / n).is_dir()]
        if missing:
            raise UserInputError(f"run directory not found: {runs / missing[0]} "
                                 f"(train it: python -m pipelines fit --model {missing[0]} ... --out {runs / missing[0]})")
    else:
        names = [n for n in MODEL_KINDS if (runs / n).is_dir()]
        if not names:
            raise UserInputError(f"no run directories ({', '.join(MODEL_KINDS)}) in {runs}; train a model first")
    targets = []
    for name in names:
        run_dir = runs / name
        if not any((run_dir / f).is_file() for f in ("checkpoint_best.pt", "checkpoint_last.pt")):
            raise UserInputError(f"no checkpoint in {run_dir} (expected checkpoint_best.pt; did training finish an epoch?)")
        targets.append((name, run_dir, run_dir))
    return targets


def main(args: argparse.Namespace) -> int:
    import dataclasses

    from tqdm import tqdm

    from simulation.errors import ConfigError, DatasetError, UserInputError
    from surrogate.data import find_shards, require_distinct_shards, split_shards
    from surrogate.evaluation import EVALUATION_FILE, evaluate_model, load_evaluation_config

    data_config, evaluate_config = load_evaluation_config(args.config)
    overrides = {k: v for k, v in (("device", args.device), ("batch_size", args.batch_size)) if v is not None}
    if overrides:
        try:
            evaluate_config = dataclasses.replace(evaluate_config, **overrides)
        except ValueError as err:
            raise ConfigError(f"command line: {err}") from None
    targets = _targets(args, args.runs)
    if len(args.data) > 1 and not args.all_shards:
        raise UserInputError("several --data directories pool whole test datasets: add --all-shards "
                             "(a [data] train/valid/test split belongs to one dataset)")
    shards = [path for data_dir in args.data for path in find_shards(data_dir)]
    require_distinct_shards(shards, "each test simulation must count once")
    test_shards = shards if args.all_shards else split_shards(shards, data_config)["test"]
    if not test_shards:
        raise DatasetError(f"the test split of {args.data[0]} is empty ([data] test_shards = {data_config.test_shards})")
    from simulation.dataset import open_shard
    n_simulations = 0
    for path in test_shards:
        with open_shard(path) as f:
            n_simulations += f["input_spikes"].shape[0]
    print(f"test split: {len(test_shards)} shard(s), {n_simulations} simulations "
          f"({', '.join(p.name for p in test_shards)})")

    for name, checkpoint, out_dir in targets:
        with tqdm(total=n_simulations, unit="sim", desc=f"evaluate {name}") as bar:
            result = evaluate_model(checkpoint, out_dir, test_shards, data_config, evaluate_config,
                                    name=name, progress=bar.update)
        for mode in ("windowed", "whole"):
            r = result[mode]
            tp = ", ".join(f"TP@{float(k) * 100:g}%FP {v:.3f}" for k, v in r["spike"]["tp_at_fp"].items())
            print(f"  {name} [{mode}] AUC {r['spike']['auc']:.4f}, {tp}, "
                  f"RMSE {r['soma']['raw']['rmse_mV']:.3f} mV raw / {r['soma']['aligned']['rmse_mV']:.3f} aligned; "
                  f"{r['simulations_kept']}/{r['simulations']} simulations, {r['spike_bins_evaluated']} spike bins")
        print(f"  wrote {out_dir / EVALUATION_FILE}")
    return 0
