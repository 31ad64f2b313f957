"""Where things live by default: the morphology and the mechanism build cache."""

from __future__ import annotations

import os
from pathlib import Path

from .errors import MorphologyError
from .morphology import check_morphology

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MORPHOLOGY = PROJECT_ROOT / "data" / "morphology" / "cell1.asc"
MORPHOLOGY_ENV = "L5PC_MORPHOLOGY"
# the read-only folder beside a checkout that holds cell1.asc where no download is possible (CI, the dev machines)
SHARED_MORPHOLOGY = PROJECT_ROOT.parent / "shared" / "morphologies" / "cell1.asc"


def resolve_morphology(cli_path: str | os.PathLike | None = None) -> Path:
    """The morphology file: `--morphology PATH`, else $L5PC_MORPHOLOGY, else data/morphology/cell1.asc."""
    if cli_path:
        path, origin = Path(cli_path), "--morphology"
    elif os.environ.get(MORPHOLOGY_ENV):
        path, origin = Path(os.environ[MORPHOLOGY_ENV]), f"${MORPHOLOGY_ENV}"
    else:
        path, origin = DEFAULT_MORPHOLOGY, "the default location"
    if not path.is_file():
        raise MorphologyError(
            f"morphology file not found: {path} (from {origin}); run `make morphology`, "
            f"pass --morphology PATH or set {MORPHOLOGY_ENV}=PATH to cell1.asc"
        )
    return check_morphology(path.resolve())  # a malformed file is an error here, never a hang in NEURON
