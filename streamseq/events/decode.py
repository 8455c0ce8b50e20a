"""Decode and validate events from JSON bytes (files are read by :mod:`streamseq.io`).

Every failure raises :class:`~streamseq.events.errors.EventError` with a reason from a closed
set, so callers can dead-letter and count without parsing messages.
"""

from __future__ import annotations

import json
import math
import operator
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone, tzinfo
from functools import lru_cache
from itertools import chain, repeat
from typing import TypeGuard
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from streamseq.events.errors import EventError
from streamseq.events.schema import KINDS, PRICE_FIELDS, Event, EventColumns

__all__ = ["EventDecoder", "decode_json", "load_json_object", "load_json_objects", "parse_time",
           "check_key", "MIN_TS_MS", "MAX_TS_MS"]

KEY_FIELDS = ("key", "sensor_id", "symbol")
TIME_FIELDS = ("ts", "timestamp", "time", "event_time")
META_FIELDS = frozenset(("kind", "id", "values", *KEY_FIELDS, *TIME_FIELDS))
MIN_TS_MS = 0  # 1970-01-01
MAX_TS_MS = 7_258_118_400_000  # 2200-01-01: anything later is a producer bug, not a reading
_KIND_SET = frozenset(KINDS)
_ID_TYPES = frozenset((str, type(None)))
_NA_STRINGS = frozenset(("", "na", "nan", "null", "none", "n/a", "-"))


# Bidirectional formatting characters: they reorder what a terminal or a log viewer shows
# ("Trojan Source"); the other format characters (joiners, soft hyphen) are allowed.
BIDI_CONTROLS = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e"
                          "\u2066\u2067\u2068\u2069")
_CONTROL_CATEGORIES = frozenset(("Cc", "Zl", "Zp"))


def check_key(raw: object, max_len: int = 256) -> str:
    """The key of an event, or ``bad_key``: a string (or integer) that is not blank, at most
    ``max_len`` characters, valid Unicode, and free of control characters (C0/C1 controls
    such as NUL, tab and newline, line/paragraph separators, bidirectional overrides), so
    a key can never forge a log line or reorder what a terminal shows.

    Examples
    --------
    >>> check_key("s-17"), check_key(42), check_key("\\u6e29\\u5ea6 \\U0001f525")
    ('s-17', '42', '\u6e29\u5ea6 \U0001f525')
    >>> check_key("nul\\x00key")
    Traceback (most recent call last):
    ...
    streamseq.events.errors.EventError: bad_key: key holds control character U+0000
    >>> check_key("evil\\u202egnp.exe")
    Traceback (most recent call last):
    ...
    streamseq.events.errors.EventError: bad_key: key holds control character U+202E
    """
    if isinstance(raw, bool) or not isinstance(raw, (str, int)):
        raise EventError("bad_key", f"key has type {type(raw).__name__}")
    key = str(raw)
    if not key or not key.strip():
        raise EventError("bad_key", "key is empty")
    if len(key) > max_len:
        raise EventError("bad_key", f"key is {len(key)} characters > {max_len}")
    if not key.isprintable() or not key.isascii():
        for ch in key:
            cat = unicodedata.category(ch)
            if cat == "Cs":
                raise EventError("bad_key", "key is not valid Unicode (lone surrogate)")
            if cat in _CONTROL_CATEGORIES or ch in BIDI_CONTROLS:
                raise EventError("bad_key", f"key holds control character U+{ord(ch):04X}")
    return key


@lru_cache(maxsize=64)
def _zone(name: str) -> tzinfo:
    if name.upper() == "UTC":
        return timezone.utc
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown time zone {name!r}") from exc


# the scanner json.loads runs after skipping whitespace (typeshed does not declare it)
_SCAN = json.JSONDecoder().scan_once  # type: ignore[attr-defined]


def load_json_object(payload: bytes | str, max_bytes: int) -> dict[str, object]:
    """The JSON object of one message, or an :class:`EventError` (``too_large``,
    ``not_utf8``, ``not_json``, ``not_object``). Shared by every decoder.

    A message that is one JSON object with nothing around it (what producers send) is
    parsed by the scanner :func:`json.loads` calls, without its two whitespace
    searches; anything else, and any message the scanner refuses, goes through
    :func:`json.loads` itself, so the outcome and the error are the same.

    Examples
    --------
    >>> load_json_object(b'{"a": [1, 2.5, null]}', 100)
    {'a': [1, 2.5, None]}
    >>> load_json_object(b' {"a": 1} ', 100), load_json_object('{"a": NaN}', 100)
    ({'a': 1}, {'a': nan})
    >>> load_json_object(b'{"a": 1} x', 100)
    Traceback (most recent call last):
    ...
    streamseq.events.errors.EventError: not_json: invalid JSON: Extra data at 9
    """
    if len(payload) > max_bytes:
        raise EventError("too_large", f"{len(payload)} bytes > limit {max_bytes}")
    if isinstance(payload, (bytes, bytearray, memoryview)):
        try:
            payload = (payload if type(payload) is bytes else bytes(payload)).decode("utf-8")
        except UnicodeDecodeError:
            raise EventError("not_utf8") from None
    if payload[:1] == "{" and payload[-1:] == "}":
        try:
            doc, end = _SCAN(payload, 0)
        except (StopIteration, ValueError, RecursionError):
            pass  # json.loads below raises the error
        else:
            if end == len(payload) and type(doc) is dict:
                return doc
    try:
        doc = json.loads(payload)
    except RecursionError:
        raise EventError("not_json", "JSON nesting too deep") from None
    except json.JSONDecodeError as exc:
        raise EventError("not_json", f"invalid JSON: {exc.msg} at {exc.pos}") from None
    except ValueError as exc:  # e.g. an integer literal over Python's digit limit
        raise EventError("not_json", f"invalid JSON: {str(exc)[:200]}") from None
    if not isinstance(doc, dict):
        raise EventError("not_object", f"JSON document is a {type(doc).__name__}")
    return doc


def load_json_objects(payloads: Sequence[bytes], max_bytes: int
                      ) -> list[dict[str, object]] | None:
    """The JSON objects of many messages in one parse, or ``None`` when that parse cannot
    be trusted to give each message's own object (the caller then applies
    :func:`load_json_object` to each message: its outcome, error and all).

    The messages are parsed as one array when every one is ``bytes`` of at most
    ``max_bytes``, starts with ``{`` and ends with ``}``, none holds a ``[`` or ``]``, and
    all are UTF-8; they are joined by ``,`` and a newline. Element ``i`` is then message
    ``i``'s object: a message can only run into the next one if it ends inside a string
    (the newline, a raw control character, is not allowed there: the parse fails) or inside
    an object (where a ``{`` cannot follow a ``,``: the parse fails), as no array can be
    opened; and a message that holds more than one element makes more elements than
    messages. Each element is what :func:`load_json_object` gives for its message (the
    same scanner over the same text).

    Examples
    --------
    >>> load_json_objects([b'{"a": 1}', b'{"b": {"c": null}}'], 100)
    [{'a': 1}, {'b': {'c': None}}]
    >>> [load_json_objects(p, 100) for p in ([b'{"a": "}', b'{","b": 1}', b'{},{}'],
    ...                                      [b'{"a": [1]}'], [b'{"a": 1}', b'{"b": 1'])]
    [None, None, None]
    """
    if not payloads:
        return []
    if (set(map(type, payloads)) != {bytes} or max(map(len, payloads)) > max_bytes
            or not all(map(bytes.startswith, payloads, repeat(b"{")))
            or not all(map(bytes.endswith, payloads, repeat(b"}")))):
        return None
    joined = b",\n".join(payloads)
    if b"[" in joined or b"]" in joined:
        return None
    try:
        docs = json.loads("[" + joined.decode("utf-8") + "]")
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    if len(docs) != len(payloads) or set(map(type, docs)) != {dict}:
        return None
    return docs


def parse_time(value: object, naive_tz: str | None = "UTC") -> int:
    """Event time to epoch milliseconds.

    Numbers are epoch milliseconds. Strings are epoch milliseconds or ISO 8601; an ISO time
    without a zone is read in ``naive_tz`` (``None`` rejects it).

    Examples
    --------
    >>> parse_time(1700000000000)
    1700000000000
    >>> parse_time("2024-01-01T00:00:00Z")
    1704067200000
    >>> parse_time("2024-01-01 01:00:00+01:00")
    1704067200000
    >>> parse_time("2013-10-07 09:30:00", naive_tz="America/New_York")
    1381152600000
    >>> parse_time("yesterday")
    Traceback (most recent call last):
    ...
    streamseq.events.errors.EventError: bad_time: cannot parse event time 'yesterday'
    """
    if isinstance(value, bool):
        raise EventError("bad_time", f"event time is a boolean: {value!r}")
    if isinstance(value, int):
        ms = value
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise EventError("bad_time", f"event time is not finite: {value!r}")
        ms = int(value)
    elif isinstance(value, str):
        text = value.strip()
        digits = text.lstrip("-")
        if digits.isascii() and digits.isdigit():
            ms = int(text)
        else:
            try:
                dt = datetime.fromisoformat(text)
            except ValueError:
                raise EventError("bad_time", f"cannot parse event time {value!r}") from None
            if dt.tzinfo is None:
                if naive_tz is None:
                    raise EventError("bad_time", f"event time {value!r} has no time zone")
                dt = dt.replace(tzinfo=_zone(naive_tz))
            ms = int(dt.timestamp() * 1000.0 + (0.5 if dt.timestamp() >= 0 else -0.5))
    else:
        raise EventError("bad_time", f"event time has type {type(value).__name__}")
    if not MIN_TS_MS <= ms <= MAX_TS_MS:
        shown = str(ms) if abs(ms) < 10**30 else f"{str(ms)[:12]}... ({len(str(abs(ms)))} digits)"
        raise EventError("bad_time", f"event time {shown} ms is outside 1970..2200")
    return ms


def _number(name: str, raw: object) -> float | None:
    if raw is None:
        return None
    if isinstance(raw, bool):
        raise EventError("non_numeric", f"value {name!r} is a boolean")
    if isinstance(raw, (int, float)):
        try:
            x = float(raw)
        except OverflowError:
            raise EventError("non_finite", f"value {name!r} overflows a float") from None
    elif isinstance(raw, str):
        text = raw.strip()
        if text.lower() in _NA_STRINGS and text.lower() != "nan":
            return None
        try:
            x = float(text)
        except ValueError:
            raise EventError("non_numeric", f"value {name!r} is not a number: {raw[:40]!r}") from None
    else:
        raise EventError("non_numeric", f"value {name!r} has type {type(raw).__name__}")
    if not math.isfinite(x):
        raise EventError("non_finite", f"value {name!r} is {x}")
    return x


@dataclass(frozen=True)
class EventDecoder:
    """Turns JSON messages into validated :class:`Event` objects.

    Parameters
    ----------
    kind
        Default event kind for messages that do not say (``"sensor"`` or ``"price"``).
    naive_tz
        Zone for ISO times without one; ``None`` rejects them.
    max_bytes
        Messages larger than this are rejected as ``too_large``.
    max_key_len
        Keys longer than this are rejected as ``bad_key``.
    value_fields
        If given, exactly these value names are expected; other names are ``unknown_fields``
        and absent ones count as missing.

    Examples
    --------
    >>> d = EventDecoder()
    >>> e = d.decode(b'{"sensor_id": "s1", "ts": 1000, "values": {"t": 1.5, "h": null}}')
    >>> (e.kind, e.key, e.ts_ms, e.values)
    ('sensor', 's1', 1000, {'t': 1.5, 'h': None})
    >>> d.decode(b'{"symbol": "SPY", "ts": 1000, "price": 10.5, "size": 3}').values
    {'price': 10.5, 'size': 3.0}
    >>> d.decode(b'{"key": "a", "ts": 1, "values": {"x": NaN}}')
    Traceback (most recent call last):
    ...
    streamseq.events.errors.EventError: non_finite: value 'x' is nan
    """

    kind: str = "sensor"
    naive_tz: str | None = "UTC"
    max_bytes: int = 1_000_000
    max_key_len: int = 256
    value_fields: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, not {self.kind!r}")
        if self.naive_tz is not None:
            _zone(self.naive_tz)

    # -- JSON -------------------------------------------------------------------------
    def decode(self, payload: bytes | str) -> Event:
        """Decode one JSON message. Raises :class:`EventError` on any bad input."""
        return self.from_mapping(load_json_object(payload, self.max_bytes))

    def decode_many(self, payloads: Sequence[bytes]) -> EventColumns | None:
        """Decode a poll's messages at once, when each is a plain event: or ``None``, and
        the caller decodes each message by :meth:`decode` (whose outcome this never
        changes: every event it returns is the one :meth:`decode` returns).

        Plain: one JSON parse holds them all (:func:`load_json_objects`), all objects have
        the same fields in the same order, among them the key (a string), the time and
        ``values`` (an object), and an ``id``, if any, is a string or ``null``; no
        ``value_fields``. Each field is checked as a column: kinds and the poll's distinct
        keys by :meth:`decode`'s rules, times and values at once when they are integer
        epoch milliseconds in range and finite floats, else by :meth:`decode`'s rules
        event by event (ISO times, integer or null readings); any error: ``None``.

        Examples
        --------
        >>> d = EventDecoder()
        >>> cols = d.decode_many([b'{"key": "a", "ts": 5, "values": {"x": 1.5}}',
        ...                       b'{"key": "b", "ts": 6, "values": {"x": -2.0, "y": 0.5}}'])
        >>> cols[1] == d.decode(b'{"key": "b", "ts": 6, "values": {"x": -2.0, "y": 0.5}}')
        True
        >>> d.decode_many([b'{"key": "a", "ts": "1970-01-01T00:00:01Z", "values": {"x": 1}}'])[0]
        Event(kind='sensor', key='a', ts_ms=1000, values={'x': 1.0}, id=None, meta={})
        >>> d.decode_many([b'{"key": "a", "ts": 5, "values": {"x": NaN}}'])  # decode refuses it
        """
        if self.value_fields is not None:
            return None
        docs = load_json_objects(payloads, self.max_bytes)
        if not docs:
            return None
        layouts = set(map(tuple, docs))
        if len(layouts) != 1:
            return None
        (layout,) = layouts
        key_field = next((f for f in KEY_FIELDS if f in layout), None)
        time_field = next((f for f in TIME_FIELDS if f in layout), None)
        if key_field is None or time_field is None or "values" not in layout:
            return None
        try:  # set() of an unhashable value (an object) raises TypeError
            kinds = (list(map(operator.itemgetter("kind"), docs)) if "kind" in layout
                     else [self.kind] * len(docs))
            if not set(kinds) <= _KIND_SET:
                return None
            keys = list(map(operator.itemgetter(key_field), docs))
            distinct = set(keys)
            if not all(map(self._plain_key, distinct)):
                if set(map(type, keys)) != {str}:  # check_key makes other types strings
                    return None
                for key in distinct:
                    check_key(key, self.max_key_len)
            ts = list(map(operator.itemgetter(time_field), docs))
            if set(map(type, ts)) != {int} or min(ts) < MIN_TS_MS or max(ts) > MAX_TS_MS:
                ts = list(map(parse_time, ts, repeat(self.naive_tz)))
            values = list(map(operator.itemgetter("values"), docs))
            if set(map(type, values)) != {dict}:
                return None
            numbers = list(chain.from_iterable(map(dict.values, values)))
            # all floats, and their sum finite: none is NaN or infinite
            if (not min(map(len, values)) or set(map(type, numbers)) != {float}
                    or not math.isfinite(sum(numbers))):
                values = list(map(self._values, values))
        except (TypeError, EventError):
            return None
        ids: list[str | None] = [None] * len(docs)
        if "id" in layout:
            ids = list(map(operator.itemgetter("id"), docs))
            if not set(map(type, ids)) <= _ID_TYPES:
                return None
        return EventColumns(kinds, keys, ts, values, ids)

    def from_mapping(self, doc: Mapping[str, object]) -> Event:
        """Validate a decoded JSON object (see :mod:`streamseq.events.schema` for the layout)."""
        kind = doc.get("kind", self.kind)
        if kind not in KINDS:
            raise EventError("bad_kind", f"kind {kind!r} is not one of {KINDS}")
        key = self._key(doc)
        ts_raw = None
        for f in TIME_FIELDS:  # a loop, not next(generator): this runs once per event
            if f in doc:
                ts_raw = doc[f]
                break
        if ts_raw is None:
            raise EventError("missing_time")
        if type(ts_raw) is int and MIN_TS_MS <= ts_raw <= MAX_TS_MS:
            ts_ms = ts_raw  # epoch ms in range: what parse_time would return
        else:
            ts_ms = parse_time(ts_raw, self.naive_tz)
        raw_values = doc.get("values")
        if raw_values is None:
            raw_values = {k: v for k, v in doc.items() if k not in META_FIELDS}
            if kind == "price":
                extra = set(raw_values) - set(PRICE_FIELDS)
                if extra:
                    raise EventError("unknown_fields", f"unexpected price fields {sorted(extra)}")
        elif not isinstance(raw_values, dict):
            raise EventError("non_numeric", "'values' must be an object of name -> number")
        values = self._values(raw_values)
        msg_id = doc.get("id")
        if msg_id is not None and not isinstance(msg_id, (str, int)):
            msg_id = None
        return Event(str(kind), key, ts_ms, values, None if msg_id is None else str(msg_id))

    # -- helpers ----------------------------------------------------------------------
    def _key(self, doc: Mapping[str, object]) -> str:
        raw = None
        for f in KEY_FIELDS:
            if f in doc:
                raw = doc[f]
                break
        if raw is None:
            raise EventError("missing_key")
        if self._plain_key(raw):
            return raw
        return check_key(raw, self.max_key_len)

    def _plain_key(self, raw: object) -> TypeGuard[str]:
        """A key :func:`check_key` accepts as it is: printable ASCII, not blank, not too
        long."""
        return (type(raw) is str and raw.isascii() and raw.isprintable()
                and len(raw) <= self.max_key_len and not raw.isspace() and raw != "")

    def _values(self, raw: Mapping[str, object]) -> dict[str, float | None]:
        if self.value_fields is not None:
            unknown = set(raw) - set(self.value_fields)
            if unknown:
                raise EventError("unknown_fields", f"unexpected values {sorted(unknown)[:5]}")
            names: Sequence[str] = self.value_fields
        else:
            names = list(raw)
        if not names:
            raise EventError("no_values")
        values: dict[str, float | None] = {}
        present = False
        for n in names:  # a loop with the common case inline: this runs once per value
            x = raw.get(n)
            if type(x) is float and x - x == 0.0 and type(n) is str:  # a finite float
                values[n] = x
                present = True
            else:
                name = str(n)
                value = values[name] = _number(name, x)
                present = present or value is not None
        if not present or (len(values) < len(names)  # names that are equal as strings
                           and all(v is None for v in values.values())):
            raise EventError("missing_value", "every value of the event is null")
        return values


_DEFAULT = EventDecoder()


def decode_json(payload: bytes | str) -> Event:
    """Decode with the default :class:`EventDecoder` (kind sensor, naive times in UTC)."""
    return _DEFAULT.decode(payload)
