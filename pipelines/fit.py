"""`python -m pipelines fit`: train a surrogate (ELM, Branch-ELM or TCN) on a dataset of shards.

    python -m pipelines fit --model branch-elm --config configs/quick.toml --data data/quick --out runs/quick/branch-elm

Reads [data], [train] (with [train.<model>] overrides) and the model's table from the
config. The run directory gets checkpoint_last.pt (every epoch), checkpoint_best.pt (best
validation spike AUC), metrics.csv / metrics.json and summary.json. Re-running the same
command resumes from the last finished epoch; a finished run says so and exits 0.
--init-from starts a new run from a trained model's weights (fine-tuning: a run directory, a
released checkpoints/<name> folder or a published elmneuron folder of the same model config).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from surrogate.registry import MODEL_KINDS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, choices=MODEL_KINDS, help="which surrogate to train")
    parser.add_argument("--config", required=True, type=Path, action="append",
                        help="TOML config with [data], [train] and model tables; repeat to layer overrides "
                             "(configs/recipes/*.toml on configs/neuronio.toml)")
    parser.add_argument("--data", required=True, type=Path, help="dataset directory of shard_*.h5 files")
    parser.add_argument("--out", required=True, type=Path, help="run directory (created; an existing run resumes)")
    parser.add_argument("--device", default=None, help="override [train] device: 'auto', 'cpu', 'cuda', 'cuda:N'")
    parser.add_argument("--epochs", type=int, default=None, help="override [train] epochs (raise it to train a finished run further)")
    parser.add_argument("--workers", type=int, default=None, help="override [data] loader_workers")
    parser.add_argument("--init-from", type=Path, default=None, metavar="CHECKPOINT",
                        help="start a new run from these weights (a run directory, checkpoints/<name>, a .pt file or a "
                             "published elmneuron folder; same model config), with a fresh optimiser and schedule")


def _format(value, spec: str = ".4f") -> str:
    return "n/a" if value is None or value != value else format(value, spec)


def main(args: argparse.Namespace) -> int:
    import dataclasses

    from pipelines.common import TrainingBars
    from simulation.errors import ConfigError
    from surrogate.config import DataConfig, TrainConfig, load_training_config
    from surrogate.train import fit

    config = load_training_config(args.config, args.model)
    train, data = config.train, config.data
    overrides = {k: v for k, v in (("device", args.device), ("epochs", args.epochs)) if v is not None}
    try:
        train = TrainConfig(**{**dataclasses.asdict(train), **overrides})
        if args.workers is not None:
            data = DataConfig(**{**dataclasses.asdict(data), "loader_workers": args.workers})
    except ValueError as err:
        raise ConfigError(f"command-line override: {err}") from None

    def describe_start(info: dict) -> str:
        return (f"{info['model_kind']} ({info['num_parameters']:,} parameters) on {info['device']}"
                f"{'' if info['amp'] == 'off' else ' with ' + info['amp'] + ' autocast'}; "
                f"{info['training_simulations']} training simulations "
                f"({len(info['shards']['train'])} shards), {info['valid_simulations']} validation simulations")

    def describe_epoch(info: dict) -> tuple[dict, str]:
        return {"valid_auc": _format(info["valid_auc"])}, (
            f"train loss {info['train_loss']:.4f}, valid loss {_format(info['valid_loss'])}, "
            f"valid AUC {_format(info['valid_auc'])}, soma RMSE {_format(info['valid_soma_rmse_mV'], '.2f')} mV, "
            f"{info['windows_per_s']:.0f} windows/s")

    with TrainingBars(describe_start, describe_epoch) as progress:
        summary = fit(args.model, train, config.model, args.data, args.out, data_config=data, progress=progress,
                      init_from=args.init_from)

    if summary.get("already_finished"):
        print(f"{args.out}: already finished ({summary['epochs_completed']} epochs); nothing to do "
              f"(raise --epochs to train further)")
    if summary.get("initialized_from"):
        print(f"started from {summary['initialized_from']['source']}")
    print(f"{args.model}: best epoch {summary['best_epoch']}, valid AUC {_format(summary['best_valid_auc'])}, "
          f"{summary['num_parameters']:,} parameters, {summary['training_time_s']:.0f} s training -> {args.out}")
    return 0
