"""Exceptions with enough context (file, column, row) for a user to fix their input."""

from __future__ import annotations


class RecsysError(Exception):
    """Base class for every error this package raises on purpose."""


class DataError(RecsysError, ValueError):
    """Bad input data.

    Args:
        message: what is wrong.
        file: the file the data came from, when there is one.
        column: the offending column, when one applies.
        row: the 0-based data row (header excluded) of the first offending value.
    """

    def __init__(self, message: str, *, file: str | None = None, column: str | None = None,
                 row: int | None = None) -> None:
        where = []
        if file is not None:
            where.append(f"file {file!s}")
        if column is not None:
            where.append(f"column {column!r}")
        if row is not None:
            where.append(f"row {row}")
        super().__init__(f"{message} ({', '.join(where)})" if where else message)
        self.file, self.column, self.row = file, column, row


class RunDirError(RecsysError, FileNotFoundError):
    """A run directory is missing or lacks a file that the command needs."""


class CheckpointError(RecsysError, RuntimeError):
    """A checkpoint cannot be read (truncated, corrupted or from an incompatible model)."""


class ServingError(RecsysError, ValueError):
    """A run cannot be served as asked: an index, gallery or option that does not fit what the run stores."""


class MissingDependencyError(RecsysError, ImportError):
    """An optional package that the command needs is not installed (the message says what to install)."""


class UsageError(RecsysError, ValueError):
    """An option value or combination the command refuses before doing anything (exit status 2, like argparse)."""
