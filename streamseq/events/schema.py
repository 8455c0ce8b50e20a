"""The event record shared by every source (Kafka, files, simulators).

Wire format (JSON, one object per message). The key field may be ``key``, ``sensor_id``
(sensor) or ``symbol`` (price); the time field ``ts``, ``timestamp``, ``time`` or
``event_time`` as epoch milliseconds or ISO 8601::

    {"kind": "sensor", "sensor_id": "s-17", "ts": "2024-01-01T00:00:00Z", "values": {"temp": 21.5}}
    {"kind": "price", "symbol": "SPY", "ts": 1700000000000, "price": 451.2, "size": 100}
    {"kind": "price", "symbol": "SPY", "ts": 1700000000000, "open": 1, "high": 2, "low": 0.5,
     "close": 1.5, "volume": 1000}

A ``null`` value marks a missing reading (handled by the missing-value policy downstream);
``NaN``/``Infinity`` literals are rejected as ``non_finite``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["Event", "KINDS", "PRICE_FIELDS"]

KINDS = ("sensor", "price")
PRICE_FIELDS = ("price", "size", "open", "high", "low", "close", "volume")


@dataclass(frozen=True, slots=True)
class Event:
    """One validated observation of one key.

    Attributes
    ----------
    kind
        ``"sensor"`` or ``"price"``.
    key
        Sensor id or symbol.
    ts_ms
        Event time, epoch milliseconds (UTC).
    values
        Named readings; ``None`` marks a missing reading inside an otherwise valid event.
    id
        Optional producer-side message id (used for duplicate detection when present).
    """

    kind: str
    key: str
    ts_ms: int
    values: dict[str, float | None]
    id: str | None = None
    meta: dict[str, object] = field(default_factory=dict, compare=False)

    def to_json_dict(self) -> dict[str, object]:
        """The canonical wire form (``key``/``ts``/``values``) that :func:`decode_json` reads back."""
        out: dict[str, object] = {"kind": self.kind, "key": self.key, "ts": self.ts_ms,
                                  "values": dict(self.values)}
        if self.id is not None:
            out["id"] = self.id
        return out
