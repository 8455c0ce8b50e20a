"""The exception root of streamseq. Every error we raise derives from :class:`StreamseqError`.

Two families tell the command line which exit code an error gets (see :mod:`streamseq.cli`):
:class:`UsageError` (2: the command was called wrongly) and :class:`DataError` (1: the input
cannot be used as given).
"""

from __future__ import annotations

__all__ = ["StreamseqError", "ConfigError", "CheckpointError", "UsageError", "DataError"]


class StreamseqError(Exception):
    """Root of every error streamseq raises on purpose."""


class ConfigError(StreamseqError, ValueError):
    """A configuration value is missing, malformed or inconsistent."""


class CheckpointError(StreamseqError):
    """A checkpoint cannot be written, read or applied (torn file, version or architecture)."""


class UsageError(StreamseqError, ValueError):
    """An option or argument is invalid in itself (a bad time format, an unknown zone, a
    file that does not exist): exit code 2 on the command line."""


class DataError(StreamseqError, ValueError):
    """The input cannot be used as given (a layout that is not understood, no valid row,
    nothing applied): exit code 1 on the command line."""
