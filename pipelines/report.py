"""`python -m pipelines report`: reports/report.md and figures from the evaluation outputs.

    python -m pipelines report --runs runs/quick --data data/quick --out reports

Reads RUNS/*/evaluation.json and predictions.h5 (written by `evaluate`), RUNS/*/metrics.csv
(written by `fit`) and one test shard of --data for an example input raster; the published
elmneuron scores come from --published (default $ELMNEURON_CHECKPOINTS, else
../shared/pretrained/elmneuron), if present.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--runs", required=True, type=Path, help="directory of evaluated run directories")
    parser.add_argument("--data", type=Path, default=None, help="dataset directory (for the example input raster)")
    parser.add_argument("--out", type=Path, default=Path("reports"), help="output directory (default: reports)")
    parser.add_argument("--published", type=Path, default=None,
                        help="published elmneuron folder with eval_results.csv "
                             "(default: $ELMNEURON_CHECKPOINTS, else ../shared/pretrained/elmneuron)")


def main(args: argparse.Namespace) -> int:
    from surrogate.evaluation import published_checkpoint_dir
    from simulation.errors import UserInputError
    from surrogate.report import write_report

    published = published_checkpoint_dir(args.published)
    if args.published and not published.is_dir():
        raise UserInputError(f"published checkpoint folder not found: {published}")
    # --data is optional (the raster is one panel), but a folder named and absent is a typo, not a choice
    if args.data is not None and not args.data.is_dir():
        raise UserInputError(f"--data: dataset directory not found: {args.data}")
    result = write_report(args.runs, args.data, args.out, published if published.is_dir() else None)
    for note in result["notes"]:
        print(f"note: {note}")
    print(f"wrote {result['report']} and {len(result['figures'])} figure(s): "
          f"{', '.join(p.name for p in result['figures'])}")
    return 0
