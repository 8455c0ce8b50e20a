"""Errors of the text subpackage (all under :class:`streamseq.exceptions.StreamseqError`).

Bad input events raise :class:`streamseq.events.EventError` (reasons ``bad_text``,
``bad_label``, ...); unusable checkpoints :class:`streamseq.exceptions.CheckpointError`;
bad settings :class:`streamseq.exceptions.ConfigError`.
"""

from __future__ import annotations

from streamseq.exceptions import StreamseqError

__all__ = ["TextModelError"]


class TextModelError(StreamseqError):
    """A text model cannot do what was asked (e.g. generate before learning any token)."""
