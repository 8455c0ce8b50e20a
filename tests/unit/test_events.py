"""Event decoding and validation: every kind of bad input gets its typed error (issue 2)."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamseq.events import REASONS, Event, EventDecoder, EventError, decode_json, parse_time


def _reason(payload: bytes | str, decoder: EventDecoder | None = None) -> str:
    with pytest.raises(EventError) as info:
        (decoder or EventDecoder()).decode(payload)
    assert info.value.reason in REASONS
    return info.value.reason


GOOD = {"key": "s1", "ts": 1_700_000_000_000, "values": {"t": 21.5, "h": 40.0}}


def _doc(**changes: object) -> bytes:
    d: dict[str, object] = {**GOOD, **changes}
    for k, v in list(d.items()):
        if v is _DROP:
            del d[k]
    return json.dumps(d).encode()


_DROP = object()


def test_good_event_decodes() -> None:
    e = decode_json(_doc())
    assert (e.kind, e.key, e.ts_ms, e.values) == ("sensor", "s1", 1_700_000_000_000,
                                                  {"t": 21.5, "h": 40.0})


@pytest.mark.parametrize("payload, reason", [
    # not JSON
    (b'{"key": "a", "ts": 1, "values": {"x": 1}', "not_json"),
    (b"", "not_json"),
    (b"hello", "not_json"),
    # JSON but not an object
    (b"[1, 2]", "not_object"),
    (b"42", "not_object"),
    # not UTF-8
    (b'{"key": "\xff\xfe", "ts": 1, "values": {"x": 1}}', "not_utf8"),
    (b"\x80\x81\x82", "not_utf8"),
    # missing key / bad key
    (_doc(key=_DROP), "missing_key"),
    (_doc(key=""), "bad_key"),
    (_doc(key=["a"]), "bad_key"),
    (_doc(key=True), "bad_key"),
    # missing time / unparseable time
    (_doc(ts=_DROP), "missing_time"),
    (_doc(ts="yesterday"), "bad_time"),
    (_doc(ts="2024-13-45T00:00:00Z"), "bad_time"),
    (_doc(ts=True), "bad_time"),
    (_doc(ts=[1]), "bad_time"),
    (_doc(ts=10 ** 18), "bad_time"),
    (_doc(ts=-5), "bad_time"),
    (_doc(ts="9999-12-31T23:59:59+00:00"), "bad_time"),
    # missing / null values
    (_doc(values=_DROP), "no_values"),
    (_doc(values={}), "no_values"),
    (_doc(values={"t": None, "h": None}), "missing_value"),
    # non-numeric
    (_doc(values={"t": "warm"}), "non_numeric"),
    (_doc(values={"t": True}), "non_numeric"),
    (_doc(values={"t": [1.0]}), "non_numeric"),
    (_doc(values={"t": {"v": 1.0}}), "non_numeric"),
    (_doc(values=[1.0, 2.0]), "non_numeric"),
    # NaN / inf, as JSON literals, as strings, and as an overflowing number
    (b'{"key": "a", "ts": 1, "values": {"x": NaN}}', "non_finite"),
    (b'{"key": "a", "ts": 1, "values": {"x": Infinity}}', "non_finite"),
    (b'{"key": "a", "ts": 1, "values": {"x": -Infinity}}', "non_finite"),
    (b'{"key": "a", "ts": 1, "values": {"x": 1e400}}', "non_finite"),
    (_doc(values={"t": "nan"}), "non_finite"),
    (_doc(values={"t": "-inf"}), "non_finite"),
    (_doc(values={"t": 10 ** 400}), "non_finite"),
    # unknown field set (price events have a fixed field set)
    (b'{"kind": "price", "symbol": "SPY", "ts": 1, "price": 1.0, "colour": 3}', "unknown_fields"),
    # wrong kind
    (_doc(kind="weather"), "bad_kind"),
    (_doc(kind=3), "bad_kind"),
])
def test_bad_input_gets_its_typed_error(payload: bytes, reason: str) -> None:
    assert _reason(payload) == reason


def test_unknown_and_missing_fields_against_a_fixed_schema() -> None:
    d = EventDecoder(value_fields=("t", "h"))
    assert _reason(_doc(values={"t": 1.0, "h": 2.0, "p": 3.0}), d) == "unknown_fields"
    assert _reason(_doc(values={}), d) == "missing_value"
    # one absent value inside an otherwise valid event is a missing reading, not an error
    assert d.decode(_doc(values={"t": 1.0})).values == {"t": 1.0, "h": None}


def test_too_large_payload() -> None:
    d = EventDecoder(max_bytes=64)
    assert _reason(_doc(key="k" * 100), d) == "too_large"


def test_naive_time_policy() -> None:
    assert parse_time("2024-01-01T00:00:00") == parse_time("2024-01-01T00:00:00Z")
    with pytest.raises(EventError) as info:
        EventDecoder(naive_tz=None).decode(_doc(ts="2024-01-01T00:00:00"))
    assert info.value.reason == "bad_time"
    assert parse_time("2024-01-01T00:00:00", naive_tz="Europe/Paris") == parse_time(
        "2023-12-31T23:00:00Z")


def test_time_formats_agree() -> None:
    ms = 1_704_067_200_000
    for v in (ms, float(ms), str(ms), "2024-01-01T00:00:00Z", "2024-01-01 01:00:00+01:00",
              "2024-01-01T00:00:00.000+00:00"):
        assert parse_time(v) == ms


def test_json_round_trip() -> None:
    e = Event("sensor", "s-1", 1_700_000_000_123, {"a": 0.1 + 0.2, "b": None}, id="m-7")
    back = decode_json(json.dumps(e.to_json_dict()).encode())
    assert back == e


def test_huge_integer_time_is_a_typed_error() -> None:
    """A 400-digit event time must be ``bad_time``, not an ``OverflowError`` (a crash of the
    consumer loop on one message). Regression test: parse_time once called math.isfinite on
    an int."""
    assert _reason(_doc(ts=10 ** 400)) == "bad_time"


def test_overlong_integer_literal_is_a_typed_error() -> None:
    """An integer literal beyond Python's 4300-digit limit makes json.loads raise a plain
    ValueError without ``.msg``; decode must still answer ``not_json``."""
    payload = b'{"key": "a", "ts": 1, "values": {"x": 1' + b"0" * 5000 + b"}}"
    assert _reason(payload) == "not_json"


def test_unicode_digit_time_is_a_typed_error() -> None:
    """``"²"`` passes ``str.isdigit`` but not ``int()``: must be ``bad_time``, not ValueError."""
    assert _reason(_doc(ts="\u00b2")) == "bad_time"


_scalars = st.one_of(st.none(), st.booleans(), st.integers(-10 ** 30, 10 ** 30),
                     st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12))
_json = st.recursive(_scalars, lambda c: st.lists(c, max_size=3)
                     | st.dictionaries(st.text(max_size=4), c, max_size=3), max_leaves=6)
_docs = st.fixed_dictionaries({}, optional={
    "kind": st.sampled_from(["sensor", "price", "other"]), "key": _scalars, "symbol": _scalars,
    "ts": _scalars, "time": _scalars, "values": _json, "price": _scalars, "size": _scalars,
    "id": _json, "extra": _scalars})


@settings(max_examples=400, deadline=None, database=None, derandomize=True,
          suppress_health_check=list(HealthCheck))
@given(_docs)
def test_any_document_decodes_or_raises_event_error(doc: dict[str, object]) -> None:
    payload = json.dumps(doc).encode()
    try:
        e = decode_json(payload)
    except EventError as err:
        assert err.reason in REASONS
        return
    assert all(v is None or math.isfinite(v) for v in e.values.values())
    assert any(v is not None for v in e.values.values())


@settings(max_examples=300, deadline=None, database=None, derandomize=True)
@given(st.binary(max_size=64))
def test_any_bytes_decode_or_raise_event_error(payload: bytes) -> None:
    try:
        decode_json(payload)
    except EventError as err:
        assert err.reason in REASONS


# ----------------------------------------------------------------- fast paths = general rules
def _outcome(f: object, *args: object) -> object:
    """What ``f(*args)`` gives: its value, or the reason and detail of its EventError."""
    try:
        return f(*args)  # type: ignore[operator]
    except EventError as err:
        return ("error", err.reason, err.detail)


def _loads_reference(payload: bytes) -> dict[str, object]:
    """The JSON rules of the contract, written plainly (every decoder's first step)."""
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        raise EventError("not_utf8") from None
    try:
        doc = json.loads(text)
    except RecursionError:
        raise EventError("not_json", "JSON nesting too deep") from None
    except json.JSONDecodeError as exc:
        raise EventError("not_json", f"invalid JSON: {exc.msg} at {exc.pos}") from None
    except ValueError as exc:
        raise EventError("not_json", f"invalid JSON: {str(exc)[:200]}") from None
    if not isinstance(doc, dict):
        raise EventError("not_object", f"JSON document is a {type(doc).__name__}")
    return doc


_EDITS = st.lists(st.tuples(st.integers(0, 200), st.sampled_from(
    [b"", b" ", b"\n", b"}", b"{", b'"', b",", b"NaN", b"1e999", b"\xff", b"[", b"x", b"9" * 30,
     b"\x00"])), max_size=3)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(edits=_EDITS, pad=st.sampled_from([b"", b" ", b"\t\n", b"x"]))
def test_json_fast_path_gives_what_json_loads_gives(edits: list[tuple[int, bytes]],
                                                    pad: bytes) -> None:
    """The scanner shortcut of load_json_object: same documents, same errors, as
    json.loads, on valid messages cut and spliced anywhere."""
    from streamseq.events.decode import load_json_object

    payload = _doc(values={"t": 21.5, "n": None, "i": 3, "s": "4"})
    for at, piece in edits:
        at = min(at, len(payload))
        payload = payload[:at] + piece + payload[at + len(piece) // 2:]
    payload = payload + pad if pad != b"x" else pad + payload
    got = _outcome(load_json_object, payload, 10_000)
    want = _outcome(_loads_reference, payload)
    assert repr(got) == repr(want)  # repr: nan == nan


@settings(max_examples=300, deadline=None)
@given(key=st.one_of(st.text(max_size=12), st.text(alphabet=" \t-_.:/aZ09~\x7f\x1f", max_size=8),
                     st.integers(-5, 5), st.booleans()))
def test_key_fast_path_gives_what_check_key_gives(key: object) -> None:
    from streamseq.events.decode import check_key

    d = EventDecoder(max_key_len=6)
    got = _outcome(lambda: d.from_mapping({"key": key, "ts": 1, "values": {"x": 1.0}}).key)
    assert got == _outcome(check_key, key, 6)


@settings(max_examples=200, deadline=None)
@given(ts=st.one_of(st.integers(-10, 10), st.integers(7_258_118_399_990, 7_258_118_400_010),
                    st.integers(-2**70, 2**70), st.booleans(), st.floats()))
def test_time_fast_path_gives_what_parse_time_gives(ts: object) -> None:
    got = _outcome(lambda: EventDecoder().from_mapping(
        {"key": "a", "ts": ts, "values": {"x": 1.0}}).ts_ms)
    assert got == _outcome(parse_time, ts)


@settings(max_examples=300, deadline=None)
@given(values=st.dictionaries(st.sampled_from(["a", "b", "c"]), st.one_of(
    st.none(), st.floats(), st.integers(-3, 3), st.booleans(),
    st.sampled_from(["", "NA", "nan", "1.5", "x", " 2 "]))))
def test_values_follow_the_value_rules(values: dict[str, object]) -> None:
    """Each value is a finite float or None (null, or an NA string); the first bad one in
    order names the error; all None is missing_value."""
    got = _outcome(lambda: EventDecoder().from_mapping(
        {"key": "a", "ts": 1, "values": values}).values)
    want: object = {}
    for name, raw in values.items():
        if raw is None or (isinstance(raw, str) and raw.strip().lower() in ("", "na")):
            want[name] = None  # type: ignore[index]
        elif isinstance(raw, bool) or (isinstance(raw, str) and raw.strip() == "x"):
            want = "non_numeric"
            break
        elif not math.isfinite(float(raw)):  # type: ignore[arg-type]
            want = "non_finite"
            break
        else:
            want[name] = float(raw)  # type: ignore[index, arg-type]
    if not values:
        want = "no_values"
    elif isinstance(want, dict) and all(v is None for v in want.values()):
        want = "missing_value"
    assert (got[1] if isinstance(got, tuple) else got) == want
