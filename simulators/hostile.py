"""Hostile input: a seeded stream of the messages a broken or malicious producer sends.

:class:`HostileGenerator` mixes ordinary sensor events with every kind of bad input the
service must survive: invalid UTF-8, truncated, deeply nested or huge JSON, JSON that is not
an object, wrong types everywhere, ``NaN``/``Infinity``/``1e999``/10**400/5000-digit
literals, negative, far-future and unparseable times, empty, blank, very long and
unencodable keys, unknown value names, events of the wrong kind, tombstones, oversized
messages, exact and re-encoded duplicates, late and out-of-order events, and valid events
with extreme values (``5e-324``, ``1e12``, numbers as strings; ``1e308`` is finite but
``out_of_range``), and repeated producer ids.

Each message comes with the outcome the service must give it (:data:`PREDICT`,
``dead_letter:<reason>`` with the reason of :mod:`streamseq.events.errors`, or
``drop:duplicate`` / ``drop:late``), computed by replaying the service's documented rules
in stream order: the decoder's checks, then the engine's (kind, value names, readings beyond
``max_abs_value``, all values null), then the ordering policy per key (an event carrying the
``id`` of the key's last applied event that had one is a duplicate; an event older than the
key's newest applied event by more than ``late_tolerance_ms`` is late; one with the same
time and values as the key's last applied event is a duplicate). The rules assume no key is evicted during the stream
(``max_keys`` above the number of keys, no ``idle_ttl``).

The first ``warmup_keys`` messages are ordinary events with every value name, one per key:
a shard takes its value names from the first valid event it sees, so these make sure every
partition (up to ``warmup_keys`` of them, with high probability) starts with the real schema.

Examples
--------
>>> gen = HostileGenerator(seed=1)
>>> msgs = gen.messages(400)
>>> len(msgs), sum(gen.counts.values())
(400, 400)
>>> sorted({outcome_class(m.expected) for m in msgs})
['dead_letter', 'drop', 'predict']
>>> msgs == HostileGenerator(seed=1).messages(400)  # seeded: same messages again
True
"""

from __future__ import annotations

import json
import math
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, NamedTuple

__all__ = ["HostileGenerator", "HostileMessage", "PREDICT", "DUPLICATE", "LATE",
           "dead_letter", "outcome_class", "FAR_FUTURE_MS"]

PREDICT = "predict"
DUPLICATE = "drop:duplicate"
LATE = "drop:late"
FAR_FUTURE_MS = 7_258_031_999_000  # 2199-12-30T23:59:59Z: still inside the decoder's range
_START_MS = 1_704_067_200_000  # 2024-01-01T00:00:00Z


def dead_letter(reason: str) -> str:
    """The expected outcome of a message dead-lettered with ``reason``."""
    return f"dead_letter:{reason}"


def outcome_class(expected: str) -> str:
    """``predict``, ``dead_letter`` or ``drop``."""
    return expected.split(":", 1)[0]


class HostileMessage(NamedTuple):
    """One message: the Kafka key (UTF-8 text), the payload (``None``: a tombstone), the
    outcome the service must give it, and the name of the case that made it."""

    key: str
    payload: bytes | None
    expected: str
    case: str


def _dumps(doc: Any) -> bytes:
    return json.dumps(doc, separators=(",", ":"), allow_nan=True).encode()


def _iso(ts_ms: int) -> str:
    return datetime.fromtimestamp(ts_ms / 1000, tz=timezone.utc).isoformat().replace(
        "+00:00", "Z")


@dataclass
class _KeyState:
    last_ts: int | None = None
    last_vals: tuple[float | None, ...] | None = None  # of the last applied event
    last_id: str | None = None  # id of the last applied event that had one
    payload: bytes | None = None  # payload of the last applied event
    payload_ts: int | None = None  # and its time (below last_ts if it came out of order)


@dataclass
class HostileGenerator:
    """Seeded hostile sensor stream with the expected outcome of every message.

    Parameters
    ----------
    seed
        Same seed, same messages.
    n_keys
        Ordinary keys (``h-000`` ...) that carry most valid events.
    values
        Value names of a valid event (the shard's schema).
    hostile_share
        Share of messages (after the warm-up) that are not ordinary events.
    late_tolerance_ms
        The service's ``late_tolerance_ms`` (outcomes depend on it).
    max_bytes
        The service's ``max_message_bytes``: larger payloads are ``too_large``.
    max_key_len
        The decoder's key length limit.
    max_abs_value
        The engine's ``features.max_abs_value``: larger readings are ``out_of_range``.
    oversize
        Include payloads above ``max_bytes`` (the producer then needs a
        ``max_request_size`` above ``max_bytes``).
    tombstones
        Include records without a value.
    warmup_keys
        Ordinary events (one per key ``w-000`` ...) sent first.
    service_clock
        Outcomes as the Kafka service gives them: an event time more than the service's
        ``max_future_ms`` after its record's timestamp (the send time) is ``bad_time``
        there, while the engine alone applies it.
    step_ms
        Typical spacing of a key's event times.
    """

    seed: int = 0
    n_keys: int = 12
    values: tuple[str, ...] = ("hum", "temp")
    hostile_share: float = 0.5
    late_tolerance_ms: int = 0
    max_bytes: int = 1_000_000
    max_key_len: int = 256
    max_abs_value: float = 1e12
    oversize: bool = True
    tombstones: bool = True
    warmup_keys: int = 64
    service_clock: bool = False
    step_ms: int = 60_000
    counts: Counter[str] = field(default_factory=Counter, init=False)
    cases: Counter[str] = field(default_factory=Counter, init=False)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)
        self._keys: dict[str, _KeyState] = {}
        self._serial = 0
        self._cases = self._case_table()
        self._names = list(self._cases)
        self._weights = [w for w, _ in self._cases.values()]

    # ------------------------------------------------------------------ public
    def messages(self, n: int) -> list[HostileMessage]:
        """The next ``n`` messages (the warm-up first)."""
        out: list[HostileMessage] = []
        while len(out) < n:
            if self._serial < self.warmup_keys:
                msg = self._regular(f"w-{self._serial:03d}", case="warmup")
            elif self._rng.random() >= self.hostile_share:
                msg = self._regular(self._main_key(), case="regular")
            else:
                case = self._rng.choices(self._names, self._weights)[0]
                if case == "oversized" and not self.oversize or (
                        case == "tombstone" and not self.tombstones):
                    continue
                msg = self._cases[case][1]()
                msg = msg._replace(case=case) if msg.case == "" else msg
            self._serial += 1
            self.counts[msg.expected] += 1
            self.cases[msg.case] += 1
            out.append(msg)
        return out

    # ------------------------------------------------------------------ valid events
    def _main_key(self) -> str:
        return f"h-{self._rng.randrange(self.n_keys):03d}"

    def _state(self, key: str) -> _KeyState:
        return self._keys.setdefault(key, _KeyState())

    def _next_ts(self, key: str) -> int:
        st = self._state(key)
        if st.last_ts is None:
            return _START_MS + self._rng.randrange(self.step_ms)
        return st.last_ts + self.step_ms + self._rng.randrange(-self.step_ms // 4,
                                                               self.step_ms // 4)

    def _vals(self) -> dict[str, float | None]:
        return {n: round(self._rng.gauss(20.0, 5.0), 3) for n in self.values}

    def _apply(self, key: str, ts: int, vals: dict[str, Any], payload: bytes,
               kafka_key: str | None = None, case: str = "",
               msg_id: str | None = None) -> HostileMessage:
        """Outcome of a decodable event: the engine's value bound, then the ordering
        policy; updates the key's state when the event is applied."""
        st = self._state(key)
        raw = tuple(None if vals.get(n) is None else float(vals[n]) for n in self.values)
        if any(x is not None and abs(x) > self.max_abs_value for x in raw):
            return HostileMessage(kafka_key or key, payload, dead_letter("out_of_range"), case)
        if msg_id is not None and st.last_id == msg_id:
            return HostileMessage(kafka_key or key, payload, DUPLICATE, case)
        if st.last_ts is not None:
            if ts < st.last_ts - self.late_tolerance_ms:
                return HostileMessage(kafka_key or key, payload, LATE, case)
            if ts == st.last_ts and raw == st.last_vals:
                return HostileMessage(kafka_key or key, payload, DUPLICATE, case)
        st.last_ts = ts if st.last_ts is None else max(st.last_ts, ts)
        st.last_vals = raw
        st.payload = payload
        st.payload_ts = ts
        if msg_id is not None:
            st.last_id = msg_id
        return HostileMessage(kafka_key or key, payload, PREDICT, case)

    def _regular(self, key: str, case: str) -> HostileMessage:
        ts = self._next_ts(key)
        vals = self._vals()
        doc = {"key": key, "ts": ts, "values": vals}
        return self._apply(key, ts, vals, _dumps(doc), case=case)

    def _out_of_order_last(self, key: str) -> bool:
        """Whether the key's last applied event came out of order (older than its newest):
        a repeat of it is not compared with it (only the newest time counts), so it would
        be applied again; such keys only get events with later times here."""
        st = self._state(key)
        return st.payload_ts != st.last_ts

    # ------------------------------------------------------------------ cases
    def _case_table(self) -> dict[str, tuple[float, Callable[[], HostileMessage]]]:
        r = self._rng

        def bad(payload: bytes | None, reason: str, key: str = "") -> Callable[[], HostileMessage]:
            return lambda: HostileMessage(key or f"bad-{r.randrange(8)}", payload,
                                          dead_letter(reason), "")

        def doc(**changes: Any) -> bytes:
            d: dict[str, Any] = {"key": self._main_key(), "ts": _START_MS, "values": self._vals()}
            d.update(changes)
            return _dumps({k: v for k, v in d.items() if v is not _DROP})

        deep = 100_000
        cases: dict[str, tuple[float, Callable[[], HostileMessage]]] = {
            # ---- bytes and JSON
            "not_utf8_garbage": (2, lambda: HostileMessage(
                "bad", b"\xff\xfe" + r.randbytes(r.randrange(0, 64)), dead_letter("not_utf8"),
                "")),
            "not_utf8_in_string": (1, bad(doc()[:-3] + b"\xc3\x28" + doc()[-3:], "not_utf8")),
            "truncated_json": (2, lambda: HostileMessage(
                "bad", (p := doc())[: r.randrange(1, len(p) - 1)], dead_letter("not_json"), "")),
            "empty_payload": (1, bad(b"", "not_json")),
            "utf8_bom": (1, bad(b"\xef\xbb\xbf" + doc(), "not_json")),
            "deeply_nested": (1, bad(b'{"key":"a","ts":1,"values":' + b"[" * deep
                                     + b"]" * deep + b"}", "not_json")),
            "nested_value": (1, bad(doc(values={"temp": json.loads("[" * 200 + "]" * 200)}),
                                    "non_numeric")),
            "json_array": (1, bad(b"[1,2,3]", "not_object")),
            "json_number": (1, bad(b"42", "not_object")),
            "json_string": (1, bad(b'"hello"', "not_object")),
            "json_null": (1, bad(b"null", "not_object")),
            "tombstone": (1, bad(None, "not_json")),
            "oversized": (1, lambda: HostileMessage(
                "bad-big", doc(pad="x" * (self.max_bytes + 1000)), dead_letter("too_large"),
                "")),
            # ---- keys
            "missing_key": (1, bad(doc(key=_DROP), "missing_key")),
            "empty_key": (1, bad(doc(key=""), "bad_key", key="")),
            "blank_key": (1, bad(doc(key="   "), "bad_key")),
            "long_key": (1, lambda: HostileMessage(
                "k" * (self.max_key_len + 1), doc(key="k" * (self.max_key_len + 1)),
                dead_letter("bad_key"), "")),
            "huge_key": (1, lambda: HostileMessage(
                "k" * 100_000, doc(key="k" * 100_000), dead_letter("bad_key"), "")),
            "key_list": (1, bad(doc(key=["a"]), "bad_key")),
            "key_float": (1, bad(doc(key=1.5), "bad_key")),
            "key_bool": (1, bad(doc(key=True), "bad_key")),
            "key_object": (1, bad(doc(key={"id": 1}), "bad_key")),
            "key_lone_surrogate": (1, bad(doc(key="\ud800x"), "bad_key", key="surrogate")),
            "key_control_char": (2, self._control_key),
            # ---- times
            "missing_time": (1, bad(doc(ts=_DROP), "missing_time")),
            "null_time": (1, bad(doc(ts=None), "missing_time")),
            "negative_time": (1, bad(doc(ts=-r.randrange(1, 10**12)), "bad_time")),
            "time_after_2200": (1, bad(doc(ts=10**13 + r.randrange(10**12)), "bad_time")),
            "time_1e308": (1, bad(doc(ts=1e308), "bad_time")),
            "time_nan": (1, bad(doc(ts=math.nan), "bad_time")),
            "time_bool": (1, bad(doc(ts=True), "bad_time")),
            "time_list": (1, bad(doc(ts=[1]), "bad_time")),
            "time_words": (1, bad(doc(ts="yesterday"), "bad_time")),
            "time_iso_9999": (1, bad(doc(ts="9999-12-31T00:00:00Z"), "bad_time")),
            "time_unicode_digits": (1, bad(doc(ts="\u0661\u0662\u0663"), "bad_time")),
            "time_huge_int": (1, bad(doc(ts=10**40), "bad_time")),
            # ---- values
            "value_nan": (2, bad(doc(values={"temp": math.nan, "hum": 1.0}), "non_finite")),
            "value_inf": (1, bad(doc(values={"temp": math.inf, "hum": 1.0}), "non_finite")),
            "value_minus_inf": (1, bad(doc(values={"temp": -math.inf}), "non_finite")),
            "value_1e999": (1, bad(b'{"key":"h-000","ts":1,"values":{"temp":1e999}}',
                                   "non_finite")),
            "value_big_int": (1, bad(doc(values={"temp": 10**400}), "non_finite")),
            "value_5000_digits": (1, bad(b'{"key":"h-000","ts":1,"values":{"temp":'
                                         + b"9" * 5000 + b"}}", "not_json")),
            "value_nan_string": (1, bad(doc(values={"temp": "NaN"}), "non_finite")),
            "value_word": (1, bad(doc(values={"temp": "warm", "hum": 1.0}), "non_numeric")),
            "value_bool": (1, bad(doc(values={"temp": True}), "non_numeric")),
            "value_object": (1, bad(doc(values={"temp": {"v": 1}}), "non_numeric")),
            "values_list": (1, bad(doc(values=[1.0, 2.0]), "non_numeric")),
            "values_string": (1, bad(doc(values="21.5"), "non_numeric")),
            "values_all_null": (1, bad(doc(values={"temp": None, "hum": None}),
                                       "missing_value")),
            "values_empty": (1, bad(doc(values={}), "no_values")),
            "no_values_at_all": (1, bad(doc(values=_DROP), "no_values")),
            "kind_bogus": (1, bad(doc(kind="bogus"), "bad_kind")),
            "kind_list": (1, bad(doc(kind=["sensor"]), "bad_kind")),
            # ---- rejected by the engine (after decoding)
            "unknown_value_name": (2, self._unknown_fields),
            "many_value_names": (1, self._many_names),
            "kind_price_on_sensor_topic": (1, self._wrong_kind),
            # ---- valid but extreme: forecast
            "extreme_value": (3, self._extreme),
            "partial_null": (2, self._partial_null),
            "numbers_as_strings": (1, self._strings),
            "huge_valid_json": (1, self._huge_valid),
            "odd_valid_key": (2, self._odd_key),
            "int_key": (1, self._int_key),
            "iso_and_float_times": (1, self._time_forms),
            "epoch_zero_new_key": (1, self._epoch_zero),
            "far_future": (1, self._far_future),
            "same_time_new_values": (2, self._same_time_new_values),
            "with_id": (2, self._with_id),
            "repeated_id": (2, self._repeated_id),
            # ---- ordering policy
            "exact_duplicate": (4, self._exact_duplicate),
            "reencoded_duplicate": (2, self._reencoded_duplicate),
            "late": (3, self._late),
            "out_of_order_in_tolerance": (1 if self.late_tolerance_ms else 0,
                                          self._within_tolerance),
        }
        return {k: v for k, v in cases.items() if v[0] > 0}

    def _unknown_fields(self) -> HostileMessage:
        key = self._main_key()
        vals = {**self._vals(), "pressure": 1013.0}
        return HostileMessage(key, _dumps({"key": key, "ts": self._next_ts(key),
                                           "values": vals}),
                              dead_letter("unknown_fields"), "")

    def _many_names(self) -> HostileMessage:
        key = self._main_key()
        vals = {f"v{i}": float(i) for i in range(5000)}
        return HostileMessage(key, _dumps({"key": key, "ts": self._next_ts(key),
                                           "values": vals}),
                              dead_letter("unknown_fields"), "")

    def _wrong_kind(self) -> HostileMessage:
        key = self._main_key()
        return HostileMessage(key, _dumps({"kind": "price", "key": key,
                                           "ts": self._next_ts(key), "values": self._vals()}),
                              dead_letter("bad_kind"), "")

    def _extreme(self) -> HostileMessage:
        key = f"x-{self._rng.randrange(4)}"
        ts = self._next_ts(key)
        pick = self._rng.choice([1e308, -1e308, 5e-324, -5e-324, 0.0, -0.0, 1e-300, 1e15,
                                 -1e15, 1.7976931348623157e308, 123456789012345.0])
        vals = {n: pick if i == 0 else round(self._rng.gauss(0, 1), 3)
                for i, n in enumerate(self.values)}
        return self._apply(key, ts, vals, _dumps({"key": key, "ts": ts, "values": vals}))

    def _partial_null(self) -> HostileMessage:
        key = self._main_key()
        if len(self.values) < 2:
            return self._regular(key, "partial_null")
        ts = self._next_ts(key)
        vals = self._vals()
        gone = self._rng.choice(self.values)
        if self._rng.random() < 0.5:
            vals[gone] = None
            sent: dict[str, Any] = vals
        else:
            sent = {n: v for n, v in vals.items() if n != gone}  # absent: missing as well
            vals[gone] = None
        return self._apply(key, ts, vals, _dumps({"key": key, "ts": ts, "values": sent}))

    def _strings(self) -> HostileMessage:
        key = self._main_key()
        ts = self._next_ts(key)
        vals = self._vals()
        sent = {n: f" {v!r} " for n, v in vals.items()}
        return self._apply(key, ts, vals, _dumps({"key": key, "ts": str(ts), "values": sent}))

    def _huge_valid(self) -> HostileMessage:
        key = self._main_key()
        ts = self._next_ts(key)
        vals = self._vals()
        pad = "p" * min(200_000, self.max_bytes // 2)
        doc = {"key": key, "ts": ts, "values": vals, "note": pad, "meta": {"a": [1] * 1000}}
        return self._apply(key, ts, vals, _dumps(doc))

    def _odd_key(self) -> HostileMessage:
        key = self._rng.choice(["\u6e29\u5ea6-\u2603", "zero\u200dwidth joiner",
                                "k" * self.max_key_len, "\U0001f525", "' OR 1=1 --",
                                "../../etc/passwd", "<script>"])
        ts = self._next_ts(key)
        vals = self._vals()
        return self._apply(key, ts, vals, _dumps({"key": key, "ts": ts, "values": vals}))

    def _control_key(self) -> HostileMessage:
        """A key with a control character (NUL, newline, bidirectional override ...): it
        could forge a log line or reorder what a terminal shows, so it is ``bad_key``."""
        key = self._rng.choice(["nul\u0000key", "tab\tand\nnewline", "bidi\u202eoverride",
                                "line\u2028separator", "del\u007f", "c1\u0085"])
        payload = _dumps({"key": key, "ts": _START_MS, "values": self._vals()})
        return HostileMessage(key, payload, dead_letter("bad_key"), "")

    def _int_key(self) -> HostileMessage:
        n = self._rng.randrange(3)
        key = str(n)
        ts = self._next_ts(key)
        vals = self._vals()
        return self._apply(key, ts, vals, _dumps({"key": n, "ts": ts, "values": vals}))

    def _time_forms(self) -> HostileMessage:
        key = self._main_key()
        ts = self._next_ts(key)
        vals = self._vals()
        form = self._rng.choice([_iso(ts), float(ts), str(ts), _iso(ts).replace("Z", "+00:00")])
        field_name = self._rng.choice(["ts", "timestamp", "time", "event_time"])
        return self._apply(key, ts, vals, _dumps({"key": key, field_name: form, "values": vals}))

    def _epoch_zero(self) -> HostileMessage:
        key = f"z-{self._serial}"
        vals = self._vals()
        return self._apply(key, 0, vals, _dumps({"key": key, "ts": 0, "values": vals}))

    def _far_future(self) -> HostileMessage:
        """A valid time in 2199 on a key (``f-0``, ``f-1``) that has normal times before
        and after it: the key's later, normal events are all late (a documented hazard)."""
        key = f"f-{self._rng.randrange(2)}"
        st = self._state(key)
        if st.last_ts is None:
            return self._regular(key, "far_future")
        ts = FAR_FUTURE_MS if st.last_ts < FAR_FUTURE_MS else _START_MS + self._serial * 1000
        vals = self._vals()
        payload = _dumps({"key": key, "ts": ts, "values": vals})
        if self.service_clock and ts == FAR_FUTURE_MS:
            return HostileMessage(key, payload, dead_letter("bad_time"), "far_future")
        return self._apply(key, ts, vals, payload)

    def _same_time_new_values(self) -> HostileMessage:
        key = self._main_key()
        st = self._state(key)
        if st.last_ts is None or self._out_of_order_last(key):
            return self._regular(key, "same_time_new_values")
        vals = self._vals()
        return self._apply(key, st.last_ts, vals,
                           _dumps({"key": key, "ts": st.last_ts, "values": vals}))

    def _with_id(self) -> HostileMessage:
        key = f"i-{self._rng.randrange(3)}"
        ts = self._next_ts(key)
        vals = self._vals()
        msg_id = f"m-{self._serial}"
        return self._apply(key, ts, vals, _dumps({"key": key, "ts": ts, "values": vals,
                                                  "id": msg_id}), msg_id=msg_id)

    def _repeated_id(self) -> HostileMessage:
        """A new time and new values under the id of the key's last identified event
        (a producer retry that re-stamped the reading): a duplicate by id."""
        key = f"i-{self._rng.randrange(3)}"
        st = self._state(key)
        if st.last_id is None:
            return self._with_id()._replace(case="repeated_id")
        ts = self._next_ts(key)
        vals = self._vals()
        return self._apply(key, ts, vals, _dumps({"key": key, "ts": ts, "values": vals,
                                                  "id": st.last_id}), msg_id=st.last_id)

    def _exact_duplicate(self) -> HostileMessage:
        key = self._main_key()
        st = self._state(key)
        if st.payload is None or self._out_of_order_last(key):
            return self._regular(key, "exact_duplicate")
        assert st.last_ts is not None and st.last_vals is not None
        vals = dict(zip(self.values, st.last_vals, strict=True))
        return self._apply(key, st.last_ts, vals, st.payload)

    def _reencoded_duplicate(self) -> HostileMessage:
        """Same key, time and values, other bytes: duplicates are found by content."""
        key = self._main_key()
        st = self._state(key)
        if st.payload is None or self._out_of_order_last(key):
            return self._regular(key, "reencoded_duplicate")
        assert st.last_ts is not None and st.last_vals is not None
        vals = dict(zip(self.values, st.last_vals, strict=True))
        sent = {n: repr(v) for n, v in reversed(list(vals.items()))}
        doc = {"values": sent, "time": _iso(st.last_ts), "sensor_id": key, "kind": "sensor"}
        return self._apply(key, st.last_ts, vals, _dumps(doc))

    def _late(self) -> HostileMessage:
        key = self._main_key()
        st = self._state(key)
        if st.last_ts is None:
            return self._regular(key, "late")
        ts = st.last_ts - self.late_tolerance_ms - 1 - self._rng.randrange(10 * self.step_ms)
        if ts < 0:
            return self._regular(key, "late")
        vals = self._vals()
        return self._apply(key, ts, vals, _dumps({"key": key, "ts": ts, "values": vals}))

    def _within_tolerance(self) -> HostileMessage:
        key = self._main_key()
        st = self._state(key)
        if st.last_ts is None or self._out_of_order_last(key):
            return self._regular(key, "out_of_order_in_tolerance")
        ts = st.last_ts - self._rng.randrange(1, self.late_tolerance_ms + 1)
        vals = self._vals()
        return self._apply(key, ts, vals, _dumps({"key": key, "ts": ts, "values": vals}))


_DROP: Any = object()
