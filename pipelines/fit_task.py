"""`python -m pipelines fit-task`: train the ELM, Branch-ELM or the LSTM baseline on a long-horizon task.

    python -m pipelines fit-task --task listops --config configs/tasks/listops.toml --data-dir data/tasks --out runs/tasks/listops/elm

The data come from `python -m pipelines prepare-task` (surrogate.tasks). Reads the task
config's [task], [train] (with [train.<model>] overrides), [model] and model tables
(surrogate/sequence_train.py); `--config` may be given more than once, later files override
earlier ones key by key (configs/tasks/smoke.toml shrinks any task to a CPU smoke run). The
run directory gets checkpoint_last.pt (every epoch), checkpoint_best.pt (best validation
accuracy), metrics.csv / metrics.json and, at the end, summary.json with the test accuracy of
the best epoch. Re-running the same command resumes from the last finished epoch.
"""

from __future__ import annotations

import argparse
from pathlib import Path

TASK_NAMES = ("listops", "pathfinder32", "pathfinder128", "shd-adding")  # surrogate.tasks.TASKS (no torch import here)
MODEL_NAMES = ("elm", "branch-elm", "lstm")  # surrogate.sequence.SEQUENCE_MODELS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--task", required=True, choices=TASK_NAMES, help="which long-horizon task")
    parser.add_argument("--config", required=True, type=Path, action="append",
                        help="task config TOML (configs/tasks/<task>.toml); repeat to layer overrides")
    parser.add_argument("--data-dir", required=True, type=Path, help="directory prepare-task wrote the task data to")
    parser.add_argument("--out", required=True, type=Path, help="run directory (created; an existing run resumes)")
    parser.add_argument("--model", default="elm", choices=MODEL_NAMES, help="which model to train (default: elm)")
    parser.add_argument("--device", default=None, help="override [train] device: 'auto', 'cpu', 'cuda', 'cuda:N'")
    parser.add_argument("--epochs", type=int, default=None, help="override [train] epochs")


def main(args: argparse.Namespace) -> int:
    import dataclasses

    from tqdm import tqdm

    from common.errors import ConfigError
    from surrogate.sequence_train import fit_sequence, load_task_config, open_task_data, task_spec

    config = load_task_config(args.config, task_spec(args.task), args.model)  # a config mistake before any data is read
    overrides = {k: v for k, v in (("device", args.device), ("epochs", args.epochs)) if v is not None}
    if overrides:
        try:
            config = dataclasses.replace(config, train=dataclasses.replace(config.train, **overrides))
        except ValueError as err:
            raise ConfigError(f"command-line override: {err}") from None

    data = open_task_data(args.task, args.data_dir)
    bars: dict[str, tqdm] = {}

    def progress(event: str, info: dict) -> None:
        if event == "start":
            done = info["first_epoch"] - 1
            verb = f"resuming after epoch {done}" if info["resumed"] else "training"
            tqdm.write(f"{verb}: {info['model_kind']} ({info['num_parameters']:,} parameters) on {info['task']}, "
                       f"{info['device']}; {info['train_examples']} training, {info['valid_examples']} validation examples")
            bars["epochs"] = tqdm(total=info["epochs"], initial=done, desc="epochs", unit="epoch", position=0)
            bars["steps"] = tqdm(total=info["batches_per_epoch"], desc=f"epoch {done + 1}", unit="batch",
                                 position=1, leave=False)
        elif event == "steps":
            bars["steps"].update(info["steps"])
            bars["steps"].set_postfix(loss=f"{info['loss']:.4f}", lr=f"{info['lr']:.2e}")
        elif event == "validate":
            bars["steps"].set_description(f"epoch {info['epoch']} validating")
        elif event == "epoch":
            bars["epochs"].update(1)
            bars["epochs"].set_postfix(valid_acc=f"{info['valid_accuracy']:.4f}", best="*" if info["improved"] else "")
            tqdm.write(f"epoch {info['epoch']}/{info['epochs']}: train loss {info['train_loss']:.4f}, "
                       f"train acc {info['train_accuracy']:.4f}, valid loss {info['valid_loss']:.4f}, "
                       f"valid acc {info['valid_accuracy']:.4f}, {info['examples_per_s']:.0f} examples/s"
                       f"{' (best)' if info['improved'] else ''}")
            if info["epoch"] < info["epochs"]:
                bars["steps"].reset()
                bars["steps"].set_description(f"epoch {info['epoch'] + 1}")
        elif event == "test":
            tqdm.write(f"testing epoch {info['epoch']} on {info['examples']} test examples")

    try:
        summary = fit_sequence(data, config, args.out, progress=progress)
    finally:
        for bar in reversed(bars.values()):
            bar.close()

    if summary.get("already_finished"):
        print(f"{args.out}: already finished ({summary['epochs_completed']} epochs); nothing to do")
    print(f"{args.model} on {args.task}: test accuracy {summary['test_accuracy']:.4f} (best epoch {summary['best_epoch']}, "
          f"valid {summary['best_valid_accuracy']:.4f}), {summary['num_parameters']:,} parameters, "
          f"{summary['training_time_s']:.0f} s training -> {args.out / 'summary.json'}")
    return 0
