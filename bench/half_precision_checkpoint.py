"""A checkpoint in float16, to carry a large model between GPU sessions under the device tool's limits.

    python bench/half_precision_checkpoint.py SOURCE DESTINATION

SOURCE: a checkpoint or a run directory (its best checkpoint). DESTINATION gets the model in float16 with its training
record, without the optimiser or the training copy of averaged weights (surrogate.checkpoints.half_precision_checkpoint):
the TCN's 9.2M parameters in 18.5 MB, where a run's best checkpoint, optimiser state included, holds 148 MB.
`fit --init-from`, `evaluate` and `predict` read it as they read any checkpoint. Exit 2, with one line, for a missing
or unreadable SOURCE.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from common.errors import UserInputError, first_line  # noqa: E402
from surrogate.checkpoints import BEST_CHECKPOINT, half_precision_checkpoint  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="a checkpoint, or a run directory (its checkpoint_best.pt)")
    parser.add_argument("destination", type=Path)
    args = parser.parse_args(argv)
    source = args.source / BEST_CHECKPOINT if args.source.is_dir() else args.source
    try:
        if not source.is_file():
            raise UserInputError(f"{source} not found")
        written = half_precision_checkpoint(source, args.destination)
    except UserInputError as err:
        print(f"error: {first_line(err)}", file=sys.stderr)
        return 2
    print(f"{written}: {written.stat().st_size / 1e6:.1f} MB (from {source.stat().st_size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
