"""`python -m pipelines evaluate-task`: score fit-task checkpoints on a split of a long-horizon task.

    python -m pipelines evaluate-task --task pathfinder32 --data-dir data/tasks --checkpoint runs/tasks/pathfinder32-elm
    python -m pipelines evaluate-task ... --checkpoint RUN_A --checkpoint RUN_B --device cpu --out scores.json
    python -m pipelines evaluate-task ... --checkpoint RUN --test-time-augment none --test-time-augment dihedral

Each checkpoint (a fit-task run directory, meaning its best checkpoint, or a checkpoint file) is run over every
example of the split (default: test) on any device; weights trained with the GPU kernel score the same on the CPU's
reference recurrence up to float rounding. For each: accuracy with its 95 % Wilson interval, each class's recall and
the confusion matrix; with several checkpoints, each one against the first on the same examples (the difference
and McNemar's exact test). --test-time-augment dihedral (pixel tasks) classifies each image from the mean of the
class probabilities over its 8 rotations / reflections (8 forward passes); given more than once, each checkpoint is
scored under each setting, and every score is paired with the first. Printed, and written as rows of --out
(default: evaluation_<split>.json beside the first checkpoint; a re-run replaces its own rows).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from surrogate.tasks import TASKS  # light: no torch, no h5py

SPLIT_NAMES = ("train", "valid", "test")  # surrogate.tasks.settings.SPLITS (a test checks they agree)
TEST_TIME_AUGMENTATIONS = ("none", "dihedral")  # surrogate.sequence_train.AUGMENTATIONS (a test checks they agree)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--task", required=True, choices=list(TASKS), help="which long-horizon task")
    parser.add_argument("--data-dir", required=True, type=Path, help="directory prepare-task wrote the task data to")
    parser.add_argument("--checkpoint", required=True, type=Path, action="append", metavar="PATH",
                        help="a fit-task run directory (its best checkpoint) or checkpoint file; repeatable")
    parser.add_argument("--split", default="test", choices=SPLIT_NAMES, help="which split to score (default: test)")
    parser.add_argument("--device", default="auto", help="'auto', 'cpu', 'cuda', 'cuda:N' (default: auto)")
    parser.add_argument("--batch-size", type=int, default=256, help="examples per forward pass (default: 256)")
    parser.add_argument("--test-time-augment", action="append", choices=TEST_TIME_AUGMENTATIONS, metavar="KIND",
                        help="'none' (default) or 'dihedral': each image classified from its 8 rotations / "
                             "reflections (pixel tasks); repeatable, each checkpoint is then scored under each")
    parser.add_argument("--out", type=Path, default=None,
                        help="results JSON (default: evaluation_<split>.json beside the first checkpoint)")


def main(args: argparse.Namespace) -> int:
    import time

    import torch
    from tqdm import tqdm

    from common.errors import ConfigError
    from common.jsonio import update_json_rows
    from surrogate.checkpoints import run_dir_of
    from surrogate.devices import resolve_device
    from surrogate.elm import num_parameters
    from surrogate.metrics import classification_metrics, paired_accuracy_difference
    from surrogate.sequence_train import evaluate, load_sequence_model, open_task_split, task_spec

    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1, got {args.batch_size}")
    spec = task_spec(args.task)
    augments = list(dict.fromkeys(args.test_time_augment or ["none"]))
    if "dihedral" in augments and spec.input_kind != "pixels":
        raise ConfigError(f"--test-time-augment dihedral turns images; task {args.task} has {spec.input_kind}, "
                          "not pixels")
    device = resolve_device(args.device)
    loaded = []
    for path in args.checkpoint:  # every checkpoint read and checked before the data are touched
        model, checkpoint = load_sequence_model(path, device, task=args.task)
        if "dihedral" in augments and model.model_config.readout == "per-step":
            raise ConfigError(f"--test-time-augment dihedral averages one answer per image; {path} has a per-step "
                              "readout")
        loaded.append((path, model, checkpoint))
    dataset = open_task_split(args.task, args.data_dir, args.split)
    out = args.out or run_dir_of(args.checkpoint[0]) / f"evaluation_{args.split}.json"

    rows, first_correct = [], None
    scorings = [(path, model, checkpoint, augment) for path, model, checkpoint in loaded for augment in augments]
    for path, model, checkpoint, augment in scorings:
        started = time.perf_counter()
        with tqdm(total=len(dataset), unit="example", desc=f"{path.name} ({augment})", leave=False) as bar:
            scores = evaluate(model, dataset, args.batch_size, device, keep_predictions=True, on_batch=bar.update,
                              test_time_augment=augment)
        predicted, labels = scores["predicted"].numpy(), scores["labels"].numpy()
        correct = predicted == labels
        row = {"checkpoint": str(path), "task": args.task, "split": args.split, "data_dir": str(args.data_dir),
               "model_kind": checkpoint["identity"]["model"].get("kind"), "num_parameters": num_parameters(model),
               "epoch": checkpoint["state"]["epoch"], "test_time_augment": augment, "loss": scores["loss"],
               **classification_metrics(predicted, labels, spec.num_classes),
               "device": str(device),
               "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
               "seconds": time.perf_counter() - started}
        if first_correct is None:
            first_correct = correct
        else:
            row["against_first"] = {"first": str(args.checkpoint[0]), "first_test_time_augment": augments[0],
                                    **paired_accuracy_difference(correct, first_correct)}
        rows.append(row)
        low, high = row["accuracy_ci95"]
        recall = ", ".join("-" if r is None else f"{r:.3f}" for r in row["class_recall"])
        views = "" if augment == "none" else f" ({augment} views)"
        line = (f"{path}{views}: {args.split} accuracy {row['accuracy']:.4f} (95 % CI {low:.4f}-{high:.4f}; "
                f"{row['correct']} of {row['examples']}), class recall [{recall}], epoch {row['epoch']}, "
                f"{row['seconds']:.0f} s on {row['device_name']}")
        if "against_first" in row:
            vs = row["against_first"]
            line += (f"; against the first: {100 * vs['accuracy_difference']:+.2f} points "
                     f"({vs['only_a_correct']} / {vs['only_b_correct']} examples only one gets right, "
                     f"McNemar p = {vs['mcnemar_p_value']:.2g})")
        print(line, flush=True)
    update_json_rows(out, "rows", rows,  # rows written before --test-time-augment existed were scored without it
                     key=lambda r: (r["checkpoint"], r.get("test_time_augment", "none"), r["task"], r["split"],
                                    r["data_dir"]),
                     what="fit-task checkpoints scored by `python -m pipelines evaluate-task`")
    print(f"-> {out}")
    return 0
