"""Errors caused by what the user gave us: the common kinds (common.errors) and the simulation's own.

Entry points print these on one line and exit with code 2; anything else is a bug and keeps
its traceback. The common kinds are re-exported here so `from simulation.errors import
DatasetError` keeps working; they are the same classes.
"""

from common.errors import ConfigError, DatasetError, InputShapeError, UserInputError

__all__ = ["UserInputError", "ConfigError", "DatasetError", "InputShapeError", "MorphologyError"]


class MorphologyError(UserInputError):
    """The morphology file is missing, unreadable or malformed."""
