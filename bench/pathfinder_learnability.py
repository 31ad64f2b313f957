"""Is the generated Pathfinder-32 learnable at all? A small CNN on the images, independent of the ELM.

    python bench/pathfinder_learnability.py [--variant default --variant easy] [--train 30000] [--test 2000] [--epochs 4]
                                            [--workers 2] [--data-dir DIR] [--out bench/results/pathfinder_learnability.json]
    python bench/pathfinder_learnability.py --marker-geometry 12000 [--variant default]    # the shortcut check below

A sequence model that stays at chance (docs/long_horizon.md) says nothing by itself: the task
may be hard, or its images may not carry the label. This trains a reference model that sees the
whole image at once, a CNN of five 3x3 convolutions with dilations 1, 2, 4, 8, 1 (a receptive
field of 33 pixels, the whole 32 x 32 image) and a global max-pool, on images made by
prepare-task's code (surrogate.tasks, the current generator revision), and reports its test
accuracy after every epoch. Variants: "default" (the LRA settings, contours of 14 paddles and
5 distractors), "easy" (contours of 6 paddles, no distractors) and "easy16" (16 x 16 pixels, contours
of 4 paddles, no distractors: T = 256 for the sequence models). Adam 1e-3, batch 64, seed 0,
on the CPU. Prints a table and writes one row per variant to the JSON (rows of other variants stay).

--marker-geometry N asks the opposite question: how much of the label can be read off the two
circles alone, without following any contour? For N training images of each variant (the
generator's own draw, which knows where it put the circles) it reports the 5-fold cross-validated
accuracy of a gradient-boosted classifier (scikit-learn) on the circles' geometry: their
distance, |dy| and |dx|, the four coordinates, and the gap between them in the row-by-row order a
sequence model reads. Near 50 % means no shortcut: a model above it follows the contours. Rows go
under "marker_geometry" in the JSON.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT))

from common.jsonio import update_json_rows  # noqa: E402
from common.machine import available_cores, cpu_model  # noqa: E402

VARIANTS = {"default": {}, "easy": {"contour_length": 6, "num_distractors": 0},
            "easy16": {"image_size": 16, "contour_length": 4, "num_distractors": 0, "seed_distance": 4.0}}
BATCH = 64


def draw_splits(name: str, train_size: int, test_size: int, workers: int, data_dir: Path):
    """The variant's training and test images through prepare-task's generator (seeded, resumable, `workers`
    processes; one validation image, unused), as float tensors (N, 1, S, S) in [0, 1] and int64 labels."""
    import h5py
    import torch

    from surrogate.tasks import open_split, prepare_task, task_settings

    table = {**VARIANTS[name], "train_size": train_size, "valid_size": 1, "test_size": test_size, "workers": workers}
    prepare_task("pathfinder32", data_dir / name, table)
    size = task_settings("pathfinder32", table).image_size  # the generator's own default where the variant sets none
    splits = []
    for split in ("train", "test"):
        dataset = open_split("pathfinder32", data_dir / name, split)  # checks the file (format, generator revision)
        with h5py.File(dataset.path, "r") as f:
            images = f["inputs"][...].reshape(-1, 1, size, size).astype(np.float32) / 255
        splits += [torch.from_numpy(images), torch.from_numpy(dataset.labels)]
    return splits


def reference_cnn():
    import torch.nn as nn

    layers, channels = [], 1
    for dilation in (1, 2, 4, 8, 1):
        layers += [nn.Conv2d(channels, 32, 3, padding=dilation, dilation=dilation), nn.BatchNorm2d(32), nn.ReLU()]
        channels = 32
    return nn.Sequential(*layers, nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(32, 2))


def run_variant(name: str, train_size: int, test_size: int, epochs: int, workers: int, data_dir: Path) -> dict:
    import torch

    started = time.perf_counter()
    x_train, y_train, x_test, y_test = draw_splits(name, train_size, test_size, workers, data_dir)
    drawn_s = time.perf_counter() - started
    print(f"{name}: {train_size} + {test_size} images drawn in {drawn_s:.0f} s", flush=True)
    torch.manual_seed(0)
    model = reference_cnn()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    history = []
    for epoch in range(1, epochs + 1):
        model.train()
        order, losses = torch.randperm(train_size), []
        for first in range(0, train_size, BATCH):
            batch = order[first:first + BATCH]
            loss = torch.nn.functional.cross_entropy(model(x_train[batch]), y_train[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        model.eval()
        with torch.no_grad():
            accuracy = (model(x_test).argmax(1) == y_test).float().mean().item()
        history.append({"epoch": epoch, "train_loss": float(np.mean(losses)), "test_accuracy": accuracy,
                        "elapsed_s": time.perf_counter() - started})
        print(f"{name} epoch {epoch}: train loss {history[-1]['train_loss']:.4f}, test accuracy {accuracy:.4f} "
              f"({test_size} images), {history[-1]['elapsed_s']:.0f} s", flush=True)
    from surrogate.tasks.pathfinder import GENERATOR_REVISION

    return {"variant": name, "settings": VARIANTS[name], "generator_revision": GENERATOR_REVISION,
            "train_images": train_size, "test_images": test_size, "label_share_train": float(y_train.float().mean()),
            "epochs": epochs, "history": history, "final_test_accuracy": history[-1]["test_accuracy"],
            "draw_s": drawn_s, "wall_s": time.perf_counter() - started, "threads": torch.get_num_threads()}


def circle_centres(settings, index: int) -> tuple[int, float, float, float, float]:
    """(label, y1, x1, y2, x2) of training image `index` as prepare-task draws it (the circles' centres in pixels)."""
    from surrogate.tasks.pathfinder import draw_image, image_stream
    from surrogate.tasks.storage import SPLIT_CODES

    _, label, details = draw_image(settings, image_stream(settings.seed, SPLIT_CODES["train"], index))
    (y1, x1), (y2, x2) = details["markers"]
    return label, y1, x1, y2, x2


def marker_geometry(name: str, images: int, workers: int) -> dict:
    """Cross-validated accuracy of a classifier that sees only the two circles' geometry (see the module docstring)."""
    import functools
    import multiprocessing

    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.model_selection import cross_val_score

    from surrogate.tasks import task_settings
    from surrogate.tasks.pathfinder import GENERATOR_REVISION

    started = time.perf_counter()
    settings = task_settings("pathfinder32", VARIANTS[name])
    with multiprocessing.Pool(workers) as pool:
        drawn = np.array(pool.map(functools.partial(circle_centres, settings), range(images), chunksize=100))
    labels, (y1, x1, y2, x2) = drawn[:, 0].astype(int), drawn[:, 1:].T
    side = settings.image_size
    distance = np.hypot(y2 - y1, x2 - x1)
    scan_gap = (np.floor(y2) * side + np.floor(x2)) - (np.floor(y1) * side + np.floor(x1))  # steps between them
    features = {"distance": distance[:, None], "|dy|, |dx|": np.c_[abs(y2 - y1), abs(x2 - x1)],
                "coordinates": np.c_[y1, x1, y2, x2], "scan-order gap": scan_gap[:, None],
                "all of them": np.c_[y1, x1, y2, x2, distance, scan_gap]}
    scores = {}
    for feature, values in features.items():
        accuracy = cross_val_score(HistGradientBoostingClassifier(random_state=0), values, labels, cv=5)
        scores[feature] = {"accuracy": float(accuracy.mean()), "std_over_folds": float(accuracy.std())}
        print(f"{name} circles' {feature}: {accuracy.mean():.4f} +- {accuracy.std():.4f} (5-fold, {images} images)",
              flush=True)
    return {"variant": name, "settings": VARIANTS[name], "generator_revision": GENERATOR_REVISION, "images": images,
            "label_share": float(labels.mean()), "classifier": "HistGradientBoostingClassifier, 5-fold cross-validation",
            "features": scores, "wall_s": time.perf_counter() - started}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", action="append", choices=sorted(VARIANTS), help="default: default and easy")
    parser.add_argument("--train", type=int, default=30000, help="training images per variant")
    parser.add_argument("--test", type=int, default=2000, help="test images per variant (split 2 of the generator)")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2, help="processes drawing images")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="keep the drawn images here (DIR/<variant>/pathfinder32/; a re-run reuses them); default: a temporary directory")
    parser.add_argument("--out", type=Path, default=PROJECT_ROOT / "bench" / "results" / "pathfinder_learnability.json")
    parser.add_argument("--marker-geometry", type=int, default=0, metavar="N",
                        help="instead of the CNN: how well the circles' geometry alone predicts the label, on N images")
    args = parser.parse_args(argv)
    stamp = dict(updated=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                 host=platform.node(), machine=f"{cpu_model()}, {available_cores()} cores",
                 python=platform.python_version())
    if args.marker_geometry:
        rows = [marker_geometry(name, args.marker_geometry, args.workers) for name in args.variant or ["default"]]
        print(f"\n{'variant':<9} {'images':>7} " + " ".join(f"{f:>15}" for f in rows[0]["features"]))
        for row in rows:
            print(f"{row['variant']:<9} {row['images']:>7} "
                  + " ".join(f"{v['accuracy']:>15.4f}" for v in row["features"].values()))
        update_json_rows(args.out, "marker_geometry", rows, key=lambda row: row["variant"],
                         benchmark="pathfinder_learnability", **stamp)
        print(f"-> {args.out}")
        return 0
    with tempfile.TemporaryDirectory(prefix="pathfinder_learnability_") as scratch:
        data_dir = args.data_dir or Path(scratch)
        rows = [run_variant(name, args.train, args.test, args.epochs, args.workers, data_dir)
                for name in args.variant or ["default", "easy"]]
    print(f"\n{'variant':<9} {'revision':>8} {'train':>7} {'epochs':>6} {'test acc':>9} {'wall s':>7}")
    for row in rows:
        print(f"{row['variant']:<9} {row['generator_revision']:>8} {row['train_images']:>7} {row['epochs']:>6} "
              f"{row['final_test_accuracy']:>9.4f} {row['wall_s']:>7.0f}")
    update_json_rows(args.out, "rows", rows, key=lambda row: row["variant"], benchmark="pathfinder_learnability", **stamp)
    print(f"-> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
