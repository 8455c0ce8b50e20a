"""Time formats in files: detection only when the data decides, and a parser that agrees
with the standard library (issue 14)."""

from __future__ import annotations

import datetime as dt
import random
import zlib
from zoneinfo import ZoneInfo

import pytest

from streamseq.events.errors import EventError
from streamseq.exceptions import UsageError
from streamseq.io.times import TimeParser, category, detect_formats, near_miss, resolve_zone


@pytest.mark.parametrize("values, expected", [
    (["2016-07-01 00:00:00", "2016-07-01 01:00:00"], ("%Y-%m-%d %H:%M:%S",)),
    (["2024-01-01T00:00:00Z"], ("%Y-%m-%dT%H:%M:%S%z",)),
    (["2024-01-01T00:00:00+05:30", "2024-01-01T00:00:00.25-01:00"],
     ("%Y-%m-%dT%H:%M:%S.%f%z",)),
    (["2013-10-07 04:00:00.688000"], ("%Y-%m-%d %H:%M:%S.%f",)),
    (["1990/1/1 0:00", "1990/12/31 23:00"], ("%Y/%m/%d %H:%M",)),
    (["20110301 090100", "20110301 090200"], ("%Y%m%d %H%M%S",)),
    (["2024-01-01"], ("%Y-%m-%d",)),
    (["13.1.2020"], ("%d.%m.%Y",)),
    (["01-Jan-2020 10:00", "15-Feb-2020 11:30"], ("%d-%b-%Y %H:%M",)),
    (["Mon, 01 Jan 2024 00:00:00 +0000"], ("%a, %d %b %Y %H:%M:%S %z",)),
    (["2024-01-01 00:00:00 UTC"], ("%Y-%m-%d %H:%M:%S %Z",)),
    (["3/14/2020 1:05 PM"], ("%m/%d/%Y %I:%M %p",)),
    (["1700000000", "1700000060"], ("epoch_s",)),
    (["1700000000.5"], ("epoch_s",)),
    (["1700000000123"], ("epoch_ms",)),
    (["1700000000123456"], ("epoch_us",)),
    (["1700000000123456789"], ("epoch_ns",)),
    (["18:00:00", "19:00:00"], ("%H:%M:%S",)),
    (["18.00.00"], ("%H.%M.%S",)),
    (["12.5", "13.1"], ()),
    (["3", "4"], ()),
    (["yesterday"], ()),
])
def test_detection_of_each_layout(values: list[str], expected: tuple[str, ...]) -> None:
    assert detect_formats(values) == expected


def test_month_day_order_is_decided_by_the_data_only() -> None:
    both = ("%m/%d/%Y %H:%M", "%d/%m/%Y %H:%M")
    assert detect_formats(["1/2/2010 0:00", "12/11/2010 0:00"]) == both
    assert detect_formats(["1/2/2010 0:00", "1/13/2010 0:00"]) == both[:1]
    assert detect_formats(["1/2/2010 0:00", "13/1/2010 0:00"]) == both[1:]
    assert detect_formats(["1/13/2010 0:00", "13/1/2010 0:00"]) == ()  # no single format
    two_digit = detect_formats(["01/02/03"])
    assert set(two_digit) == {"%m/%d/%y", "%d/%m/%y", "%y/%m/%d"}


def test_a_format_must_read_every_sampled_value() -> None:
    assert detect_formats(["2024-01-01 00:00", "error"]) == ()
    assert near_miss(["2024-01-01 00:00", "error", "2024-01-01 00:02"]) == (
        "%Y-%m-%d %H:%M", "error")
    assert near_miss(["error", "junk", "2024-01-01 00:02"]) is None


def test_plain_numbers_are_times_only_when_allowed() -> None:
    assert detect_formats(["1700000000"], allow_numbers=False) == ()
    assert detect_formats(["20240101"]) == ("%Y%m%d",)
    assert detect_formats(["20240101"], allow_numbers=False) == ()
    # 12 digits: a compact date-time or epoch milliseconds of 1976: the user must say
    assert detect_formats(["201103010901"]) == ("%Y%m%d%H%M", "epoch_ms")


EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
FORMATS = [
    ("%Y-%m-%d %H:%M:%S", lambda t: t.strftime("%Y-%m-%d %H:%M:%S")),
    ("%Y-%m-%dT%H:%M:%S.%f", lambda t: t.strftime("%Y-%m-%dT%H:%M:%S.%f")),
    ("%m/%d/%Y %H:%M", lambda t: f"{t.month}/{t.day}/{t.year} {t.hour}:{t.minute:02d}"),
    ("%d/%m/%Y %H.%M.%S", lambda t: t.strftime("%d/%m/%Y %H.%M.%S")),
    ("%Y/%m/%d %H:%M", lambda t: f"{t.year}/{t.month}/{t.day} {t.hour}:{t.minute:02d}"),
    ("%Y%m%d %H%M%S", lambda t: t.strftime("%Y%m%d %H%M%S")),
    ("%d-%b-%Y %I:%M %p", lambda t: t.strftime("%d-%b-%Y %I:%M %p")),
    ("%Y-%m-%d", lambda t: t.strftime("%Y-%m-%d")),
]


@pytest.mark.parametrize("zone", ["UTC", "America/New_York", "Australia/Lord_Howe", "+05:30"])
@pytest.mark.parametrize("fmt, render", FORMATS, ids=[f for f, _ in FORMATS])
def test_parser_agrees_with_the_standard_library(fmt: str, render: object, zone: str) -> None:
    """Random local times (DST change days included) against datetime + zoneinfo, in exact
    integer microseconds rounded half up to the millisecond."""
    rnd = random.Random(zlib.crc32(f"{fmt} {zone}".encode()))
    tz = resolve_zone(zone)
    start = dt.datetime(1971, 1, 1)
    stamps = [start + dt.timedelta(seconds=rnd.randrange(130 * 365 * 86400),
                                   microseconds=rnd.randrange(10 ** 6)) for _ in range(400)]
    if isinstance(tz, ZoneInfo):  # every minute of a spring-forward and a fall-back day
        stamps += [dt.datetime(2021, 3, 14) + dt.timedelta(minutes=m) for m in range(1440)]
        stamps += [dt.datetime(2021, 11, 7) + dt.timedelta(minutes=m) for m in range(1440)]
        stamps += [dt.datetime(2021, 4, 4) + dt.timedelta(minutes=m) for m in range(1440)]
    parser = TimeParser(fmt, zone)
    for t in stamps:
        text = render(t)  # type: ignore[operator]
        local = dt.datetime.strptime(text, fmt).replace(tzinfo=tz)
        micros = (local - EPOCH) // dt.timedelta(microseconds=1)  # exact, no float
        expected = (micros + 500) // 1000  # to the millisecond, half up
        assert parser(text) == expected, (text, zone)
        assert parser(text) == expected, "the cached path gives the same answer"


def test_split_columns_and_zones() -> None:
    p = TimeParser("%d/%m/%Y %H:%M:%S")
    assert p.parse_parts("13/01/2010", "18:00:00") == p("13/01/2010 18:00:00")
    z = TimeParser("%Y-%m-%dT%H:%M:%S%z")
    assert z("2024-01-01T01:00:00+01:00") == z("2024-01-01T00:00:00Z") == 1704067200000
    assert TimeParser("%Y-%m-%d %H:%M", "UTC-5")("2024-01-01 00:00") == 1704085200000


def test_epoch_units() -> None:
    ms = 1_700_000_000_123
    assert TimeParser("epoch_ms")(str(ms)) == ms
    assert TimeParser("epoch_s")("1700000000.123") == ms
    assert TimeParser("epoch_us")(str(ms * 1000 + 499)) == ms
    assert TimeParser("epoch_ns")(str(ms * 10 ** 6 + 500_000)) == ms + 1


@pytest.mark.parametrize("fmt, text, why", [
    ("%d/%m/%Y", "31/2/2010", "day out of range"),
    ("%m/%d/%Y", "13/1/2010", "month out of range"),
    ("%Y-%m-%d %H:%M", "2024-01-01 24:00", "clock out of range"),
    ("%Y-%m-%d", "1969-12-31", "outside 1970..2200"),
    ("epoch_ms", "99999999999999999", "outside 1970..2200"),
    ("%Y-%m-%d", "", "cannot parse"),
    ("%Y-%m-%d", "2024-01-01x", "cannot parse"),
])
def test_bad_values_are_bad_time(fmt: str, text: str, why: str) -> None:
    with pytest.raises(EventError) as info:
        TimeParser(fmt)(text)
    assert info.value.reason == "bad_time" and why in str(info.value)


def test_fractions_round_half_up_on_every_path() -> None:
    p = TimeParser("%Y-%m-%d %H:%M:%S.%f")
    base = p("2024-01-01 00:00:00")
    for text, ms in [("2024-01-01 00:00:00.5", 500), ("2024-01-01 00:00:00.0005", 1),
                     ("2024-01-01 00:00:00.0004999", 0), ("2024-01-01 00:00:00.9996", 1000),
                     ("2024-01-01 00:00:00.123456789", 123)]:
        assert p(text) - base == ms, text
        assert TimeParser("%Y-%m-%d %H:%M:%S.%f")(text) - base == ms, "uncached"


def test_bad_formats_and_zones_are_usage_errors() -> None:
    for fmt in ("%Q", "%d/%m", "%H:%M %I", "%Y %Y", "%"):
        with pytest.raises(UsageError):
            TimeParser(fmt)
    with pytest.raises(UsageError):
        resolve_zone("Mars/Olympus")
    assert category("%d/%m/%Y") == "date" and category("%H:%M") == "clock"
