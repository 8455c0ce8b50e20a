"""Typed validation errors. Each carries a short machine-readable ``reason``.

The reason is what the dead-letter header, the ``streamseq_events_rejected_total{reason}``
counter and the backtest report use, so it is a closed set (:data:`REASONS`).
"""

from __future__ import annotations

from streamseq.exceptions import StreamseqError

__all__ = ["EventError", "REASONS"]

REASONS: dict[str, str] = {
    "not_utf8": "payload is not valid UTF-8",
    "not_json": "payload is not a JSON document",
    "not_object": "JSON document is not an object",
    "too_large": "payload exceeds the configured size limit",
    "missing_key": "no key field (key / sensor_id / symbol)",
    "bad_key": "key is empty, too long or not a string",
    "missing_time": "no event time field (ts / timestamp / time)",
    "bad_time": "event time cannot be parsed or is out of range",
    "missing_value": "a required value is absent or null and the missing policy rejects it",
    "no_values": "the event carries no numeric value",
    "non_numeric": "a value is not a number",
    "non_finite": "a value is NaN or infinite",
    "out_of_range": "a value's magnitude exceeds the configured bound (features.max_abs_value)",
    "unknown_fields": "the value names differ from the schema the key's shard was built with",
    "bad_kind": "event kind is unknown",
    "duplicate": "same key and event time as an event already applied",
    "late": "event time is older than the key's last event beyond the lateness tolerance",
    "bad_text": "text field is absent, empty or not a string",
    "bad_label": "label is absent, unknown or refers to an unknown message id",
}


class EventError(StreamseqError, ValueError):
    """An input message or row that cannot become a valid event.

    Parameters
    ----------
    reason
        One of :data:`REASONS`.
    detail
        Human-readable explanation (field names, offending value).

    Examples
    --------
    >>> e = EventError("non_finite", "value 'temp' is NaN")
    >>> e.reason, str(e)
    ('non_finite', "non_finite: value 'temp' is NaN")
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        if reason not in REASONS:
            raise ValueError(f"unknown event error reason {reason!r}")
        self.reason = reason
        self.detail = detail or REASONS[reason]
        super().__init__(f"{reason}: {self.detail}")
