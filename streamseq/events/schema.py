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

from collections.abc import Sequence
from dataclasses import dataclass, field
from operator import attrgetter
from typing import overload

__all__ = ["Event", "EventColumns", "KINDS", "PRICE_FIELDS"]

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


_COLUMNS = attrgetter("kind", "key", "ts_ms", "values", "id")


@dataclass(frozen=True, eq=False)
class EventColumns(Sequence[Event]):
    """Validated events held as columns: what a decoder gives for a whole poll, without an
    :class:`Event` object per event (one is built when an item is asked for).

    ``kinds[i]``, ``keys[i]``, ``ts_ms[i]``, ``values[i]`` and ``ids[i]`` are event ``i``'s
    fields.

    Examples
    --------
    >>> cols = EventColumns.of([Event("sensor", "a", 5, {"x": 1.0}), Event("price", "b", 6,
    ...                                                                   {"p": 2.0}, "m1")])
    >>> cols.keys, cols.ts_ms, cols[1]
    (['a', 'b'], [5, 6], Event(kind='price', key='b', ts_ms=6, values={'p': 2.0}, id='m1', meta={}))
    >>> len(cols[1:]), list(cols) == [cols[0], cols[1]]
    (1, True)
    """

    kinds: list[str]
    keys: list[str]
    ts_ms: list[int]
    values: list[dict[str, float | None]]
    ids: list[str | None]

    @classmethod
    def of(cls, events: Sequence[Event]) -> EventColumns:
        """``events`` as columns (themselves when they are columns already)."""
        if isinstance(events, EventColumns):
            return events
        if not events:
            return cls([], [], [], [], [])
        kinds, keys, ts, values, ids = zip(*map(_COLUMNS, events), strict=True)
        return cls(list(kinds), list(keys), list(ts), list(values), list(ids))

    @classmethod
    def concat(cls, parts: Sequence[EventColumns]) -> EventColumns:
        """The events of ``parts``, one after the other.

        >>> a = EventColumns.of([Event("sensor", "a", 5, {"x": 1.0})])
        >>> EventColumns.concat([a, a[:0], a]).keys
        ['a', 'a']
        """
        out = cls([], [], [], [], [])
        for part in parts:
            out.kinds.extend(part.kinds)
            out.keys.extend(part.keys)
            out.ts_ms.extend(part.ts_ms)
            out.values.extend(part.values)
            out.ids.extend(part.ids)
        return out

    def __len__(self) -> int:
        return len(self.keys)

    @overload
    def __getitem__(self, i: int) -> Event: ...
    @overload
    def __getitem__(self, i: slice) -> EventColumns: ...
    def __getitem__(self, i: int | slice) -> Event | EventColumns:
        if isinstance(i, slice):
            return EventColumns(self.kinds[i], self.keys[i], self.ts_ms[i], self.values[i],
                                self.ids[i])
        return Event(self.kinds[i], self.keys[i], self.ts_ms[i], self.values[i], self.ids[i])
