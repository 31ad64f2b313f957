"""`python -m pipelines fit-task`: train the ELM, Branch-ELM or the LSTM baseline on a long-horizon task.

    python -m pipelines fit-task --task listops --config configs/tasks/listops.toml --data-dir data/tasks --out runs/tasks/listops/elm

The data come from `python -m pipelines prepare-task` (surrogate.tasks). Reads the task
config's [task], [train] (with [train.<model>] overrides), [model] and model tables
(surrogate/sequence_train.py); `--config` may be given more than once, later files override
earlier ones key by key (configs/tasks/smoke.toml shrinks any task to a CPU smoke run). The
run directory gets checkpoint_last.pt (every epoch), checkpoint_best.pt (best validation
accuracy), metrics.csv / metrics.json and, at the end, summary.json with the test accuracy of
the best epoch. Re-running the same command resumes from the last finished epoch. --init-from
starts a new run from the weights of another run of the same model (fine-tuning, e.g. under
another recipe), with a fresh optimiser and schedule.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from surrogate.tasks import TASKS  # light: no torch, no h5py

MODEL_NAMES = ("elm", "branch-elm", "lstm")  # surrogate.sequence.SEQUENCE_MODELS (that module imports torch; a test checks they agree)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--task", required=True, choices=list(TASKS), help="which long-horizon task")
    parser.add_argument("--config", required=True, type=Path, action="append",
                        help="task config TOML (configs/tasks/<task>.toml); repeat to layer overrides")
    parser.add_argument("--data-dir", required=True, type=Path, help="directory prepare-task wrote the task data to")
    parser.add_argument("--out", required=True, type=Path, help="run directory (created; an existing run resumes)")
    parser.add_argument("--model", default="elm", choices=MODEL_NAMES, help="which model to train (default: elm)")
    parser.add_argument("--device", default=None, help="override [train] device: 'auto', 'cpu', 'cuda', 'cuda:N'")
    parser.add_argument("--epochs", type=int, default=None, help="override [train] epochs")
    parser.add_argument("--max-time-s", type=float, default=None,
                        help="override [train] max_time_s: start no epoch expected to end past this many seconds "
                             "of training in this call; the best epoch so far is tested, a re-run resumes")
    parser.add_argument("--init-from", type=Path, default=None, metavar="CHECKPOINT",
                        help="start a new run from these weights (a fit-task run directory: its best checkpoint; or a "
                             ".pt file of one; the same model), with a fresh optimiser and schedule")


def main(args: argparse.Namespace) -> int:
    import dataclasses

    from common.errors import ConfigError
    from pipelines.common import TrainingBars
    from surrogate.sequence_train import fit_sequence, load_task_config, open_task_data, task_spec

    config = load_task_config(args.config, task_spec(args.task), args.model)  # a config mistake before any data is read
    overrides = {k: v for k, v in (("device", args.device), ("epochs", args.epochs), ("max_time_s", args.max_time_s))
                 if v is not None}
    if overrides:
        try:
            config = dataclasses.replace(config, train=dataclasses.replace(config.train, **overrides))
        except ValueError as err:
            raise ConfigError(f"command-line override: {err}") from None

    data = open_task_data(args.task, args.data_dir)
    def describe_start(info: dict) -> str:
        return (f"{info['model_kind']} ({info['num_parameters']:,} parameters) on {info['task']}, {info['device']}; "
                f"{info['train_examples']} training, {info['valid_examples']} validation examples")

    def describe_epoch(info: dict) -> tuple[dict, str]:
        return {"valid_acc": f"{info['valid_accuracy']:.4f}"}, (
            f"train loss {info['train_loss']:.4f}, train acc {info['train_accuracy']:.4f}, "
            f"valid loss {info['valid_loss']:.4f}, valid acc {info['valid_accuracy']:.4f}, "
            f"{info['examples_per_s']:.0f} examples/s")

    with TrainingBars(describe_start, describe_epoch) as progress:
        summary = fit_sequence(data, config, args.out, progress=progress, init_from=args.init_from)

    if summary.get("already_finished"):
        print(f"{args.out}: already finished ({summary['epochs_completed']} epochs); nothing to do")
    if not summary["finished"]:
        print(f"{args.out}: stopped at the time limit after {summary['epochs_completed']} of "
              f"{summary['train_config']['epochs']} epochs; the same command resumes")
    print(f"{args.model} on {args.task}: test accuracy {summary['test_accuracy']:.4f} (best epoch {summary['best_epoch']}, "
          f"valid {summary['best_valid_accuracy']:.4f}), {summary['num_parameters']:,} parameters, "
          f"{summary['training_time_s']:.0f} s training -> {args.out / 'summary.json'}")
    return 0
