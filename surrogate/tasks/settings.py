"""Settings of the long-horizon tasks: one frozen dataclass per task, the single source of truth.

    task_settings(name, table)          the task's dataclass from a plain dict (a TOML table); unknown keys -> ConfigError
    settings_from_file(path, name)      the table [tasks.<name>] of a TOML file (absent: the defaults)
    fingerprint(settings)               the settings that decide the data, as a dict (stored in every file)

A config file names the settings of task NAME in the table `[tasks.NAME]`, e.g.

    [tasks.listops]
    train_size = 2000
    seed = 1

    [tasks.shd-adding]
    shd_dir = "/data/shd"
    bin_ms = 4.0

Sizes, seeds and generator settings change the data; `chunk_size` only changes how often a
generator saves its work and `workers` how many processes draw ListOps expressions or
Pathfinder images, never the data (the outputs are byte-identical for any chunk size and number of workers).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.config import from_table, parse_toml, require
from common.errors import ConfigError

# the TOML table that holds one sub-table per task; CONFIG_TABLES in the form common.config.TABLE_OWNERS reads
TABLE = "tasks"
CONFIG_TABLES = (TABLE,)
# the tables beside [tasks] in a task config file: the fit-task run's (surrogate.sequence_train reads them).
# Named here, where no torch is imported, so that prepare-task refuses a misspelt table as fit-task does.
RUN_TABLES = ("task", "train", "model", "elm", "branch_elm", "lstm")
SPLITS = ("train", "valid", "test")

# settings that do not change the data (left out of the fingerprint stored in the files)
NOT_DATA = ("chunk_size", "shd_dir", "workers")


@dataclass(frozen=True)
class ListOpsSettings:
    """LRA ListOps (Tay et al. 2021) after Nangia & Bowman (2018); defaults are LRA's."""

    seed: int = 0
    train_size: int = 96_000
    valid_size: int = 2_000
    test_size: int = 2_000
    max_depth: int = 10  # the root has depth 1; nodes at max_depth are digits
    max_args: int = 10  # an operator takes 2..max_args arguments
    min_length: int = 500  # a sequence is kept when min_length < tokens < max_length (LRA)
    max_length: int = 2_000  # also the padded length T
    chunk_size: int = 1_000  # samples per saved chunk (resume granularity)
    workers: int = 1  # processes that draw expressions (the samples do not depend on it)

    def __post_init__(self):
        _check_sizes(self)
        require(self.max_depth >= 2, f"max_depth must be >= 2, got {self.max_depth}")
        require(self.max_args >= 2, f"max_args must be >= 2, got {self.max_args}")
        require(0 <= self.min_length < self.max_length - 1,
                f"need 0 <= min_length < max_length - 1, got {self.min_length} and {self.max_length}")
        require(self.max_length <= 32_767, f"max_length must be <= 32767, got {self.max_length}")
        require(1 <= self.workers <= 512, f"workers must be in [1, 512], got {self.workers}")


@dataclass(frozen=True)
class PathfinderSettings:
    """LRA Pathfinder (Linsley et al. 2018, Tay et al. 2021); the defaults are LRA's 32x32 "hard" set.

    Lengths are in pixels of the final image. A contour is a chain of `contour_length`
    paddles (line segments of `paddle_length`), consecutive paddles 2 x margin apart, the
    margin drawn per image from `paddle_margin`; its direction changes by at most
    90 / continuity degrees per paddle.
    """

    seed: int = 0
    train_size: int = 160_000
    valid_size: int = 20_000
    test_size: int = 20_000
    image_size: int = 32
    contour_length: int = 14  # paddles of each of the two target contours
    distractor_length: int = 4  # paddles of each distractor contour (LRA: contour_length // 3)
    num_distractors: int = 5  # distractor contours (LRA 32: 20 // distractor_length)
    paddle_length: float = 2.0
    paddle_thickness: float = 0.5
    paddle_margin: tuple[int, ...] = (1,)  # one value drawn per image
    continuity: float = 1.0
    seed_distance: float = 7.0  # distance between the starting points of the two target contours
    marker_radius: float = 1.5
    padding: int = 1  # no paddle within this many pixels of the border
    antialias: int = 2  # supersampling factor of the renderer and the collision grid
    snake_contrast: float = 2.0
    paddle_contrast: float = 0.75
    max_contour_retrial: int = 4  # tries per distractor contour before it is left out
    chunk_size: int = 1_000
    workers: int = 1  # processes that draw images (the images do not depend on it)

    def __post_init__(self):
        _check_sizes(self)
        require(8 <= self.image_size <= 1024, f"image_size must be in [8, 1024], got {self.image_size}")
        require(self.contour_length >= 1, f"contour_length must be >= 1, got {self.contour_length}")
        require(self.distractor_length >= 1, f"distractor_length must be >= 1, got {self.distractor_length}")
        require(self.num_distractors >= 0, f"num_distractors must be >= 0, got {self.num_distractors}")
        require(self.paddle_length > 0 and self.paddle_thickness > 0, "paddle_length and paddle_thickness must be > 0")
        require(len(self.paddle_margin) >= 1 and all(m >= 0 for m in self.paddle_margin),
                f"paddle_margin must be a non-empty list of margins >= 0, got {list(self.paddle_margin)}")
        require(self.continuity > 0, f"continuity must be > 0, got {self.continuity}")
        require(self.seed_distance > 0 and self.marker_radius > 0, "seed_distance and marker_radius must be > 0")
        require(0 <= self.padding < self.image_size // 4, f"padding must be in [0, image_size / 4), got {self.padding}")
        require(1 <= self.antialias <= 8, f"antialias must be in [1, 8], got {self.antialias}")
        require(self.snake_contrast > 0 and self.paddle_contrast > 0, "contrasts must be > 0")
        require(self.max_contour_retrial >= 0, f"max_contour_retrial must be >= 0, got {self.max_contour_retrial}")
        require(1 <= self.workers <= 512, f"workers must be in [1, 512], got {self.workers}")


# LRA's Pathfinder-X (128 x 128, "hard": contour length 14), from the generator settings
# published with LRA (lra_benchmarks/data/pathfinder.py, integer division as in Python 2)
PATHFINDER128 = dict(
    image_size=128, contour_length=14, distractor_length=4, num_distractors=8, paddle_length=5.0,
    paddle_thickness=1.5, paddle_margin=(2, 3), continuity=1.8, seed_distance=20.0, marker_radius=3.0,
    padding=1, antialias=2, snake_contrast=0.9, paddle_contrast=1.0,
)


@dataclass(frozen=True)
class Pathfinder128Settings(PathfinderSettings):
    """Pathfinder-X: PathfinderSettings with LRA's 128 x 128 values as defaults."""

    image_size: int = PATHFINDER128["image_size"]
    num_distractors: int = PATHFINDER128["num_distractors"]
    paddle_length: float = PATHFINDER128["paddle_length"]
    paddle_thickness: float = PATHFINDER128["paddle_thickness"]
    paddle_margin: tuple[int, ...] = PATHFINDER128["paddle_margin"]
    continuity: float = PATHFINDER128["continuity"]
    seed_distance: float = PATHFINDER128["seed_distance"]
    marker_radius: float = PATHFINDER128["marker_radius"]
    snake_contrast: float = PATHFINDER128["snake_contrast"]
    paddle_contrast: float = PATHFINDER128["paddle_contrast"]
    chunk_size: int = 250


@dataclass(frozen=True)
class ShdAddingSettings:
    """SHD-Adding (Spieler et al. 2024): two Spiking Heidelberg Digits in a row, label = sum of the digits.

    `shd_dir` holds shd_train.h5 and shd_test.h5 as downloaded. The pair counts follow the
    ELM code's epoch (500 batches of 256 pairs; a fifth of that for validation, half for test).
    """

    shd_dir: str = ""
    seed: int = 0
    bin_ms: float = 2.0
    digit_ms: float = 1_000.0  # each digit is binned over [0, digit_ms); later spikes are dropped
    valid_fraction: float = 0.1  # share of shd_train.h5's samples held out for validation pairs
    train_pairs: int = 128_000
    valid_pairs: int = 25_600
    test_pairs: int = 64_000

    def __post_init__(self):
        require(self.bin_ms > 0, f"bin_ms must be > 0, got {self.bin_ms}")
        require(self.digit_ms >= self.bin_ms, f"digit_ms must be >= bin_ms, got {self.digit_ms}")
        n_bins = self.digit_ms / self.bin_ms
        require(abs(n_bins - round(n_bins)) < 1e-9, f"digit_ms ({self.digit_ms}) must be a multiple of bin_ms ({self.bin_ms})")
        require(0 < self.valid_fraction < 1, f"valid_fraction must be in (0, 1), got {self.valid_fraction}")
        for name in ("train_pairs", "valid_pairs", "test_pairs"):
            require(getattr(self, name) >= 1, f"{name} must be >= 1, got {getattr(self, name)}")

    @property
    def bins_per_digit(self) -> int:
        return int(round(self.digit_ms / self.bin_ms))


def _check_sizes(s) -> None:
    require(s.seed >= 0, f"seed must be >= 0, got {s.seed}")
    for name in ("train_size", "valid_size", "test_size"):
        require(getattr(s, name) >= 1, f"{name} must be >= 1, got {getattr(s, name)}")
    require(s.chunk_size >= 1, f"chunk_size must be >= 1, got {s.chunk_size}")


SETTINGS = {
    "listops": ListOpsSettings,
    "pathfinder32": PathfinderSettings,
    "pathfinder128": Pathfinder128Settings,
    "shd-adding": ShdAddingSettings,
}


def task_settings(name: str, table: dict[str, Any] | None = None):
    """The settings of task `name`: its dataclass's defaults overridden by `table` (checked: ConfigError)."""
    if name not in SETTINGS:
        raise ConfigError(f"unknown task '{name}' (known: {', '.join(SETTINGS)})")
    if isinstance(table, SETTINGS[name]):
        return table
    return from_table(SETTINGS[name], table, f"[{TABLE}.{name}]")


def settings_from_file(path: str | Path, name: str):
    """Task `name`'s settings from the table [tasks.<name>] of a TOML file; the run's tables are left to fit-task.

    A missing file, bad TOML, a table that is neither [tasks] nor one of RUN_TABLES, a [tasks] entry that is
    not a known task and unknown keys are ConfigError.
    """
    path = Path(path)
    raw = parse_toml(path)
    misspelt = sorted(set(raw) - {TABLE, *RUN_TABLES})
    if misspelt:
        raise ConfigError(f"{path}: unknown table [{misspelt[0]}] (known: {', '.join((*RUN_TABLES, TABLE))})")
    tables = raw.get(TABLE, {})
    if not isinstance(tables, dict):
        raise ConfigError(f"{path}: [{TABLE}] must be a table of tables ([{TABLE}.listops], ...)")
    unknown = sorted(set(tables) - set(SETTINGS))
    if unknown:
        raise ConfigError(f"{path}: unknown task [{TABLE}.{unknown[0]}] (known: {', '.join(SETTINGS)})")
    table = tables.get(name)
    if table is not None and not isinstance(table, dict):
        raise ConfigError(f"{path}: [{TABLE}.{name}] must be a table")
    try:
        return task_settings(name, table)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None


def fingerprint(settings) -> dict[str, Any]:
    """The settings that decide the data (everything but chunk_size and paths), as plain values."""
    values = dataclasses.asdict(settings)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in values.items() if k not in NOT_DATA}
