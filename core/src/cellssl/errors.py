"""Exceptions that cellssl raises for mistakes a user can fix.

Every subclass of :class:`CellsslError` carries a message that says what is wrong, where (file, row,
config key) and what to do. The CLI prints such errors as one paragraph and exits non-zero, without a
traceback; any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations


class CellsslError(Exception):
    """Base class of user-facing errors (bad config, bad data, unknown plugin name)."""


class ConfigError(CellsslError):
    """A configuration value is missing, unknown or of the wrong type.

    The message starts with the full key path (for example ``data.bit_depth``).
    """

    def __init__(self, key: str, message: str) -> None:
        self.key = key
        super().__init__(f"config key '{key}': {message}" if key else message)


class DataError(CellsslError):
    """An input file, table row or image is missing, unreadable or inconsistent."""


class UnknownNameError(CellsslError):
    """A config names a plugin entry (dataset, backbone, ...) that no installed plugin registers."""


class DuplicateNameError(CellsslError):
    """Two plugins register the same name for the same kind of component."""


class CheckpointError(CellsslError):
    """A checkpoint file is missing, unreadable or does not match the model."""


class TrainingDivergedError(CellsslError):
    """The training loss became NaN or infinite; the last good checkpoint is kept."""
