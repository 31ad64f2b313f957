"""What the dihedral test-time views add, view by view: accuracy against the number of views averaged.

    python bench/test_time_views.py --task pathfinder32 --data-dir .carry/tasks \
        --checkpoint ft3_dihedral=RUN_DIR [--checkpoint LABEL=RUN_DIR ...] [--split test] [--device auto] \
        [--out bench/results/test_time_views.json] [--plot docs/test_time_views.png]

For each fit-task checkpoint, every image of the split is classified in each of its 8 rotations / reflections
(surrogate.sequence_train.dihedral_view_log_probs). Reported: each view's accuracy alone, and for k = 1..8 the
accuracy of the mean class probabilities over every set of k views (mean, lowest and highest over the C(8, k)
sets); k = 8 is what `python -m pipelines evaluate-task --test-time-augment dihedral` reports, k = 1 with view 0 is
the plain score. The 8-view score is paired with view 0 on the same images (McNemar's exact test). A pixel-by-pixel
reader sees each view as another sequence, so how far the views' errors differ decides the gain: the fraction of
images that every view gets right, and that none does, are reported too.
"""

from __future__ import annotations

import argparse
import itertools
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from common.errors import UserInputError, first_line  # noqa: E402
from common.jsonio import update_json_rows  # noqa: E402
from pipelines.evaluate_task import SPLIT_NAMES  # noqa: E402
from surrogate.tasks import TASKS  # noqa: E402

sys.path.insert(0, str(ROOT / "bench"))
from long_horizon import PAPER_ELM  # noqa: E402


def parse_checkpoint(text: str) -> tuple[str, Path]:
    label, sep, path = text.partition("=")
    if not sep or not label or not path:
        raise UserInputError(f"--checkpoint {text!r}: expected LABEL=RUN_DIR")
    return label, Path(path)


def view_log_probs(model, dataset, batch_size: int, device, on_batch=None):
    """(log-probabilities (8, N, classes), labels (N,)) of every image of `dataset` in its 8 views, on the CPU."""
    import torch

    from surrogate.sequence_train import collate_examples, dihedral_view_log_probs

    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate_examples)
    kept, labels = [], []
    model.eval()
    with torch.no_grad():
        for batch in loader:
            images, lengths = batch["inputs"].to(device), batch["length"].to(device)
            kept.append(dihedral_view_log_probs(model, images, lengths).cpu())
            labels.append(batch["label"])
            if on_batch is not None:
                on_batch(len(batch["label"]))
    return torch.cat(kept, 1), torch.cat(labels)


def views_curve(log_probs, labels) -> dict:
    """Accuracy of the mean probabilities over each set of k views, k = 1..8; per view; agreement of the views."""
    from surrogate.metrics import classification_metrics, paired_accuracy_difference

    views = log_probs.shape[0]
    probs = log_probs.exp()
    right = probs.argmax(-1) == labels  # (views, N)
    curve = []
    for k in range(1, views + 1):
        sets = list(itertools.combinations(range(views), k))
        accuracies = [((probs[list(subset)].mean(0).argmax(-1) == labels).float().mean().item()) for subset in sets]
        lowest = min(range(len(sets)), key=accuracies.__getitem__)
        highest = max(range(len(sets)), key=accuracies.__getitem__)
        curve.append({"views": k, "sets": len(sets), "mean_accuracy": sum(accuracies) / len(accuracies),
                      "lowest_accuracy": accuracies[lowest], "lowest_set": list(sets[lowest]),
                      "highest_accuracy": accuracies[highest], "highest_set": list(sets[highest])})
    averaged = probs.mean(0).argmax(-1)
    scores = classification_metrics(averaged.numpy(), labels.numpy(), int(log_probs.shape[-1]))
    return {"per_view_accuracy": right.float().mean(1).tolist(), "curve": curve,
            "all_views": {key: scores[key] for key in ("accuracy", "correct", "examples", "accuracy_ci95")},
            "all_views_against_view_0": paired_accuracy_difference(averaged.numpy() == labels.numpy(),
                                                                   right[0].numpy()),
            "every_view_right": right.all(0).float().mean().item(),
            "no_view_right": (~right.any(0)).float().mean().item(),
            "single_view_error_correlation": _mean_error_correlation(~right)}


def _mean_error_correlation(wrong) -> float | None:
    """Mean Pearson correlation of two views' per-image errors over the 28 pairs of views (1: the same errors)."""
    centred = wrong.float() - wrong.float().mean(1, keepdim=True)
    norms = centred.norm(dim=1)
    pairs = [(a, b) for a, b in itertools.combinations(range(wrong.shape[0]), 2) if norms[a] * norms[b] > 0]
    if not pairs:  # a view right (or wrong) on every image has no error pattern to correlate
        return None
    return sum(((centred[a] @ centred[b]) / (norms[a] * norms[b])).item() for a, b in pairs) / len(pairs)


def plot(rows: list[dict], task: str, split: str, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from surrogate.report import save_figure

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for row in rows:
        k = [point["views"] for point in row["curve"]]
        trained = "turned" if row["augment_in_training"] == "dihedral" else "unturned"
        ax.plot(k, [100 * p["mean_accuracy"] for p in row["curve"]], marker="o",
                label=f"{row['label']} (epoch {row['epoch']}, trained on {trained} images)")
        ax.fill_between(k, [100 * p["lowest_accuracy"] for p in row["curve"]],
                        [100 * p["highest_accuracy"] for p in row["curve"]], alpha=0.2)
    paper = PAPER_ELM.get(task, {}).get("test_accuracy")
    if isinstance(paper, float):
        ax.axhline(100 * paper, color="grey", linestyle="--", label=f"paper's ELM, one pass ({100 * paper:.2f} %)")
    ax.set_xlabel("views averaged (of the 8 rotations / reflections)")
    ax.set_ylabel(f"{split} accuracy (%)")
    examples = rows[0]["all_views"]["examples"]
    ax.set_title(f"{task}: test-time views ({examples} {split} images; band: lowest-highest set of k views)",
                 fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    save_figure(fig, path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", required=True, choices=[name for name, spec in TASKS.items()
                                                          if spec.input_kind == "pixels"])
    parser.add_argument("--data-dir", required=True, type=Path)
    parser.add_argument("--checkpoint", required=True, action="append", metavar="LABEL=RUN_DIR")
    parser.add_argument("--split", default="test", choices=SPLIT_NAMES)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "test_time_views.json")
    parser.add_argument("--plot", type=Path, default=None, help="PNG of accuracy against the views averaged")
    args = parser.parse_args(argv)
    try:
        rows = measure(args)
    except UserInputError as err:
        print(f"error: {first_line(err)}", file=sys.stderr)
        return 2
    update_json_rows(args.out, "rows", rows, key=lambda r: (r["label"], r["task"], r["split"]),
                     benchmark="test_time_views", updated=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                     host=platform.node(),
                     method="each image in its 8 rotations / reflections (surrogate.tasks.datasets.dihedral_views); "
                            "curve: accuracy of the mean class probabilities over every set of k views, k = 1..8; "
                            "all_views_against_view_0: McNemar's exact test on the same images")
    if args.plot:
        plot(rows, args.task, args.split, args.plot)
        print(f"-> {args.plot}")
    print(f"-> {args.out}")
    return 0


def measure(args: argparse.Namespace) -> list[dict]:
    import torch
    from tqdm import tqdm

    from surrogate.devices import resolve_device
    from surrogate.sequence_train import load_sequence_model, open_task_split

    if args.batch_size < 1:
        raise UserInputError(f"--batch-size must be at least 1, got {args.batch_size}")
    device = resolve_device(args.device)
    checkpoints = [parse_checkpoint(text) for text in args.checkpoint]
    models = []
    for label, path in checkpoints:  # all read before the long part
        model, checkpoint = load_sequence_model(path, device, task=args.task)
        models.append((label, path, model, checkpoint))
    dataset = open_task_split(args.task, args.data_dir, args.split)
    rows = []
    for label, path, model, checkpoint in models:
        started = time.perf_counter()
        with tqdm(total=len(dataset), unit="image", desc=label, leave=False) as bar:
            log_probs, labels = view_log_probs(model, dataset, args.batch_size, device, bar.update)
        row = {"label": label, "checkpoint": str(path), "task": args.task, "split": args.split,
               "epoch": checkpoint["state"]["epoch"],
               "augment_in_training": checkpoint["identity"]["train"].get("augment", "none"),
               **views_curve(log_probs, labels),
               "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
               "seconds": round(time.perf_counter() - started, 1)}
        rows.append(row)
        vs, every = row["all_views_against_view_0"], row["all_views"]
        per_view = " ".join(f"{100 * a:.1f}" for a in row["per_view_accuracy"])
        correlation = row["single_view_error_correlation"]
        print(f"{label}: {args.split} ({every['examples']} images) each view alone [{per_view}] %, the mean of all 8 "
              f"{100 * every['accuracy']:.2f} % ({vs['only_a_correct']} / {vs['only_b_correct']} images right only "
              f"with all 8 / only in view 0, McNemar p = {vs['mcnemar_p_value']:.2g}); every view right "
              f"{100 * row['every_view_right']:.1f} %, none {100 * row['no_view_right']:.1f} %, error correlation "
              f"between views {'-' if correlation is None else f'{correlation:.2f}'}; {row['seconds']:.0f} s", flush=True)
        for point in row["curve"]:
            print(f"    {point['views']} views: {100 * point['mean_accuracy']:.2f} % "
                  f"({100 * point['lowest_accuracy']:.2f} with views {point['lowest_set']} to "
                  f"{100 * point['highest_accuracy']:.2f} with {point['highest_set']}, {point['sets']} sets)",
                  flush=True)
    return rows


if __name__ == "__main__":
    sys.exit(main())
