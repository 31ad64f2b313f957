"""Errors caused by what the user gave us (a config, a file, an array).

Entry points print these on one line (`error: ...`) and exit with code 2; anything else is
a bug and keeps its traceback. Each side adds its own kinds (simulation.errors.MorphologyError,
surrogate.checkpoints.CheckpointError); simulation.errors re-exports these for its callers.
"""


class UserInputError(Exception):
    """Bad input: a config typo, a missing or corrupt file, a wrong array shape."""


class ConfigError(UserInputError):
    """A configuration file that cannot be used as written."""


class DatasetError(UserInputError):
    """An HDF5 shard (or input file) that is missing, truncated or of the wrong schema."""


class InputShapeError(UserInputError):
    """An input-spike array whose shape or type does not match the cell."""


class OutputError(UserInputError):
    """The output location cannot be written: read-only, full, missing permissions."""


def first_line(err: BaseException) -> str:
    """An exception as one short line (its message's first line, or its type): for one-line errors."""
    return str(err).splitlines()[0] if str(err) else type(err).__name__

