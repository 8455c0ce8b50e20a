"""The exception root of streamseq. Every error we raise derives from :class:`StreamseqError`."""

from __future__ import annotations

__all__ = ["StreamseqError", "ConfigError", "CheckpointError"]


class StreamseqError(Exception):
    """Root of every error streamseq raises on purpose."""


class ConfigError(StreamseqError, ValueError):
    """A configuration value is missing, malformed or inconsistent."""


class CheckpointError(StreamseqError):
    """A checkpoint cannot be written, read or applied (torn file, version or architecture)."""
