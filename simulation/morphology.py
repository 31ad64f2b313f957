"""Check a morphology file before NEURON reads it.

NEURON's readers trust their input: Import3d never returns on a truncated Neurolucida file
(an .asc cut in the middle of a branch), and an .swc whose sample names a parent that does
not exist crashes the process (a dask worker dies with it, and the user sees KilledWorker).
So every file is checked here first, in plain Python, and a malformed one is a
MorphologyError naming what is wrong:

    .asc   parentheses balanced (outside comments and strings), a cell body, dendrites
    .swc   7 numeric columns per sample, unique ids, every parent an existing sample,
           no cycles, a soma (type 1) and dendrites (types 3, 4)

These are the structural checks NEURON needs to terminate, not a validation of the
anatomy. `check_morphology(path)` is called by `resolve_morphology` (every command) and by
cell.L5PCCell (any library use), before NEURON sees the file. NEURON also takes only ASCII
paths: `path_neuron_can_read` hands it an ASCII-named copy of a file whose path is not.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from .errors import MorphologyError

MORPHOLOGY_SUFFIXES = (".asc", ".swc")
SWC_SOMA, SWC_DENDRITES = 1, (3, 4)  # SWC structure types: 1 soma, 3 basal, 4 apical dendrite


def check_morphology(path: str | os.PathLike) -> Path:
    """Raise MorphologyError unless `path` is a well-formed .asc or .swc file; return it."""
    path = Path(path)
    if not path.is_file():
        raise MorphologyError(f"morphology file not found: {path}")
    suffix = path.suffix.lower()
    if suffix not in MORPHOLOGY_SUFFIXES:
        raise MorphologyError(f"morphology {path}: expected a Neurolucida .asc or an .swc file")
    try:
        text = path.read_bytes().decode("latin-1")  # any byte decodes; the checks look at ASCII only
    except OSError as err:
        raise MorphologyError(f"morphology {path} cannot be read: {err.strerror or err}") from None
    problem = check_asc(text) if suffix == ".asc" else check_swc(text)
    if problem:
        raise MorphologyError(f"morphology {path}: {problem}")
    return path


@contextlib.contextmanager
def path_neuron_can_read(path: Path) -> Iterator[Path]:
    """`path`, or a temporary ASCII-named copy of it: NEURON's hoc strings take only ASCII paths."""
    if str(path).isascii():
        yield path
        return
    directory = tempfile.gettempdir()
    if not directory.isascii():
        raise MorphologyError(f"morphology {path}: NEURON reads only ASCII paths, and the temporary directory "
                              f"{directory} is not one; move the file to an ASCII path")
    fd, copy = tempfile.mkstemp(suffix=path.suffix.lower(), prefix="l5pc-morphology-")
    os.close(fd)
    try:
        shutil.copyfile(path, copy)
        yield Path(copy)
    finally:
        os.unlink(copy)


def check_asc(text: str) -> str | None:
    """None, or what makes this Neurolucida text unusable (first problem only)."""
    depth, line_number, opened_at = 0, 1, []
    top_level_blocks: list[str] = []
    block_start = None
    in_string = in_comment = False
    for position, char in enumerate(text):
        if char == "\n":
            line_number += 1
            in_comment = False
            continue
        if in_comment:
            continue
        if in_string:
            in_string = char != '"'
            continue
        if char == ";":
            in_comment = True
        elif char == '"':
            in_string = True
        elif char == "(":
            if depth == 0:
                block_start = position
            depth += 1
            opened_at.append(line_number)
        elif char == ")":
            if depth == 0:
                return f"line {line_number}: ')' closes nothing (unbalanced parentheses)"
            depth -= 1
            opened_at.pop()
            if depth == 0:
                top_level_blocks.append(text[block_start:position + 1])
    if in_string:
        return "a string is not closed (truncated file?)"
    if depth:
        return (f"{depth} parenthes{'is' if depth == 1 else 'es'} not closed, the outermost opened on line "
                f"{opened_at[0]} (truncated file?)")
    without_comments = [re.sub(r";[^\n]*", "", block) for block in top_level_blocks]
    if not any(re.search(r"\(\s*CellBody\s*\)", block, re.IGNORECASE) for block in without_comments):
        return "no cell body (no block marked (CellBody))"
    if not any(re.search(r"\(\s*(Dendrite|Apical)\s*\)", block, re.IGNORECASE) for block in without_comments):
        return "no dendrites (no block marked (Dendrite) or (Apical))"
    return None


def check_swc(text: str) -> str | None:
    """None, or what makes this SWC text unusable (first problem only)."""
    parent_of: dict[int, int] = {}
    type_of: dict[int, int] = {}
    line_of: dict[int, int] = {}
    for line_number, line in enumerate(text.splitlines(), start=1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        fields = line.split()
        if len(fields) < 7:
            return f"line {line_number}: expected 7 columns (id type x y z radius parent), got {len(fields)}"
        try:
            sample, kind, parent = int(fields[0]), int(fields[1]), int(fields[6])
            [float(v) for v in fields[2:6]]
        except ValueError:
            return f"line {line_number}: not numbers: {line[:80]!r}"
        if sample in parent_of:
            return f"line {line_number}: sample {sample} defined twice (first on line {line_of[sample]})"
        parent_of[sample], type_of[sample], line_of[sample] = parent, kind, line_number
    if not parent_of:
        return "no samples"
    for sample, parent in parent_of.items():
        if parent != -1 and parent not in parent_of:
            return f"line {line_of[sample]}: sample {sample} has parent {parent}, which does not exist"
    # every sample must lead to a root (parent -1): a cycle has none
    reaches_root: set[int] = set()
    for start in parent_of:
        on_path, sample = set(), start
        while sample != -1 and sample not in reaches_root:
            if sample in on_path:
                return f"line {line_of[sample]}: sample {sample} is its own ancestor (a cycle)"
            on_path.add(sample)
            sample = parent_of[sample]
        reaches_root.update(on_path)
    if SWC_SOMA not in type_of.values():
        return "no soma (no sample of type 1)"
    if not any(kind in SWC_DENDRITES for kind in type_of.values()):
        return "no dendrites (no sample of type 3 or 4)"
    return None
