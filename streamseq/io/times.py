"""Event times in files: strptime formats compiled to fast parsers, and format detection.

A file's time column is read with one format for the whole file: given by the user
(``--time-format``, strptime syntax, or ``epoch_s`` / ``epoch_ms`` / ``epoch_us`` /
``epoch_ns``), or detected from a sample of its values by :func:`detect_formats`, which
returns every candidate format that parses *all* sampled values. The caller accepts a format
only when exactly one candidate is left; month/day order is never guessed (``1/2/2010`` fits
both ``%m/%d/%Y`` and ``%d/%m/%Y`` until a value such as ``13/2/2010`` decides it).

:class:`TimeParser` turns a value into epoch milliseconds (UTC). It splits a value at the
separator between its date and time-of-day parts and caches each part, so a column of
minute stamps costs two dictionary look-ups per row; values without a zone are read in the
``naive_tz`` zone (the zone's offset is looked up once per day, exactly on DST days).

Examples
--------
>>> detect_formats(["1/1/2010 0:00", "1/2/2010 0:00"])
('%m/%d/%Y %H:%M', '%d/%m/%Y %H:%M')
>>> detect_formats(["1/1/2010 0:00", "13/1/2010 0:00"])
('%d/%m/%Y %H:%M',)
>>> p = TimeParser("%d/%m/%Y %H:%M")
>>> p("13/1/2010 0:00") == TimeParser("%Y-%m-%d %H:%M:%S")("2010-01-13 00:00:00")
True
>>> detect_formats(["1700000000", "1700000060"])
('epoch_s',)
>>> TimeParser("epoch_s")("1700000000")
1700000000000
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timedelta, timezone, tzinfo
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from streamseq.events.decode import MAX_TS_MS, MIN_TS_MS
from streamseq.events.errors import EventError
from streamseq.exceptions import UsageError

__all__ = [
    "EPOCH_FORMATS",
    "TimeParser",
    "category",
    "detect_formats",
    "near_miss",
    "resolve_zone",
]

DAY_MS = 86_400_000
EPOCH_FORMATS = {"epoch_s": 1000, "epoch_ms": 1, "epoch_us": 1e-3, "epoch_ns": 1e-6}
# Epoch magnitudes accepted by detection: 1973-03-03 .. 2200 in each unit, so the units
# never overlap (a 10-digit number is seconds, a 13-digit one milliseconds, ...).
_EPOCH_RANGES = {"epoch_s": (1e8, MAX_TS_MS / 1e3), "epoch_ms": (1e11, MAX_TS_MS),
                 "epoch_us": (1e14, MAX_TS_MS * 1e3), "epoch_ns": (1e17, MAX_TS_MS * 1e6)}
_CACHE_CAP = 200_000

_MONTHS = {name: i + 1 for i, names in enumerate(
    ("jan january", "feb february", "mar march", "apr april", "may", "jun june",
     "jul july", "aug august", "sep sept september", "oct october", "nov november",
     "dec december")) for name in names.split()}

# strptime directive -> (regex, field). Lenient like strptime: unpadded numbers are fine.
_DIRECTIVES: dict[str, tuple[str, str]] = {
    "Y": (r"\d{4}", "Y"), "y": (r"\d{2}", "y"), "m": (r"\d{1,2}", "m"),
    "d": (r"\d{1,2}", "d"), "H": (r"\d{1,2}", "H"), "I": (r"\d{1,2}", "I"),
    "M": (r"\d{1,2}", "M"), "S": (r"\d{1,2}", "S"), "f": (r"\d{1,9}", "f"),
    "p": (r"[ap]\.?m\.?", "p"), "z": (r"z|[+-]\d{2}(?::?\d{2})?", "z"),
    "Z": (r"utc|gmt|z", "Z"), "b": (r"[a-z]{3,9}\.?", "b"), "B": (r"[a-z]{3,9}\.?", "b"),
    "h": (r"[a-z]{3,9}\.?", "b"), "a": (r"[a-z]{2,9}\.?", "-"), "A": (r"[a-z]{2,9}\.?", "-"),
    "j": (r"\d{1,3}", "j"),
}
_ALIASES = {"T": "%H:%M:%S", "F": "%Y-%m-%d", "R": "%H:%M", "D": "%m/%d/%y"}
_TIME_FIELDS = frozenset("HIMSfpzZ")
_DATE_FIELDS = frozenset("YymdbBhaAj")


# -- zones -------------------------------------------------------------------------------
_OFFSET = re.compile(r"^(?:utc|gmt)?\s*([+-])(\d{1,2})(?::?(\d{2}))?$", re.IGNORECASE)


@lru_cache(maxsize=64)
def resolve_zone(name: str) -> tzinfo:
    """A zone from an IANA name (``Europe/Paris``), ``UTC``, or a fixed offset
    (``+05:30``, ``-0500``, ``UTC-5``).

    Examples
    --------
    >>> resolve_zone("UTC-5").utcoffset(None)
    datetime.timedelta(days=-1, seconds=68400)
    >>> resolve_zone("Mars/Olympus")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    streamseq.exceptions.UsageError: unknown time zone 'Mars/Olympus' (an IANA name ...
    """
    text = name.strip()
    if text.upper() in ("UTC", "Z", "GMT"):
        return timezone.utc
    m = _OFFSET.match(text)
    if m:
        sign = -1 if m.group(1) == "-" else 1
        return timezone(sign * timedelta(hours=int(m.group(2)), minutes=int(m.group(3) or 0)))
    try:
        return ZoneInfo(text)
    except (ZoneInfoNotFoundError, ValueError):
        raise UsageError(f"unknown time zone {name!r} (an IANA name such as Europe/Paris, "
                         "UTC, or an offset such as +05:30)") from None


# -- compiling a format ------------------------------------------------------------------
def _tokens(fmt: str) -> list[tuple[str, str]]:
    """``[("dir", "Y"), ("lit", "-"), ...]``; aliases (``%T``, ``%F``) expanded."""
    for alias, full in _ALIASES.items():
        fmt = fmt.replace(f"%{alias}", full)
    out: list[tuple[str, str]] = []
    i = 0
    while i < len(fmt):
        c = fmt[i]
        if c == "%":
            if i + 1 >= len(fmt):
                raise UsageError(f"time format {fmt!r} ends with a lone '%'")
            d = fmt[i + 1]
            if d == "%":
                out.append(("lit", "%"))
            elif d in _DIRECTIVES:
                out.append(("dir", d))
            else:
                raise UsageError(f"time format directive %{d} is not supported (use %Y %y %m "
                                 "%d %j %b %B %a %H %I %p %M %S %f %z %Z, or epoch_s/ms/us/ns)")
            i += 2
        else:
            if out and out[-1][0] == "lit":
                out[-1] = ("lit", out[-1][1] + c)
            else:
                out.append(("lit", c))
            i += 1
    return out


def _regex(tokens: Sequence[tuple[str, str]]) -> tuple[re.Pattern[str], tuple[str, ...]]:
    parts: list[str] = []
    fields: list[str] = []
    for n, (kind, text) in enumerate(tokens):
        if kind == "lit":
            parts.append("".join(r"\s+" if ch.isspace() else re.escape(ch) for ch in text)
                         .replace(r"\s+\s+", r"\s+"))
        else:
            pattern, field = _DIRECTIVES[text]
            prev = tokens[n - 1] if n > 0 else ("", "")
            if text == "f" and prev in (("lit", "."), ("lit", ",")):
                # seconds with an optional fraction: "%S.%f" also reads "12:00:05"
                parts[-1] = f"(?:{parts[-1]}(?P<f>{pattern}))?"
                fields.append("f")
                continue
            if text == "z" and prev[0] == "lit" and prev[1].isspace():
                parts[-1] = r"\s*"  # "... 00:00 +0100" and "... 00:00+0100"
            if field != "-" and field in fields:
                raise UsageError(f"time format uses %{text} twice")
            parts.append(f"(?P<{field if field != '-' else f'skip{n}'}>{pattern})")
            if field != "-":
                fields.append(field)
    return re.compile("".join(parts) + r"\Z", re.IGNORECASE), tuple(fields)


def _days_from_civil(y: int, m: int, d: int) -> int:
    """Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm)."""
    y -= m <= 2
    era = y // 400
    yoe = y - era * 400
    doy = (153 * (m + (-3 if m > 2 else 9)) + 2) // 5 + d - 1
    return era * 146097 + yoe * 365 + yoe // 4 - yoe // 100 + doy - 719468


_MONTH_DAYS = (31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


def _bad(text: str, why: str = "") -> EventError:
    return EventError("bad_time", f"cannot parse event time {text[:60]!r}{why}")


def _frac_ms(digits: str) -> int:
    """Milliseconds of a fraction of a second, rounded half up (``"6885"`` -> 689)."""
    return int(digits[:3].ljust(3, "0")) + (len(digits) > 3 and digits[3] >= "5")


_DIGITS = re.compile(r"\d{1,9}")


class _Part:
    """One compiled half of a format: its regex and a function of the match's groups."""

    def __init__(self, tokens: Sequence[tuple[str, str]]) -> None:
        self.regex, self.fields = _regex(tokens)
        self.has_date = any(f in self.fields for f in "Yymdbj")
        self.has_time = any(f in self.fields for f in "HIMSf")
        self.has_zone = any(f in self.fields for f in "zZ")
        if self.has_date and not ({"Y", "y"} & set(self.fields)):
            raise UsageError("a time format with a date needs a year (%Y or %y)")
        if ("I" in self.fields) != ("p" in self.fields):
            raise UsageError("%I (12-hour clock) and %p (AM/PM) go together")
        # the separator of a fraction of a second, if no other literal holds it: the clock
        # cache is keyed without the fraction (tick times differ, their seconds repeat)
        self.frac_sep: str | None = None
        if ("dir", "f") in tokens:
            before = tokens[list(tokens).index(("dir", "f")) - 1]
            lits = [t for k, t in tokens if k == "lit"]
            if before[1] in (".", ",") and sum(before[1] in t for t in lits) == 1:
                self.frac_sep = before[1]

    def match(self, text: str) -> dict[str, str]:
        m = self.regex.match(text)
        if m is None:
            raise _bad(text)
        return m.groupdict()

    def day(self, g: dict[str, str], text: str) -> int:
        """Days since the epoch of the date fields of ``g``."""
        if "Y" in g:
            y = int(g["Y"])
        else:
            yy = int(g["y"])
            y = 2000 + yy if yy < 69 else 1900 + yy  # as strptime
        if "j" in g:
            doy = int(g["j"])
            leap = y % 4 == 0 and (y % 100 != 0 or y % 400 == 0)
            if not 1 <= doy <= 365 + leap:
                raise _bad(text, ": day of year out of range")
            return _days_from_civil(y, 1, 1) + doy - 1
        if "b" in g:
            mo = _MONTHS.get(g["b"].rstrip(".").lower(), 0)
        else:
            mo = int(g.get("m") or 1)
        d = int(g.get("d") or 1)
        if not 1 <= mo <= 12:
            raise _bad(text, ": month out of range")
        leap = mo == 2 and y % 4 == 0 and (y % 100 != 0 or y % 400 == 0)
        if not 1 <= d <= _MONTH_DAYS[mo - 1] + leap:
            raise _bad(text, ": day out of range")
        return _days_from_civil(y, mo, d)

    def clock(self, g: dict[str, str], text: str) -> tuple[int, int | None]:
        """(milliseconds since midnight, zone offset in ms or None) of ``g``."""
        h = int(g.get("H") or g.get("I") or 0)
        if "p" in g:
            if not 1 <= h <= 12:
                raise _bad(text, ": hour out of range")
            h = h % 12 + (12 if g["p"][0] in "pP" else 0)
        mi = int(g.get("M") or 0)
        s = int(g.get("S") or 0)
        if h > 23 or mi > 59 or s > 59:
            raise _bad(text, ": clock out of range")
        frac = g.get("f")
        ms = ((h * 60 + mi) * 60 + s) * 1000
        if frac:
            ms += _frac_ms(frac)
        offset: int | None = None
        z = g.get("z")
        if z is not None:
            if z in ("Z", "z"):
                offset = 0
            else:
                digits = z[1:].replace(":", "")
                hours, minutes = int(digits[:2]), int(digits[2:4] or 0)
                if hours > 23 or minutes > 59:
                    raise _bad(text, ": zone offset out of range")
                offset = (-1 if z[0] == "-" else 1) * (hours * 60 + minutes) * 60_000
        elif "Z" in g:
            offset = 0
        return ms, offset


class TimeParser:
    """Epoch milliseconds (UTC) of values written in one format.

    Parameters
    ----------
    fmt
        A strptime format (``%Y %y %m %d %j %b %B %a %H %I %p %M %S %f %z %Z``; unpadded
        numbers are read, ``%S.%f`` also reads whole seconds) or ``epoch_s``, ``epoch_ms``,
        ``epoch_us``, ``epoch_ns``.
    naive_tz
        Zone of values without an offset (IANA name, ``UTC`` or ``+HH:MM``).

    Raises :class:`~streamseq.exceptions.UsageError` for a format it cannot compile; each
    call raises :class:`~streamseq.events.errors.EventError` (``bad_time``) for a value that
    does not fit or is outside 1970..2200.

    Examples
    --------
    >>> TimeParser("%Y-%m-%d %H:%M:%S%z")("2024-01-01 01:00:00+01:00")
    1704067200000
    >>> ny = TimeParser("%Y-%m-%d %H:%M", naive_tz="America/New_York")
    >>> ny("2024-01-01 00:00") - TimeParser("%Y-%m-%d %H:%M")("2024-01-01 05:00")
    0
    >>> TimeParser("%Y%m%d %H%M%S")("20110301 090100") == TimeParser("%Y-%m-%dT%H:%M:%SZ")(
    ...     "2011-03-01T09:01:00Z")
    True
    >>> TimeParser("%d/%m/%Y")("31/2/2010")
    Traceback (most recent call last):
    ...
    streamseq.events.errors.EventError: bad_time: cannot parse event time '31/2/2010': day out of range
    """

    def __init__(self, fmt: str, naive_tz: str | None = "UTC") -> None:
        self.format = fmt
        self.zone = resolve_zone(naive_tz or "UTC")
        self._utc = self.zone is timezone.utc
        self._day_offset: dict[int, int | None] = {}
        self._epoch = EPOCH_FORMATS.get(fmt)
        # caches of the split path: date text -> UTC ms of its local midnight (days with a
        # DST change are not cached), clock text -> ms since midnight minus its own offset
        self._dates: dict[str, int] = {}
        self._clocks: dict[str, int] = {}
        self._days: dict[str, int] = {}  # date text -> days since 1970 (the slow path)
        self.parse: Callable[[str], int]
        if self._epoch is not None:
            self.has_date = self.has_time = True
            self._sep, self._date, self._clock = "", None, None
            self.parse = self._parse_epoch
            return
        self._whole, self._sep, self._date, self._clock = _compile(fmt)
        self.has_date, self.has_time = self._whole.has_date, self._whole.has_time
        self.parse = self._fast() if self._date is not None else self._parse_whole

    def __call__(self, text: str) -> int:
        return self.parse(text)

    def parse_parts(self, date_text: str, clock_text: str) -> int:
        """The time of a date and a clock held in two columns (format ``DATEFMT CLOCKFMT``).

        Examples
        --------
        >>> TimeParser("%d/%m/%Y %H:%M:%S").parse_parts("13/01/2010", "18:00:00")
        1263405600000
        """
        dates, clocks = self._dates, self._clocks
        base = dates.get(date_text)
        if base is not None:
            off = clocks.get(clock_text)
            if off is not None and MIN_TS_MS <= base + off <= MAX_TS_MS:
                return base + off
        if self._date is None:
            return self._parse_whole(f"{date_text.strip()} {clock_text.strip()}")
        return self._slow_split(date_text.strip(), clock_text.strip(), None)

    # -- the three shapes of formats ------------------------------------------------------
    def _fast(self) -> Callable[[str], int]:
        """The per-row path: split, two cache look-ups, one addition."""
        dates, clocks, sep, slow = self._dates, self._clocks, self._sep, self._parse_split
        lo, hi = MIN_TS_MS, MAX_TS_MS
        assert self._clock is not None
        fsep = self._clock.frac_sep
        digits = _DIGITS.match

        def parse(text: str) -> int:
            date_text, _, clock_text = text.strip().partition(sep)
            base = dates.get(date_text)
            if base is not None:
                off = clocks.get(clock_text)
                if off is not None and lo <= base + off <= hi:
                    return base + off
            return slow(text)

        def parse_fraction(text: str) -> int:
            date_text, _, clock_text = text.strip().partition(sep)
            base = dates.get(date_text)
            if base is not None:
                head, found, rest = clock_text.partition(fsep)  # type: ignore[arg-type]
                if found and rest.isdigit():  # the common case: the fraction ends the value
                    off = clocks.get(head)
                    if off is not None:
                        ms = base + off + (int(rest[:3]) + (rest[3:4] >= "5") if len(rest) >= 3
                                           else int(rest.ljust(3, "0")))
                        if lo <= ms <= hi:
                            return ms
                    return slow(text)
                m = digits(rest) if found else None
                if m is not None:
                    off = clocks.get(head + rest[m.end():])
                    if off is not None:
                        ms = base + off + _frac_ms(m.group())
                        if lo <= ms <= hi:
                            return ms
                elif not found:
                    off = clocks.get(clock_text)
                    if off is not None and lo <= base + off <= hi:
                        return base + off
            return slow(text)
        return parse_fraction if fsep else parse

    def _parse_epoch(self, text: str) -> int:
        t = text.strip()
        scale = self._epoch
        assert scale is not None
        try:
            if t.lstrip("+-").isdigit():
                n = int(t)
                div = round(1 / scale) if scale < 1 else 1
                ms = n * int(scale) if scale >= 1 else (n + div // 2) // div
            else:
                ms = round(float(t) * scale)
        except (ValueError, OverflowError):
            raise _bad(text) from None
        return _checked(ms, text)

    def _parse_split(self, text: str) -> int:
        t = text.strip()
        date_text, found, clock_text = t.partition(self._sep)
        if not found:
            return self._parse_whole(t)
        return self._slow_split(date_text, clock_text, t)

    def _slow_split(self, date_text: str, clock_text: str, whole: str | None) -> int:
        """Parse both parts (filling the caches); on failure try the whole-value regex."""
        assert self._date is not None and self._clock is not None
        try:
            day = self._days.get(date_text)
            if day is None:
                day = self._date.day(self._date.match(date_text), date_text)
                if len(self._days) >= _CACHE_CAP:
                    self._days.clear()
                self._days[date_text] = day
            clock_ms, offset = self._clock.clock(self._clock.match(clock_text), clock_text)
        except EventError:
            if whole is not None:
                return self._parse_whole(whole)
            raise
        text = whole or f"{date_text} {clock_text}"
        if len(self._dates) >= _CACHE_CAP:
            self._dates.clear()
        if len(self._clocks) >= _CACHE_CAP:
            self._clocks.clear()
        key, frac = clock_text, 0
        if self._clock.frac_sep:
            head, found, rest = clock_text.partition(self._clock.frac_sep)
            m = _DIGITS.match(rest) if found else None
            if m is not None:
                key, frac = head + rest[m.end():], _frac_ms(m.group())
        if self._clock.has_zone:
            self._dates[date_text] = day * DAY_MS
            self._clocks[key] = clock_ms - frac - (offset or 0)
        else:
            self._clocks[key] = clock_ms - frac
            day_offset = self._offset_on(day)
            if day_offset is not None:
                self._dates[date_text] = day * DAY_MS - day_offset
        return self._utc_ms(day, clock_ms, offset, text)

    def _parse_whole(self, text: str) -> int:
        t = text.strip()
        g = self._whole.match(t)
        day = self._whole.day(g, t) if self._whole.has_date else 0
        ms, offset = self._whole.clock(g, t)
        return self._utc_ms(day, ms, offset, t)

    def _utc_ms(self, day: int, clock_ms: int, offset: int | None, text: str) -> int:
        local = day * DAY_MS + clock_ms
        if offset is not None:
            return _checked(local - offset, text)
        day_offset = self._offset_on(day)
        if day_offset is None:  # a DST change happens on this day: this time's own offset
            offset_td = _naive(local).replace(tzinfo=self.zone).utcoffset() or timedelta(0)
            return _checked(local - offset_td // timedelta(milliseconds=1), text)
        return _checked(local - day_offset, text)

    def _offset_on(self, day: int) -> int | None:
        """The naive zone's offset (ms) on ``day`` if it is the same all day, else None."""
        if self._utc:
            return 0
        if day not in self._day_offset:
            start = _naive(day * DAY_MS)
            first = start.replace(tzinfo=self.zone).utcoffset()
            last = (start + timedelta(hours=23, minutes=59, seconds=59)).replace(
                tzinfo=self.zone).utcoffset()
            same = first is not None and first == last
            self._day_offset[day] = int(first.total_seconds() * 1000) if same and first else (
                0 if same else None)
        return self._day_offset[day]


def _naive(local_ms: int) -> datetime:
    return datetime(1970, 1, 1) + timedelta(milliseconds=local_ms)


def _checked(ms: int, text: str) -> int:
    if not MIN_TS_MS <= ms <= MAX_TS_MS:
        raise EventError("bad_time", f"event time {text[:60]!r} is outside 1970..2200")
    return ms


@lru_cache(maxsize=256)
def _compile(fmt: str) -> tuple[_Part, str, _Part | None, _Part | None]:
    """The compiled whole format and its date/clock split (parts hold no per-file state)."""
    tokens = _tokens(fmt)
    whole = _Part(tokens)
    if not whole.has_date and not whole.has_time:
        raise UsageError(f"time format {fmt!r} has no date or time directive")
    return (whole, *_split_format(tokens))


def _split_format(tokens: list[tuple[str, str]]) -> tuple[str, _Part | None, _Part | None]:
    """``(separator, date part, clock part)`` when the format is DATE SEP CLOCK with a
    literal separator that the date part does not contain; else ``("", None, None)``."""
    kinds = ["date" if k == "dir" and t in _DATE_FIELDS else "time" if k == "dir" else "lit"
             for k, t in tokens]
    if "time" not in kinds or "date" not in kinds:
        return "", None, None
    first_time = kinds.index("time")
    last_date = len(kinds) - 1 - kinds[::-1].index("date")
    if last_date > first_time or first_time - last_date != 2 or kinds[last_date + 1] != "lit":
        return "", None, None
    sep = tokens[last_date + 1][1]
    date_tokens = tokens[: last_date + 1]
    if any(k == "lit" and sep in t for k, t in date_tokens):
        return "", None, None
    return sep, _Part(date_tokens), _Part(tokens[last_date + 2:])


# -- detection ---------------------------------------------------------------------------
_SEP = r"[-/.]"
_DATE_SHAPES: tuple[tuple[str, tuple[str, ...]], ...] = (
    (rf"\d{{4}}(?P<s>{_SEP})\d{{1,2}}(?P=s)\d{{1,2}}", ("%Y{s}%m{s}%d",)),
    (rf"\d{{1,2}}(?P<s>{_SEP})\d{{1,2}}(?P=s)\d{{4}}", ("%m{s}%d{s}%Y", "%d{s}%m{s}%Y")),
    (rf"\d{{1,2}}(?P<s>{_SEP})\d{{1,2}}(?P=s)\d{{2}}",
     ("%m{s}%d{s}%y", "%d{s}%m{s}%y", "%y{s}%m{s}%d")),
    (r"\d{8}", ("%Y%m%d",)),
    (r"\d{1,2}(?P<s>[- ])[a-z]{3,9}\.?(?P=s)\d{4}", ("%d{s}%b{s}%Y",)),
    (r"\d{1,2}(?P<s>[- ])[a-z]{3,9}\.?(?P=s)\d{2}", ("%d{s}%b{s}%y",)),
    (r"\d{4}-[a-z]{3}-\d{1,2}", ("%Y-%b-%d",)),
    (r"[a-z]{3,9}\.? \d{1,2}, \d{4}", ("%b %d, %Y",)),
    (r"[a-z]{3,9}\.? \d{1,2} \d{4}", ("%b %d %Y",)),
)
_CLOCK_SHAPES: tuple[tuple[str, tuple[str, ...]], ...] = (
    (r"\d{1,2}:\d{1,2}:\d{1,2}(?P<f>[.,])\d{1,9}", ("%H:%M:%S{f}%f",)),
    (r"\d{1,2}:\d{1,2}:\d{1,2}", ("%H:%M:%S",)),
    (r"\d{1,2}:\d{1,2}", ("%H:%M",)),
    (r"\d{1,2}\.\d{2}\.\d{2}", ("%H.%M.%S",)),
    (r"\d{6}", ("%H%M%S",)),
    (r"\d{4}", ("%H%M",)),
)
_AMPM = r"(?P<ampm>\s?[ap]\.?m\.?)"
_ZONE = r"(?P<zone>\s?(?:z|[+-]\d{2}(?::?\d{2})?|utc|gmt))"
_WEEKDAY = r"(?P<wd>[a-z]{3,9},? )"
_NUMBER = re.compile(r"^[+-]?\d+(?:\.\d+)?$")
_COMPACT = {8: "%Y%m%d", 10: "%Y%m%d%H", 12: "%Y%m%d%H%M", 14: "%Y%m%d%H%M%S"}


def _compile_shapes() -> list[tuple[re.Pattern[str], Callable[[re.Match[str]], list[str]]]]:
    shapes: list[tuple[re.Pattern[str], Callable[[re.Match[str]], list[str]]]] = []

    def candidates(date_fmts: tuple[str, ...], clock_fmts: tuple[str, ...] | None,
                   ) -> Callable[[re.Match[str]], list[str]]:
        def build(m: re.Match[str]) -> list[str]:
            g = m.groupdict()
            out = []
            for d in date_fmts or ("",):
                date = d.format(s=g.get("s") or "")
                if g.get("wd"):
                    date = ("%a, " if "," in g["wd"] else "%a ") + date
                if clock_fmts is None:
                    out.append(date + _zone_fmt(g))
                    continue
                for c in clock_fmts:
                    clock = c.format(f=g.get("f") or ".")
                    if g.get("ampm"):
                        clock = clock.replace("%H", "%I") + (" %p" if g["ampm"][0].isspace()
                                                             else "%p")
                    sep = g.get("sep") or ""
                    sep = " " if sep.isspace() else sep
                    out.append((date + sep if date else "") + clock + _zone_fmt(g))
            return out
        return build

    for d_re, d_fmts in _DATE_SHAPES:
        shapes.append((re.compile(rf"{_WEEKDAY}?{d_re}{_ZONE}?\Z", re.IGNORECASE),
                       candidates(d_fmts, None)))
        for c_re, c_fmts in _CLOCK_SHAPES:
            full = rf"{_WEEKDAY}?{d_re}(?P<sep>T|\s+){c_re}{_AMPM}?{_ZONE}?\Z"
            shapes.append((re.compile(full, re.IGNORECASE), candidates(d_fmts, c_fmts)))
    for c_re, c_fmts in _CLOCK_SHAPES[:4]:  # a clock alone (a Time column beside a Date)
        shapes.append((re.compile(rf"{c_re}{_AMPM}?{_ZONE}?\Z", re.IGNORECASE),
                       candidates((), c_fmts)))
    return shapes


def _zone_fmt(g: dict[str, str | None]) -> str:
    z = g.get("zone")
    if not z:
        return ""
    lead = " " if z[0].isspace() else ""
    return lead + ("%Z" if z.strip().lower() in ("utc", "gmt") else "%z")


_SHAPES = _compile_shapes()


def _candidates(value: str, allow_numbers: bool) -> list[str]:
    if _NUMBER.match(value):
        if not allow_numbers:
            return []
        out = []
        digits = value.lstrip("+-")
        if digits.isdigit() and len(digits) in _COMPACT and not value.startswith(("+", "-")):
            out.append(_COMPACT[len(digits)])
        x = float(value)
        out += [name for name, (lo, hi) in _EPOCH_RANGES.items() if lo <= x <= hi]
        return out
    out = []
    for regex, build in _SHAPES:
        m = regex.match(value)
        if m:
            out += [f for f in build(m) if f not in out]
    return out


def _misfit(fmt: str, values: Iterable[str]) -> str | None:
    """The first value ``fmt`` does not read (None: it reads them all)."""
    parser = TimeParser(fmt)
    for v in values:
        try:
            parser(v)
        except EventError:
            return v
    return None


def _all_candidates(values: Sequence[str], allow_numbers: bool) -> list[str]:
    """Formats suggested by the shapes of ``values`` (one value of each shape)."""
    shapes: dict[str, str] = {}
    for v in values:
        shapes.setdefault(re.sub(r"\d", "9", v), v)
        if len(shapes) >= 20:
            break
    candidates: list[str] = []
    for v in shapes.values():
        candidates += [f for f in _candidates(v, allow_numbers) if f not in candidates]
    return candidates


def detect_formats(values: Sequence[str], *, allow_numbers: bool = True) -> tuple[str, ...]:
    """Every format (strptime syntax or ``epoch_*``) that parses all of ``values``.

    ``values`` are non-empty samples of one column. One result: the format is decided; two
    or more: the sample does not tell them apart (month/day order, say); none: the values do
    not share a known format. With ``allow_numbers=False`` plain numbers are never times (for
    columns picked by their values, not by their name).

    Examples
    --------
    >>> detect_formats(["2024-01-01T00:00:00Z", "2024-01-01T01:00:00.5+01:00"])
    ('%Y-%m-%dT%H:%M:%S.%f%z',)
    >>> detect_formats(["1990/1/1 0:00", "1990/1/1 1:00"])
    ('%Y/%m/%d %H:%M',)
    >>> detect_formats(["20110301 090100"])
    ('%Y%m%d %H%M%S',)
    >>> detect_formats(["18.00.00", "19.00.00"])
    ('%H.%M.%S',)
    >>> detect_formats(["3/4/2020 1:05 PM"])
    ('%m/%d/%Y %I:%M %p', '%d/%m/%Y %I:%M %p')
    >>> detect_formats(["12.5", "13.1"])
    ()
    """
    values = [v.strip() for v in values if v and v.strip()]
    if not values:
        return ()
    return tuple(f for f in _all_candidates(values, allow_numbers)
                 if _misfit(f, values) is None)


def near_miss(values: Sequence[str], *, allow_numbers: bool = True) -> tuple[str, str] | None:
    """``(format, value)`` when one format reads most of ``values`` but not ``value``: a
    column of times with a stray entry, which the user may read with ``--time-format``.

    Examples
    --------
    >>> near_miss(["2024-01-01", "2024-01-02", "yesterday"])
    ('%Y-%m-%d', 'yesterday')
    >>> near_miss(["a", "b"]) is None
    True
    """
    values = [v.strip() for v in values if v and v.strip()]
    best: tuple[int, str, str] | None = None
    for f in _all_candidates(values, allow_numbers):
        parser = TimeParser(f)
        bad = []
        for v in values:
            try:
                parser(v)
            except EventError:
                bad.append(v)
        if bad and 2 * len(bad) <= len(values) and (best is None or len(bad) < best[0]):
            best = (len(bad), f, bad[0])
    return None if best is None else (best[1], best[2])


def category(fmt: str) -> str:
    """``"datetime"``, ``"date"`` or ``"clock"`` (time of day only) of a format.

    Examples
    --------
    >>> category("%d/%m/%Y"), category("%H:%M:%S"), category("epoch_ms")
    ('date', 'clock', 'datetime')
    """
    if fmt in EPOCH_FORMATS:
        return "datetime"
    part = _Part(_tokens(fmt))
    if part.has_date:
        return "datetime" if part.has_time else "date"
    return "clock"
