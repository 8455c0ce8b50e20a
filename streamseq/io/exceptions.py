"""Errors of the file readers."""

from __future__ import annotations

from streamseq.exceptions import DataError

__all__ = ["LayoutError"]


class LayoutError(DataError):
    """A file's layout cannot be read as asked or detected: no time column, a time format
    that the values do not decide, a named column that the file does not have. The message
    names the file, the column, a sample value and the option that resolves it."""
