"""One pipeline step: input records of one shard -> predictions, dead letters, metric deltas.

The service, the file backtest, the integration tests' reference run and the end-to-end
bench all turn records into predictions through :func:`apply` (or, when a file reader has
already decoded the events, :func:`apply_events`)::

    records --RecordDecoder (every record-level rule)--> events --ShardEngine.process-->
        Applied(predictions, dead_letters, dropped, next_offset, deltas, gauges)

Nothing here does I/O: the caller sends ``Applied.predictions`` (pre-serialised bytes) and
``Applied.dead_letters`` wherever its sink is, and adds ``Applied.deltas`` to its metrics.

Examples
--------
>>> from streamseq.config import EngineConfig, LearnerConfig
>>> from streamseq.events.decode import EventDecoder
>>> from streamseq.shards import NumericShard
>>> shard = NumericShard(EngineConfig(learner=LearnerConfig(k1=1, k2=2, batch_windows=1)))
>>> decoder = RecordDecoder(EventDecoder(), max_future_ms=86_400_000)
>>> recs = [InputRecord("sensors", 0, i, 60_000 * i,
...                     b'{"key": "a", "ts": %d, "values": {"x": %d}}' % (60_000 * i, i % 3))
...         for i in range(5)] + [InputRecord("sensors", 0, 5, 1, b"nope")]
>>> out = apply(recs, decoder, shard)
>>> len(out.predictions), [d.error.reason for d in out.dead_letters], out.next_offset
(5, ['not_json'], 6)
>>> out.deltas.consumed, dict(out.deltas.rejected), out.deltas.predictions
(6, {'not_json': 1}, 5)
"""

from __future__ import annotations

import operator
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import repeat
from typing import Any, NamedTuple, Protocol

from streamseq.events.errors import EventError
from streamseq.events.schema import EventColumns

__all__ = [
    "Applied",
    "DeadLetter",
    "GaugeValue",
    "InputRecord",
    "MetricDeltas",
    "PayloadDecoder",
    "Prediction",
    "Record",
    "RecordDecoder",
    "ShardEngine",
    "ShardOutput",
    "apply",
    "apply_events",
    "dead_letter_headers",
]


# ---------------------------------------------------------------------------- records
_VALUE = operator.attrgetter("value")
_TIMESTAMP = operator.attrgetter("timestamp")
_BLOCK = 64  # records decoded at once when a whole poll cannot be


class Record(Protocol):
    """What the pipeline reads of an input record (a kafka-python ``ConsumerRecord`` is
    one; so is :class:`InputRecord`). ``timestamp`` is the record's own time (epoch ms;
    ``None`` or <= 0 when unknown)."""

    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def timestamp(self) -> int | None: ...
    @property
    def value(self) -> bytes | None: ...
    @property
    def key(self) -> bytes | None: ...


class InputRecord(NamedTuple):
    """A record built by hand (tests, benches, the backtest's file positions)."""

    topic: str
    partition: int
    offset: int
    timestamp: int | None = None
    value: bytes | None = None
    key: bytes | None = None


class PayloadDecoder(Protocol):
    """Bytes of one message -> an event, or :class:`EventError` (EventDecoder,
    TextDecoder); ``decode_many``: a poll's messages -> its events at once (a sequence),
    or ``None`` to have each decoded by ``decode`` (never another outcome than that)."""

    def decode(self, payload: bytes | str) -> Any: ...

    def decode_many(self, payloads: Sequence[bytes]) -> Sequence[Any] | None: ...


@dataclass(frozen=True)
class RecordDecoder:
    """Every rule a record must pass before it reaches a shard, in one place.

    The payload rules (size, UTF-8, JSON object, key, time, values) are the payload
    decoder's; the record rules are here: a tombstone (no value) is ``not_json``, and an
    event time more than ``max_future_ms`` after the record's own timestamp is
    ``bad_time`` (a clock far ahead would make every later event of its key late).

    Examples
    --------
    >>> from streamseq.events.decode import EventDecoder
    >>> d = RecordDecoder(EventDecoder(), max_future_ms=1000)
    >>> d.decode(InputRecord("t", 0, 0, 5000, b'{"key": "a", "ts": 5999, "values": {"x": 1}}')).ts_ms
    5999
    >>> d.decode(InputRecord("t", 0, 1, 5000, b'{"key": "a", "ts": 6001, "values": {"x": 1}}'))
    Traceback (most recent call last):
    ...
    streamseq.events.errors.EventError: bad_time: event time 6001 is more than 1000 ms after its record's timestamp
    """

    payload: PayloadDecoder
    max_future_ms: int | None = None

    def decode_many(self, records: Sequence[Record]
                    ) -> tuple[Sequence[Any], Sequence[Record], list[DeadLetter]]:
        """The events of ``records``, the records they came from and the records refused
        (:meth:`decode`'s outcome for each): at once when the payload decoder decodes
        them all at once and every event is in time; else the same, block by block of
        ``block`` records (a poll with a few bad records keeps most of it at once), and a
        block that cannot be, record by record."""
        events = self._at_once(records)
        if events is not None:
            return events, records, []
        if len(records) <= _BLOCK:
            return self._one_by_one(records)
        parts = [self._at_once(records[lo:lo + _BLOCK]) for lo in range(0, len(records), _BLOCK)]
        decoded: list[Sequence[Any]] = []
        kept: list[Record] = []
        refused: list[DeadLetter] = []
        for k, part in enumerate(parts):
            block = records[k * _BLOCK:(k + 1) * _BLOCK]
            if part is None:
                part, block, bad = self._one_by_one(block)
                refused += bad
            decoded.append(part)
            kept += block
        if not any(isinstance(part, EventColumns) for part in decoded):
            return [e for part in decoded for e in part], kept, refused
        return EventColumns.concat(list(map(EventColumns.of, decoded))), kept, refused

    def _at_once(self, records: Sequence[Record]) -> Sequence[Any] | None:
        events = self.payload.decode_many(list(map(_VALUE, records))) if records else None
        return events if events is not None and self._in_time(events, records) else None

    def _one_by_one(self, records: Sequence[Record]
                    ) -> tuple[list[Any], list[Record], list[DeadLetter]]:
        decoded: list[Any] = []
        kept: list[Record] = []
        refused: list[DeadLetter] = []
        for r in records:
            try:
                decoded.append(self.decode(r))
            except EventError as err:
                refused.append(DeadLetter(r, err))
            else:
                kept.append(r)
        return decoded, kept, refused

    def _in_time(self, events: Sequence[Any], records: Sequence[Record]) -> bool:
        """No event's time is more than ``max_future_ms`` after its record's timestamp
        (``False`` also when a timestamp is unknown: :meth:`decode` then judges each)."""
        bound = self.max_future_ms
        if bound is None:
            return True
        stamps = list(map(_TIMESTAMP, records))
        return set(map(type, stamps)) == {int} and not any(
            map(operator.gt, EventColumns.of(events).ts_ms,
                map(operator.add, stamps, repeat(bound))))

    def decode(self, record: Record) -> Any:
        value = record.value
        if value is None:
            raise EventError("not_json", "record has no value (tombstone)")
        event = self.payload.decode(value)
        ts = record.timestamp
        bound = self.max_future_ms
        if bound is not None and ts is not None and ts > 0 and event.ts_ms > ts + bound:
            raise EventError("bad_time", f"event time {event.ts_ms} is more than {bound} ms "
                                         "after its record's timestamp")
        return event


# ---------------------------------------------------------------------------- outputs
class Prediction(NamedTuple):
    """One output record, serialised once: Kafka key and value bytes, and the timestamp
    of the input record it answers (for latency; ``None`` when unknown)."""

    key: bytes
    value: bytes
    source_timestamp: int | None


class DeadLetter(NamedTuple):
    """An input record refused with its reason."""

    record: Record
    error: EventError


class GaugeValue(NamedTuple):
    """A level (not an increment) a shard reports: metric name, value, labels."""

    name: str
    value: float
    labels: Mapping[str, str] = {}


@dataclass
class MetricDeltas:
    """Increments produced by one call (never totals diffed back into increments).

    Examples
    --------
    >>> a = MetricDeltas(predictions=2, rejected=Counter(not_json=1))
    >>> a.add(MetricDeltas(predictions=3, updates_applied=1, last_loss=0.5))
    >>> a.predictions, dict(a.rejected), a.updates_applied, a.last_loss
    (5, {'not_json': 1}, 1, 0.5)
    """

    consumed: int = 0
    predictions: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    dropped: Counter[str] = field(default_factory=Counter)
    updates_applied: int = 0
    updates_skipped: int = 0
    drift_events: int = 0
    evicted: int = 0
    abs_error_model: float = 0.0
    abs_error_persistence: float = 0.0
    # the experts' and the published mixture's (smoother, seasonal, linear, mixture)
    abs_error_forecasters: defaultdict[str, float] = field(
        default_factory=lambda: defaultdict(float))
    scored: int = 0
    anomalies: int = 0
    interval_scored: int = 0
    interval_covered: int = 0
    interval_width: float = 0.0  # sum of z-scored widths of the intervals scored
    last_loss: float | None = None
    last_grad_norm: float | None = None

    def add(self, other: MetricDeltas) -> None:
        """Add ``other``'s increments; its last loss and gradient norm win when set."""
        self.consumed += other.consumed
        self.predictions += other.predictions
        self.rejected.update(other.rejected)
        self.dropped.update(other.dropped)
        self.updates_applied += other.updates_applied
        self.updates_skipped += other.updates_skipped
        self.drift_events += other.drift_events
        self.evicted += other.evicted
        self.abs_error_model += other.abs_error_model
        self.abs_error_persistence += other.abs_error_persistence
        for name, value in other.abs_error_forecasters.items():
            self.abs_error_forecasters[name] += value
        self.scored += other.scored
        self.anomalies += other.anomalies
        self.interval_scored += other.interval_scored
        self.interval_covered += other.interval_covered
        self.interval_width += other.interval_width
        if other.last_loss is not None:
            self.last_loss = other.last_loss
        if other.last_grad_norm is not None:
            self.last_grad_norm = other.last_grad_norm


@dataclass
class ShardOutput:
    """What :meth:`ShardEngine.process` returns for one call.

    ``rejected`` and ``dropped`` hold positions in the call's events; ``deltas`` the
    engine's own increments (updates, drift, evictions, scored errors, predictions);
    ``gauges`` levels to export (e.g. a text shard's prequential metrics); ``anomalies``
    the records of values flagged as anomalies (for the ``--anomaly-topic``).
    """

    predictions: list[Prediction] = field(default_factory=list)
    anomalies: list[Prediction] = field(default_factory=list)
    rejected: list[tuple[int, EventError]] = field(default_factory=list)
    dropped: list[tuple[int, str]] = field(default_factory=list)
    deltas: MetricDeltas = field(default_factory=MetricDeltas)
    gauges: list[GaugeValue] = field(default_factory=list)


class ShardEngine(Protocol):
    """One shard's model behind one interface: the numeric :class:`~streamseq.engine.Engine`
    and the :class:`~streamseq.text.engine.TextEngine` both fit it through the adapters of
    :mod:`streamseq.shards`.

    ``process(events, sources)`` applies one partition's events in offset order;
    ``sources[i]`` is the record event ``i`` came from (its topic, partition and offset
    name the prediction's id). Results depend on the ordered events only, never on how
    they were cut into calls. ``state_dict`` / ``load_state_dict`` snapshot and restore
    everything (tensors and plain types, ``torch.load(weights_only=True)``-safe).
    """

    kind: str

    def process(self, events: Sequence[Any], sources: Sequence[Record]) -> ShardOutput: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...

    @property
    def model_version(self) -> int: ...

    @property
    def keys_held(self) -> int: ...


@dataclass
class Applied:
    """The outcome of one pipeline step over one shard's records."""

    predictions: list[Prediction]
    dead_letters: list[DeadLetter]
    dropped: list[tuple[Record, str]]
    next_offset: int | None
    deltas: MetricDeltas
    gauges: list[GaugeValue] = field(default_factory=list)
    first_offset: int | None = None
    anomalies: list[Prediction] = field(default_factory=list)


# ---------------------------------------------------------------------------- the step
def apply(records: Sequence[Record], decoder: RecordDecoder, shard: ShardEngine,
          next_offset: int | None = None) -> Applied:
    """Decode and validate ``records`` (one partition's, in offset order), apply the valid
    events to ``shard`` and gather everything the caller must send and count.

    Records before ``next_offset`` (already applied: a poll that raced a seek) are
    skipped and not counted.
    """
    if next_offset is not None and records and records[0].offset < next_offset:
        records = [r for r in records if r.offset >= next_offset]
    events, kept, refused = decoder.decode_many(records)
    out = apply_events(events, kept, shard)
    out.deltas.consumed = len(records)
    if refused:
        for d in refused:
            out.deltas.rejected[d.error.reason] += 1
        out.dead_letters = sorted(refused + out.dead_letters, key=lambda d: d.record.offset)
    if records:
        out.first_offset = records[0].offset
        out.next_offset = records[-1].offset + 1
    return out


def apply_events(events: Sequence[Any], sources: Sequence[Record],
                 shard: ShardEngine) -> Applied:
    """Apply decoded ``events`` (``sources[i]`` is event ``i``'s record) to ``shard``.

    The backtest enters here: its file reader has decoded and validated the rows.
    """
    out = shard.process(events, sources) if events else ShardOutput()
    deltas = out.deltas
    deltas.consumed = len(events)
    dead = [DeadLetter(sources[i], err) for i, err in out.rejected]
    for _, err in out.rejected:
        deltas.rejected[err.reason] += 1
    dropped = [(sources[i], reason) for i, reason in out.dropped]
    for _, reason in out.dropped:
        deltas.dropped[reason] += 1
    deltas.predictions = len(out.predictions)
    nxt = sources[-1].offset + 1 if sources else None
    first = sources[0].offset if sources else None
    return Applied(out.predictions, dead, dropped, nxt, deltas, out.gauges, first,
                   out.anomalies)


def dead_letter_headers(dead: DeadLetter, cap: int) -> list[tuple[str, bytes]]:
    """Headers of a dead-letter record (the contract in docs/CONTRACTS.md); the value is
    the original bytes cut at ``cap``.

    Examples
    --------
    >>> d = DeadLetter(InputRecord("s", 1, 7, 99, b"xyz"), EventError("not_json"))
    >>> dict(dead_letter_headers(d, cap=2))["streamseq.truncated"]
    b'1'
    """
    record, err = dead
    value = record.value or b""
    headers = [
        ("streamseq.reason", err.reason.encode()),
        ("streamseq.detail", err.detail[:500].encode("utf-8", "replace")),
        ("streamseq.source.topic", record.topic.encode()),
        ("streamseq.source.partition", str(record.partition).encode()),
        ("streamseq.source.offset", str(record.offset).encode()),
        ("streamseq.source.timestamp", str(record.timestamp).encode()),
        ("streamseq.original.bytes", str(len(value)).encode()),
    ]
    if len(value) > cap:
        headers.append(("streamseq.truncated", b"1"))
    return headers
