"""Events: the schema, decoding from JSON bytes and CSV rows, and typed validation errors."""

from __future__ import annotations

from streamseq.events.decode import EventDecoder, decode_json, parse_time
from streamseq.events.errors import REASONS, EventError
from streamseq.events.schema import KINDS, Event

__all__ = ["Event", "EventDecoder", "EventError", "KINDS", "REASONS", "decode_json", "parse_time"]
