"""Strict JSON: what the project writes must parse anywhere (no NaN, no numpy types).

    plain(value)             numpy scalars and arrays, bytes, paths, tuples -> plain Python values
    strict_json(value)       plain(), and NaN and infinities -> None (JSON null)
    dumps_json(value)        the JSON text (indented); raises on anything that is not JSON
    write_json(path, value)  dumps_json, written atomically
    read_json(path)          a JSON file; not UTF-8 or not JSON -> one-line DatasetError naming it
    update_json_rows(path, section, rows, key, **fields)
                             a results file's list `section` with `rows` replacing those of the same key;
                             its other entries kept, `fields` set
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .errors import DatasetError, first_line
from .files import write_text_atomic


def plain(value: Any) -> Any:
    """numpy scalars -> Python numbers, arrays and tuples -> lists, bytes -> str, Path -> str; dicts and lists recursed."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return plain(value.tolist())
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")  # HDF5 attributes of other tools may hold any bytes
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def strict_json(value: Any) -> Any:
    """plain(value) with every NaN and infinity replaced by None (strict JSON has no NaN)."""
    value = plain(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: strict_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [strict_json(v) for v in value]
    return value


def dumps_json(value: Any, indent: int | None = 2, sort_keys: bool = False) -> str:
    return json.dumps(strict_json(value), indent=indent, sort_keys=sort_keys, allow_nan=False)


def write_json(path: str | os.PathLike, value: Any) -> Path:
    """Strict JSON (NaN and infinities as null, numpy values as numbers), written atomically."""
    return write_text_atomic(path, dumps_json(value) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    """The value of a JSON file an earlier stage (or a release) wrote; a damaged one is a one-line DatasetError."""
    path = Path(path)
    try:
        return json.loads(path.read_bytes())
    except ValueError as err:  # JSONDecodeError and non-UTF-8 bytes
        raise DatasetError(f"{path}: not valid JSON ({first_line(err)})") from None


def update_json_rows(path: str | os.PathLike, section: str, rows: list[dict], key: Callable[[dict], Any],
                     **fields: Any) -> Path:
    """Rewrite the results file `path`: the list `section` keeps its rows whose key(row) none of `rows` has, then
    `rows`; every other entry of the file stays, and `fields` are set. A missing file starts empty."""
    path = Path(path)
    results = read_json(path) if path.is_file() else {}  # a damaged file is refused, not replaced
    new = {key(row) for row in rows}
    kept = [row for row in results.get(section, []) if key(row) not in new]
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_json(path, {**results, **fields, section: kept + rows})
