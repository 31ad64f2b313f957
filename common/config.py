"""Strict configuration: TOML files read into frozen dataclasses, every mistake named.

    read_toml(path)              the file's tables; unknown tables, bad syntax, bad encoding -> ConfigError
    read_toml_layers(paths)      several files, later ones overriding earlier ones key by key
    from_table(cls, table, where)  a dataclass from one table; unknown keys and wrong types -> ConfigError
    require(condition, message)  for dataclass __post_init__ range checks (ValueError -> ConfigError)

One config file holds the tables of every stage (configs/quick.toml: [cell] ... [train]), and
each stage reads only its own. A table that no stage reads is a typo and must be refused, so
reading a file needs every stage's list of tables. Each side owns its list, as CONFIG_TABLES
in its config module; TABLE_OWNERS below names those modules, which read_toml imports when it
checks a file. This is the one place where the ground floor names the floors above it: it
lets `simulate`, which never imports surrogate/, still accept [train] and refuse [trian].
Both modules are light (no NEURON, no torch; tests/test_common.py checks it).
"""

from __future__ import annotations

import dataclasses
import importlib
import tomllib
import typing
from pathlib import Path
from typing import Any, Sequence

from .errors import ConfigError

# the modules that declare config tables, each as a tuple CONFIG_TABLES
TABLE_OWNERS = ("simulation.config", "surrogate.config")


def known_tables() -> dict[str, str]:
    """Every table a config file may hold -> the module that reads it."""
    owners = {}
    for module_name in TABLE_OWNERS:
        for table in importlib.import_module(module_name).CONFIG_TABLES:
            owners[table] = module_name
    return owners


def parse_toml(path: str | Path) -> dict[str, Any]:
    """Parse a TOML file, whatever its tables; a missing file, bad encoding or bad syntax is a ConfigError."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        with open(path, "rb") as f:
            raw = tomllib.load(f)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: not valid TOML: {err}") from None
    except UnicodeDecodeError as err:  # TOML is UTF-8; tomllib decodes before parsing
        line = err.object[:err.start].count(b"\n") + 1
        raise ConfigError(f"{path}: not UTF-8 text (byte 0x{err.object[err.start]:02x} on line {line}); "
                          f"TOML files must be UTF-8") from None
    except OSError as err:
        raise ConfigError(f"{path}: cannot read the config: {err.strerror or err}") from None
    return raw


def read_toml(path: str | Path) -> dict[str, Any]:
    """Parse a TOML config file of the NeuronIO line; missing files, bad encoding or syntax and unknown tables
    become ConfigError."""
    raw = parse_toml(path)
    known = known_tables()
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise ConfigError(f"{path}: unknown table [{unknown[0]}] (known: {', '.join(sorted(known))})")
    return raw


def merge_tables(target: dict[str, dict], raw: dict[str, Any], where: str) -> dict[str, dict]:
    """Layer one file's tables onto `target`, key by key; a sub-table ([train.elm]) layers key by key too."""
    for name, table in raw.items():
        if not isinstance(table, dict):
            raise ConfigError(f"{where}: [{name}] must be a table, got {table!r}")
        merged = target.setdefault(name, {})
        for key, value in table.items():
            if isinstance(value, dict) and isinstance(merged.get(key), dict):
                merged[key] = {**merged[key], **value}
            else:
                merged[key] = value
    return target


def read_toml_layers(paths: str | Path | Sequence[str | Path]) -> tuple[dict[str, Any], str]:
    """read_toml of one file, or of several layered (`--config base.toml --config overlay.toml`: later
    files override earlier ones key by key); returns the tables and a name for messages ("a + b")."""
    paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
    if not paths:
        raise ConfigError("no config file given")
    merged: dict[str, dict] = {}
    for path in paths:
        merge_tables(merged, read_toml(path), str(path))
    return merged, " + ".join(str(p) for p in paths)


def require(condition: bool, message: str) -> None:
    """A range check in a config dataclass's __post_init__; from_table turns the ValueError into ConfigError."""
    if not condition:
        raise ValueError(message)


def _check_type(value: Any, annotation: Any, where: str) -> Any:
    """Coerce ints to floats where a float is expected; reject anything else of the wrong type."""
    origin = typing.get_origin(annotation)
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    if origin is tuple:
        args = typing.get_args(annotation)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_check_type(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{where}: expected a list of {len(args)} values, got {value!r}")
        return tuple(_check_type(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if origin is typing.Union or str(origin) == "<class 'types.UnionType'>":
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if value is None:
            return None
        return _check_type(value, args[0], where)
    return value


def from_table(cls: type, table: dict[str, Any] | None, where: str):
    """Build dataclass `cls` from a TOML table, rejecting unknown keys and wrong types."""
    table = dict(table or {})
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(table) - names)
    if unknown:
        raise ConfigError(f"{where}: unknown key '{unknown[0]}' (known: {', '.join(sorted(names))})")
    kwargs = {k: _check_type(v, hints[k], f"{where}.{k}") for k, v in table.items()}
    try:
        obj = cls(**kwargs)
    except ValueError as err:  # raised by __post_init__ range checks
        raise ConfigError(f"{where}: {err}") from None
    return obj
