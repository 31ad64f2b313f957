"""`python -m pipelines prepare-task --task NAME --data-dir DIR`: make a long-horizon task's data (docs/long_horizon.md).

listops, pathfinder32 and pathfinder128 are generated (seeded; no download) into
DIR/NAME/{train,valid,test}.h5; shd-adding checks the Spiking Heidelberg Digits files in
--shd-dir (or shd_dir in the config) and writes the seeded pair lists. Settings come from
the table [tasks.NAME] of --config, defaults otherwise. Re-running the same command resumes
an interrupted run and keeps finished files. Exit codes: 0 done, 2 bad input (config, SHD
files, an output directory in use, read-only or full).
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from surrogate.tasks.settings import SETTINGS

    parser.add_argument("--task", required=True, choices=sorted(SETTINGS), help="the task to prepare")
    parser.add_argument("--data-dir", type=Path, required=True, help="the task's files go to DATA_DIR/TASK/")
    parser.add_argument("--config", type=Path, default=None,
                        help="TOML file whose table [tasks.TASK] holds the settings (sizes, seed, ...)")
    parser.add_argument("--shd-dir", type=Path, default=None,
                        help="shd-adding: the directory with shd_train.h5 and shd_test.h5 (overrides shd_dir)")
    parser.add_argument("--workers", type=int, default=None,
                        help="listops, pathfinder32/128: processes that draw the samples (overrides workers; "
                             "the same samples for any N)")


def main(args: argparse.Namespace) -> int:
    import time

    from common.errors import UserInputError
    from common.jsonio import dumps_json
    from pipelines.common import ProgressBar
    from surrogate.tasks import TASKS, prepare_task
    from surrogate.tasks.settings import fingerprint, settings_from_file, task_settings

    settings = settings_from_file(args.config, args.task) if args.config else task_settings(args.task)
    if args.shd_dir is not None:
        if args.task != "shd-adding":
            raise UserInputError(f"--shd-dir is for the task shd-adding, not {args.task}")
        settings = dataclasses.replace(settings, shd_dir=str(args.shd_dir))
    if args.workers is not None:
        if args.task == "shd-adding":
            raise UserInputError("--workers is for the generated tasks (listops, pathfinder32/128), not shd-adding")
        if args.workers < 1:
            raise UserInputError(f"--workers must be >= 1, got {args.workers}")
        settings = dataclasses.replace(settings, workers=args.workers)
    spec = TASKS[args.task]
    print(f"{args.task}: {spec.input_kind}, {spec.num_classes} classes -> {args.data_dir / args.task}")
    print(f"settings: {dumps_json(fingerprint(settings), indent=None)}")
    started = time.perf_counter()
    unit = "pair" if args.task == "shd-adding" else "sample"
    with ProgressBar(f"prepare-task {args.task}", unit=unit) as progress:
        task_dir = prepare_task(args.task, args.data_dir, settings, progress=progress)
    print(f"done in {time.perf_counter() - started:,.1f} s: {task_dir}/{{train,valid,test}}.h5")
    return 0
