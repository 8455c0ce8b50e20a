"""A poll's messages decoded at once (``EventDecoder.decode_many``, ``RecordDecoder.decode_many``)
against the general rule applied message by message (``EventDecoder.decode``).

The batch path may decline (``None``: the caller decodes message by message); when it
answers, every event must be the one :meth:`EventDecoder.decode` gives, and no message that
:meth:`decode` refuses may be among them. Checked on plain polls (where it must answer), on
hostile values in one field of an otherwise plain poll, on messages crafted to run into
each other when joined, on random bytes, and through the whole pipeline step against a
decoder without the batch path.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamseq.config import EngineConfig, LearnerConfig, ModelConfig
from streamseq.events import Event, EventDecoder, EventError
from streamseq.events.decode import MAX_TS_MS
from streamseq.events.schema import EventColumns
from streamseq.pipeline import InputRecord, RecordDecoder, apply
from streamseq.shards import NumericShard

FUZZ = settings(deadline=None, database=None, derandomize=True, max_examples=300,
                suppress_health_check=list(HealthCheck))
T0 = 1_704_067_200_000
DECODER = EventDecoder()


def _plain(key: str = "s-1", ts: int = T0, x: float = 1.5) -> bytes:
    return _doc(json.dumps(key), str(ts), repr(x), '"sensor"', None)


def _one_by_one(decoder: EventDecoder, payloads: list[Any]) -> list[Event | str]:
    out: list[Event | str] = []
    for p in payloads:
        try:
            out.append(decoder.decode(p))
        except EventError as err:
            out.append(f"{err.reason}: {err.detail}")
    return out


def _check(payloads: list[Any], decoder: EventDecoder = DECODER) -> EventColumns | None:
    """``decode_many`` declines or gives exactly the events ``decode`` gives, one by one."""
    try:
        want = _one_by_one(decoder, payloads)
    except (TypeError, AttributeError):  # not bytes at all: decode itself cannot take it
        want = None
    got = decoder.decode_many(payloads)
    if got is not None:
        assert want is not None
        assert list(got) == want, "the batch path answered where decode refuses or differs"
        assert all(type(e) is Event for e in got)
    return got


def test_plain_polls_are_decoded_at_once() -> None:
    polls = [
        [_plain(f"s-{i % 7}", T0 + i, i / 3) for i in range(50)],
        [b'{"kind":"sensor","sensor_id":"s-0153","ts":1704067202119,"values":{"temp":54.647}}',
         b'{"kind":"sensor","sensor_id":"s-0154","ts":1704067202120,"values":{"temp":-1e-05}}'],
        [b'{"key": "a", "ts": 5, "values": {"x": 1.5, "y": -0.0}, "id": "m1"}',
         b'{"key": "b", "ts": 6, "values": {"x": 2e300, "y": 3.0}, "id": null}'],
        [b'{"ts":1,"symbol":"SPY","values":{"p":1.0},"kind":"price","extra":[1]}'.replace(
            b',"extra":[1]', b"")],
        [_plain("k", MAX_TS_MS), _plain("k", 0)],
        # what decode's rules take event by event: ISO times, integer and null readings,
        # keys beyond printable ASCII
        [_doc('"\\u00e9t\\u00e9"', '"2024-01-01T00:00:00Z"', "21", None, None),
         _doc('"s 1"', '"1704067200000"', "null", None, None).replace(b'}}', b',"y":1.0}}'),
         _doc('"s-2"', "1.7e12", "-3", None, None)],
    ]
    for poll in polls:
        got = _check(poll)
        assert got is not None and len(got) == len(poll)


def test_price_kind_and_key_priority() -> None:
    # "key" wins over "symbol" wherever it stands; kind "price" with a values object
    got = _check([b'{"symbol":"X","key":"K","ts":1,"kind":"price","values":{"price":2.5}}'])
    assert got is not None and got[0].key == "K" and got[0].kind == "price"


HOSTILE_VALUES = [
    "NaN", "Infinity", "-Infinity", "1e400", "-1e400", "1", "0", "true", "null", '"1.5"',
    '"nan"', "{}", '{"a":1.0}', "1" + "0" * 5000, "-0.0", "1e-320", "2.5", "1.7976931348623157e308",
]
HOSTILE_KEYS = ['"s-1"', '""', '"  "', '"a\\u0000b"', '"\\u202e"', '"\\u00e9"', "17", "true",
                "null", "1.5", '"' + "k" * 300 + '"', '"a\\"b"', '"a}b"', '"a{b"', '"a,\\nb"',
                '"tab\\t"', "{}"]
HOSTILE_TIMES = ["1704067200000", "-1", str(MAX_TS_MS + 1), "1.5e12", "true", "null",
                 '"2024-01-01T00:00:00Z"', '"1704067200000"', "1" + "0" * 30, "NaN", "0"]
HOSTILE_KINDS = [None, '"sensor"', '"price"', '"text"', "null", "1", "{}", '"Sensor"']
HOSTILE_IDS = [None, '"m-1"', "null", "7", "true", "{}", '"\\ud800"']


def _doc(key: str, ts: str, value: str, kind: str | None, msg_id: str | None,
         values: bool = True) -> bytes:
    parts = [] if kind is None else [f'"kind":{kind}']
    parts += [f'"key":{key}', f'"ts":{ts}']
    parts.append(f'"values":{{"x":{value}}}' if values else f'"x":{value}')
    if msg_id is not None:
        parts.append(f'"id":{msg_id}')
    return ("{" + ",".join(parts) + "}").encode()


@FUZZ
@given(st.lists(st.tuples(st.sampled_from(HOSTILE_KEYS), st.sampled_from(HOSTILE_TIMES),
                          st.sampled_from(HOSTILE_VALUES)), min_size=1, max_size=8),
       st.sampled_from(HOSTILE_KINDS), st.sampled_from(HOSTILE_IDS), st.booleans())
def test_hostile_fields_in_one_layout(rows: list[tuple[str, str, str]], kind: str | None,
                                      msg_id: str | None, values: bool) -> None:
    _check([_doc(k, t, v, kind, msg_id, values) for k, t, v in rows])


@FUZZ
@given(st.integers(0, 5), st.sampled_from(["key", "ts", "value", "kind", "id"]),
       st.data())
def test_one_hostile_field_among_plain_events(row: int, field: str, data: Any) -> None:
    """Six plain events of one layout, one field of one of them hostile."""
    pool = {"key": HOSTILE_KEYS, "ts": HOSTILE_TIMES, "value": HOSTILE_VALUES,
            "kind": HOSTILE_KINDS[1:], "id": HOSTILE_IDS[1:]}[field]
    bad = data.draw(st.sampled_from(pool))
    fields = [{"key": f'"s-{i}"', "ts": str(T0 + i), "value": "2.5", "kind": '"sensor"',
               "id": f'"m-{i}"'} for i in range(6)]
    fields[row][field] = bad
    poll = [_doc(f["key"], f["ts"], f["value"], f["kind"], f["id"]) for f in fields]
    _check(poll)


_EV = b'"key":"k","ts":1,"values":{"x":1.0}'
CRAFTED = [
    # messages that are not events alone but would join into events of one layout: one
    # ending inside a string, the next closing it, a third holding two objects
    [b"{" + _EV + b',"a":"}', b'{"}', b"{" + _EV + b',"a":"z"},{' + _EV + b',"a":"z"}'],
    # one ending inside an object, the next continuing it
    [b"{" + _EV + b',"a":{"b":{}', b'{}}}', b"{" + _EV + b',"a":{}},{' + _EV + b',"a":{}}'],
    # one ending inside an array, the next continuing it
    [b"{" + _EV + b',"a":[{}', b"{}]}", b"{" + _EV + b',"a":[]},{' + _EV + b',"a":[]}'],
    [b"{" + _EV + b',"a":[1', b"{}]}", b"{" + _EV + b',"a":[]},{' + _EV + b',"a":[]}'],
    # one holding two events
    [b"{" + _EV + b"}", b"{" + _EV + b"},{" + _EV + b"}"],
    [_plain(), b'{"key":"k","ts":1,"values":{"x":1.0}}\n,{"key":"k","ts":2,"values":{"x":1.0}}'],
    [_plain(), b" " + _plain(), _plain() + b" ", b"\xef\xbb\xbf" + _plain()],
    [_plain(), _plain()[:-1] + b"\xff}", _plain()],
    [_plain(), b"{" * 5000 + b"}" * 5000],
    [_plain(), b'{"key":"k","key":"j","ts":1,"ts":2,"values":{"x":1.0,"x":NaN}}'],
    [_plain(), b'{"key":"k","ts":1,"values":{"x":1.0,"x":2.0}}'],
    # a later object with a field that takes precedence (key, time) or one field fewer
    [b'{"sensor_id":"a","ts":1,"values":{"x":1.0}}',
     b'{"sensor_id":"a","ts":2,"values":{"x":1.0},"key":"b"}'],
    [b'{"key":"a","time":1,"values":{"x":1.0}}', b'{"key":"a","time":1,"values":{"x":1.0},"ts":3}'],
    [b'{"key":"a","ts":1,"values":{"x":1.0},"id":"m"}', b'{"key":"a","ts":1,"values":{"x":1.0}}'],
    [_plain(), b"{}"],
    [_plain(), b'{"key":"k","ts":1,"values":{}}'],
    [_plain(), b'{"key":"k","ts":1,"values":null,"x":2.0}'],
    [_plain(), b'{"key":"k","time":1,"values":{"x":1.0}}'],
    [_plain(), b'{"ts":1,"key":"k","values":{"x":1.0}}'],
]


@pytest.mark.parametrize("poll", CRAFTED, ids=range(len(CRAFTED)))
def test_crafted_messages_keep_their_own_outcome(poll: list[bytes]) -> None:
    _check(poll)
    _check(poll[::-1])


def test_what_is_not_bytes_is_left_to_decode() -> None:
    assert DECODER.decode_many([_plain(), bytearray(_plain())]) is None
    assert DECODER.decode_many([_plain(), None]) is None  # type: ignore[list-item]
    small = EventDecoder(max_bytes=len(_plain()) - 1)
    assert small.decode_many([_plain()]) is None
    assert EventDecoder(value_fields=("temp",)).decode_many([_plain()]) is None


@FUZZ
@given(st.lists(st.binary(max_size=40).map(lambda b: b"{" + b + b"}") | st.binary(max_size=40),
                min_size=1, max_size=6))
def test_random_bytes(poll: list[bytes]) -> None:
    _check(poll)


@FUZZ
@given(st.lists(st.tuples(st.integers(0, 3), st.integers(-3, 3)), min_size=1, max_size=12),
       st.sampled_from([None, 0, -5, T0]))
def test_record_rules_at_once_equal_record_by_record(rows: list[tuple[int, int]],
                                                      stamp: int | None) -> None:
    """The record rules (tombstones, events too far after their record's timestamp)."""
    decoder = RecordDecoder(EventDecoder(), max_future_ms=60_000)
    records = [InputRecord("t", 0, i, None if stamp is None else stamp + 1_000 * i,
                           None if k == 3 else _plain(f"s-{k}", T0 + 50_000 * d))
               for i, (k, d) in enumerate(rows)]
    events, kept, refused = decoder.decode_many(records)
    want_events, want_kept, want_refused = [], [], []
    for r in records:
        try:
            want_events.append(decoder.decode(r))
        except EventError as err:
            want_refused.append((r, err.reason, err.detail))
        else:
            want_kept.append(r)
    assert list(events) == want_events and list(kept) == want_kept
    assert [(d.record, d.error.reason, d.error.detail) for d in refused] == want_refused


def _record_by_record(decoder: RecordDecoder, records: list[InputRecord]
                      ) -> tuple[list[Any], list[InputRecord], list[tuple[Any, str, str]]]:
    events, kept, refused = [], [], []
    for r in records:
        try:
            events.append(decoder.decode(r))
        except EventError as err:
            refused.append((r, err.reason, err.detail))
        else:
            kept.append(r)
    return events, kept, refused


@pytest.mark.parametrize("bad", [(), (0,), (3, 64, 65, 200), tuple(range(0, 300, 7))])
def test_a_long_poll_with_bad_records_is_decoded_block_by_block(bad: tuple[int, ...]) -> None:
    """A poll longer than a block with bad records here and there: the blocks without one
    are decoded at once, the others record by record; together decode's outcome."""
    decoder = RecordDecoder(EventDecoder(), max_future_ms=60_000)
    records = [InputRecord("t", 0, i, T0 + 60_000 * i, b"{bad" if i in bad else
                           _plain(f"s-{i % 9}", T0 + 60_000 * i + (10**6 if i == 64 else 0)))
               for i in range(300)]
    events, kept, refused = decoder.decode_many(records)
    want = _record_by_record(decoder, records)
    assert (list(events), list(kept)) == (want[0], want[1])
    assert [(d.record, d.error.reason, d.error.detail) for d in refused] == want[2]
    spoilt = {i // 64 for i in (*bad, 64)}  # record 64: past its timestamp bound
    assert isinstance(events, EventColumns) == (len(spoilt) < 5)  # a block at once


def test_text_polls_are_decoded_record_by_record() -> None:
    from streamseq.text.events import TextDecoder

    decoder = RecordDecoder(TextDecoder())
    records = [InputRecord("t", 0, i, None, b"{bad" if i % 50 == 3 else
                           b'{"kind": "text", "key": "s1", "ts": %d, "text": "hi"}' % i)
               for i in range(200)]
    events, kept, refused = decoder.decode_many(records)
    want = _record_by_record(decoder, records)
    assert (list(events), list(kept)) == (want[0], want[1])
    assert [(d.record, d.error.reason) for d in refused] == [w[:2] for w in want[2]]


class _OneByOne:
    """The payload decoder without its batch path: the oracle of the pipeline step."""

    def __init__(self, decoder: EventDecoder) -> None:
        self.decoder = decoder

    def decode(self, payload: bytes | str) -> Event:
        return self.decoder.decode(payload)

    def decode_many(self, payloads: Any) -> None:
        return None


@pytest.mark.parametrize("chunk", [1, 7, 64, 150])
def test_pipeline_step_equals_the_one_by_one_step(chunk: int) -> None:
    cfg = EngineConfig(model=ModelConfig(hidden=8),
                       learner=LearnerConfig(k1=1, k2=2, batch_windows=2))
    payloads = [_plain(f"s-{i % 5}", T0 + 60_000 * (i // 5), float(i % 7)) for i in range(150)]
    payloads[40] = _doc('"s-1"', str(T0), "NaN", None, None)
    payloads[41] = payloads[39]  # a duplicate
    payloads[90] = _plain("s-2", T0)  # late
    payloads[120] = b"not json"
    records = [InputRecord("sensors", 3, 10 + i, T0 + 10**9, p) for i, p in enumerate(payloads)]
    steps = []
    for decoder in (RecordDecoder(EventDecoder(), 86_400_000),
                    RecordDecoder(_OneByOne(EventDecoder()), 86_400_000)):
        shard = NumericShard(cfg)
        got = [apply(records[lo:lo + chunk], decoder, shard)
               for lo in range(0, len(records), chunk)]
        steps.append(([p for s in got for p in s.predictions],
                      [(d.record.offset, d.error.reason, d.error.detail)
                       for s in got for d in s.dead_letters],
                      [(r.offset, why) for s in got for r, why in s.dropped],
                      [(s.deltas.consumed, dict(s.deltas.rejected), dict(s.deltas.dropped),
                        s.next_offset) for s in got]))
    assert steps[0] == steps[1]
    assert len(steps[0][0]) == 146 and len(steps[0][1]) == 2
