"""Which columns of a table are the key, the event time and the values.

The time comes from (first that applies):

1. ``--time-col NAME`` (or ``--time-col DATE+CLOCK``, or ``--date-col DATE`` with an optional
   ``--time-col CLOCK``), read with ``--time-format`` or a detected format;
2. a column named like a time (``ts``, ``timestamp``, ``time``, ``date``, ``datetime``, ...,
   then any name with a word ``time``/``date``/``ts``/``epoch``, then any name containing
   ``time`` or ``date``) whose values parse as times; a date column beside a clock column
   (``Date`` + ``Time``) is read as one time;
3. ``year, month, day`` (and ``hour, minute, second``) columns;
4. any column whose values parse as times (plain numbers are epoch times only in a column
   named like a time).

A format is taken only when it parses every sampled value and no other format does
(:func:`streamseq.io.times.detect_formats`); when month/day order stays open the reader
looks further into the file (:class:`TimeSource` keeps the candidates), and otherwise stops
with a message that names the column, a sample value and the flag to pass.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from streamseq.events.schema import PRICE_FIELDS
from streamseq.io.exceptions import LayoutError
from streamseq.io.sniff import is_number
from streamseq.io.times import TimeParser, category, detect_formats, near_miss

__all__ = ["Columns", "TimeSource", "DEFAULT_NA", "resolve_columns", "time_format_error"]

KEY_CANDIDATES = ("key", "sensor_id", "symbol", "station")
TIME_CANDIDATES = ("ts", "timestamp", "time", "date", "datetime", "event_time",
                   "timestamp_utc", "timestamp_ny")
TIME_WORDS = frozenset(("time", "date", "timestamp", "datetime", "ts", "epoch", "dt"))
PARTS = ("year", "month", "day", "hour", "minute", "second")
INDEX_LIKE = frozenset(("no", "index", "id", "unnamed: 0", ""))
PRICE_HINTS = ("price", "close")
# Missing-value markers of every file (compared case-insensitively, after stripping).
DEFAULT_NA = frozenset(("", "na", "n/a", "nan", "null", "none", "-", "?", "#n/a", "nat",
                        "<na>", "missing"))
PARTS_FORMAT = "%Y-%m-%d %H:%M:%S"
FORMAT_HELP = ("pass --time-format (strptime syntax, e.g. '%Y-%m-%d %H:%M:%S', or "
               "epoch_s/epoch_ms/epoch_us/epoch_ns)")


@dataclass(frozen=True)
class TimeSource:
    """Where a row's event time is and how it is written.

    Attributes
    ----------
    names
        One column, a date and a clock column, or year..second part columns.
    indices
        Their positions in the row.
    formats
        Candidate formats; exactly one once the time is decided.
    how
        How the columns were chosen (for the log).
    """

    names: tuple[str, ...]
    indices: tuple[int, ...]
    formats: tuple[str, ...]
    how: str

    @property
    def shape(self) -> str:
        """``"single"``, ``"pair"`` (date + clock) or ``"parts"``."""
        if len(self.indices) == 1:
            return "single"
        return "pair" if len(self.indices) == 2 else "parts"

    @property
    def label(self) -> str:
        return "+".join(self.names)

    def text(self, row: Sequence[str]) -> str:
        """The time of ``row`` as one string (for detection and messages)."""
        cells = [row[i].strip() if i < len(row) else "" for i in self.indices]
        if self.shape == "parts":
            cells += ["0"] * (6 - len(cells))
            return f"{cells[0]}-{cells[1]}-{cells[2]} {cells[3]}:{cells[4]}:{cells[5]}"
        return " ".join(cells)

    def reader(self, naive_tz: str) -> Callable[[Sequence[str]], int]:
        """``row -> epoch ms`` (raises ``EventError`` for a bad or missing time)."""
        if len(self.formats) != 1:
            raise LayoutError(f"time format of {self.label} is not decided: {self.formats}")
        parser = TimeParser(self.formats[0], naive_tz)
        i = self.indices[0]
        if self.shape == "single":
            parse = parser.parse
            return lambda row: parse(row[i])
        if self.shape == "pair":
            j = self.indices[1]
            parse_parts = parser.parse_parts
            return lambda row: parse_parts(row[i], row[j])
        text, parse_parts = self.text, parser.parse_parts
        return lambda row: parse_parts(*text(row).split(" "))


@dataclass(frozen=True)
class Columns:
    """The resolved layout of one table.

    Attributes
    ----------
    key
        Position of the key column, or None (the file name is the key).
    time
        Where the event time is.
    values
        ``(name, position)`` of each value column, in order.
    na
        Per value column: extra missing markers as text (lower case) and as numbers.
    kind, naive_tz
        Event kind and the zone of times without one.
    """

    key: int | None
    time: TimeSource
    values: tuple[tuple[str, int], ...]
    kind: str
    naive_tz: str
    na: dict[str, tuple[frozenset[str], frozenset[float]]] = field(default_factory=dict)


def _words(name: str) -> set[str]:
    spaced = re.sub(r"([a-z])([A-Z])", r"\1 \2", name)
    return {w for w in re.split(r"[^a-z0-9]+", spaced.lower()) if w}


def _time_names(names: Sequence[str], skip: set[str]) -> list[str]:
    """Column names that suggest a time, most telling first."""
    lower = {n.lower(): n for n in names if n not in skip}
    exact = [lower[c] for c in TIME_CANDIDATES if c in lower]
    strong = [n for n in names if n not in skip and n not in exact and _words(n) & TIME_WORDS]
    weak = [n for n in names if n not in skip and n not in exact and n not in strong
            and ("time" in n.lower() or "date" in n.lower())]
    return exact + strong + weak


def _sample(rows: Sequence[Sequence[str]], i: int, na: frozenset[str]) -> list[str]:
    out = []
    for r in rows:
        if i < len(r):
            s = r[i].strip()
            if s.lower() not in na:
                out.append(s)
    return out


def time_format_error(path: Path, label: str, values: Sequence[str], formats: Sequence[str],
                  ) -> LayoutError:
    sample = values[0] if values else ""
    if len(formats) > 1:
        options = " or ".join(f"'{f}'" for f in formats)
        return LayoutError(
            f"{path.name}: the times of column {label!r} (e.g. {sample!r}) read as {options} "
            f"and no value in the file decides which; pass --time-format {options}")
    return LayoutError(f"{path.name}: column {label!r} does not hold times in a known format "
                       f"(e.g. {sample!r}); {FORMAT_HELP}")


class _Finder:
    """Finds the time source of one table (see the module docstring for the order)."""

    def __init__(self, path: Path, names: Sequence[str], sample: Sequence[Sequence[str]],
                 time_format: str | None, skip: set[str]) -> None:
        self.path, self.names, self.sample = path, list(names), sample
        self.index = {n: i for i, n in enumerate(names)}
        self.time_format = time_format
        self.skip = skip
        # columns that did not read as times: (name, sample, near miss, named like a time)
        self.failed: list[tuple[str, list[str], tuple[str, str] | None, bool]] = []

    def values(self, name: str) -> list[str]:
        return _sample(self.sample, self.index[name], DEFAULT_NA)[:1000]

    def formats(self, values: Sequence[str], allow_numbers: bool) -> tuple[str, ...]:
        """Candidate formats of ``values``: detected, or the given --time-format if it reads
        at least one of them."""
        if self.time_format is None:
            return detect_formats(values, allow_numbers=allow_numbers)
        parse = TimeParser(self.time_format).parse
        for v in values:
            try:
                parse(v)
            except ValueError:
                continue
            return (self.time_format,)
        return ()

    def reject(self, label: str, values: Sequence[str], formats: Sequence[str],
               near: tuple[str, str] | None = None) -> LayoutError:
        sample = values[0] if values else ""
        if self.time_format is not None:
            return LayoutError(f"{self.path.name}: --time-format {self.time_format!r} reads none "
                               f"of the times of column {label!r} (e.g. {sample!r})")
        if near is not None:
            return LayoutError(f"{self.path.name}: column {label!r} holds times written "
                               f"'{near[0]}' but also {near[1]!r}, which no format reads; pass "
                               f"--time-format '{near[0]}' to read it (rows that do not fit "
                               "are counted as bad_time)")
        return time_format_error(self.path, label, values, formats)

    def source(self, names: Sequence[str], formats: tuple[str, ...], how: str) -> TimeSource:
        return TimeSource(tuple(names), tuple(self.index[n] for n in names), formats, how)

    def classify(self, names: Sequence[str], allow_numbers: bool
                 ) -> dict[str, list[tuple[str, tuple[str, ...]]]]:
        """Columns by the category of their detected format (datetime, date, clock)."""
        found: dict[str, list[tuple[str, tuple[str, ...]]]] = {"datetime": [], "date": [],
                                                               "clock": []}
        for n in names:
            vals = self.values(n)
            if not vals:
                continue
            fmts = self.formats(vals, allow_numbers)
            if not fmts:
                near = (near_miss(vals, allow_numbers=allow_numbers)
                        if self.time_format is None else None)
                if allow_numbers or near:
                    self.failed.append((n, vals, near, allow_numbers))
                continue
            found[category(fmts[0])].append((n, fmts))
        return found

    def pick(self, found: dict[str, list[tuple[str, tuple[str, ...]]]], how: str
             ) -> TimeSource | None:
        if found["datetime"]:
            n, fmts = found["datetime"][0]
            return self.source([n], fmts, how)
        if found["date"] and found["clock"]:
            (d, _), (c, _) = found["date"][0], found["clock"][0]
            return self.pair(d, c, how)
        if found["date"]:
            n, fmts = found["date"][0]
            return self.source([n], fmts, how)
        return None

    def pair(self, date: str, clock: str, how: str) -> TimeSource:
        i, j = self.index[date], self.index[clock]
        texts = [f"{r[i].strip()} {r[j].strip()}" for r in self.sample
                 if max(i, j) < len(r) and r[i].strip().lower() not in DEFAULT_NA
                 and r[j].strip().lower() not in DEFAULT_NA][:1000]
        formats = self.formats(texts, allow_numbers=False)
        if not formats:
            raise self.reject(f"{date}+{clock}", texts, formats)
        return self.source([date, clock], formats, how)

    def named(self, spec: str, date_col: str | None) -> TimeSource:
        """The columns the user named."""
        date, _, clock = (spec.partition("+") if "+" in spec and spec not in self.index
                          else ("", "", spec))
        if date_col:
            date, clock = date_col, spec
        for n in (date, clock):
            if n and n not in self.index:
                raise LayoutError(f"{self.path.name}: no column {n!r} (columns: "
                                  f"{', '.join(self.names)})")
        if date and clock:
            return self.pair(date, clock, "as named")
        vals = self.values(clock)
        formats = self.formats(vals, allow_numbers=True)
        if not formats:
            raise self.reject(clock, vals, formats)
        if category(formats[0]) == "clock":
            raise LayoutError(f"{self.path.name}: column {clock!r} holds times of day only "
                              f"(e.g. {vals[0]!r}); name the date column too: --time-col "
                              f"DATE+{clock}")
        return self.source([clock], formats, "as named")

    def date_only(self, date_col: str) -> TimeSource:
        """``--date-col`` without ``--time-col``: beside a clock column if there is one."""
        if date_col not in self.index:
            raise LayoutError(f"{self.path.name}: no column {date_col!r} (columns: "
                              f"{', '.join(self.names)})")
        others = _time_names(self.names, self.skip | {date_col})
        clocks = self.classify(others, allow_numbers=False)["clock"]
        if clocks:
            return self.pair(date_col, clocks[0][0], "as named, with the clock column by name")
        vals = self.values(date_col)
        formats = self.formats(vals, allow_numbers=True)
        if not formats:
            raise self.reject(date_col, vals, formats)
        return self.source([date_col], formats, "as named")

    def find(self) -> TimeSource:
        named = _time_names(self.names, self.skip)
        src = self.pick(self.classify(named, allow_numbers=True), "by its name")
        if src is not None:
            return src
        lower = {n.lower(): n for n in self.names}
        if all(p in lower for p in PARTS[:3]):
            parts = [lower[p] for p in PARTS if p in lower]
            k = len(parts)
            if [p.lower() for p in parts] == list(PARTS[:k]):
                return self.source(parts, (PARTS_FORMAT,), "from its year/month/day columns")
        rest = [n for n in self.names if n not in self.skip and n not in named]
        src = self.pick(self.classify(rest, allow_numbers=False), "by its values")
        if src is not None:
            return src
        named_failed = [f for f in self.failed if f[3]]
        if named_failed:
            n, vals, near, _ = named_failed[0]
            raise self.reject(n, vals, (), near)
        columns = ", ".join(self.names)
        if self.failed:
            n, vals, near, _ = self.failed[0]
            assert near is not None
            raise LayoutError(f"{self.path.name}: no time column found (columns: {columns}); "
                              f"column {n!r} holds times written '{near[0]}' except "
                              f"{near[1]!r}: pass --time-col {n} --time-format '{near[0]}'")
        raise LayoutError(f"{self.path.name}: no time column found (columns: {columns}); pass "
                          "--time-col NAME, or --time-col DATE+CLOCK for a date and a clock in "
                          "two columns")


def _na_sets(path: Path, names: Sequence[str], na_values: Sequence[tuple[str | None, str]],
             ) -> dict[str | None, tuple[frozenset[str], frozenset[float]]]:
    """Extra missing markers per column (``None``: every column), as text and as numbers."""
    texts: dict[str | None, set[str]] = {}
    numbers: dict[str | None, set[float]] = {}
    for col, marker in na_values:
        if col is not None and col not in names:
            raise LayoutError(f"{path.name}: --na-values names column {col!r}, which the file "
                              f"does not have (columns: {', '.join(names)})")
        m = marker.strip()
        texts.setdefault(col, set()).add(m.lower())
        if is_number(m) or is_number(m, ","):
            numbers.setdefault(col, set()).add(float(m.replace(",", ".")))
    cols: set[str | None] = set(texts) | set(numbers)
    return {c: (frozenset(texts.get(c, ())), frozenset(numbers.get(c, ()))) for c in cols}


def resolve_columns(path: Path, names: Sequence[str], sample: Sequence[Sequence[str]], *,
                    key_col: str | None = None, time_col: str | None = None,
                    date_col: str | None = None, time_format: str | None = None,
                    value_cols: Sequence[str] | None = None, kind: str | None = None,
                    naive_tz: str | None = None, decimal: str = ".",
                    na_values: Sequence[tuple[str | None, str]] = ()) -> Columns:
    """The key, time and value columns of a table with header ``names``.

    ``sample`` holds the first rows under the header. Raises :class:`LayoutError` when a
    named column is absent, no time column is found or its format is not decided by the
    sample (candidates that only the rest of the file can tell apart are kept in
    ``Columns.time.formats``).

    Examples
    --------
    >>> from pathlib import Path
    >>> rows = [["1/13/2010", "0:00", "5", "a"], ["1/13/2010", "1:00", "6", "b"]]
    >>> c = resolve_columns(Path("x.csv"), ["Date", "Time", "load", "note"], rows)
    >>> c.time.label, c.time.formats, c.values
    ('Date+Time', ('%m/%d/%Y %H:%M',), (('load', 2),))
    """
    index = {n: i for i, n in enumerate(names)}
    if key_col is not None and key_col not in index:
        raise LayoutError(f"{path.name}: no key column {key_col!r} (columns: {', '.join(names)})")
    lower = {n.lower(): n for n in names}
    key = key_col or next((lower[c] for c in KEY_CANDIDATES if c in lower), None)
    value_set = set(value_cols or ())
    skip = {n for n in (key,) if n} | value_set
    finder = _Finder(path, names, sample, time_format, skip)
    if date_col:
        time = finder.named(time_col, date_col) if time_col else finder.date_only(date_col)
    elif time_col:
        time = finder.named(time_col, None)
    else:
        time = finder.find()
    tz = naive_tz or ("America/New_York" if time.names[-1].lower().endswith("_ny") else "UTC")
    na = _na_sets(path, names, na_values)
    na_all_text, na_all_num = na.get(None, (frozenset(), frozenset()))

    def markers(name: str) -> tuple[frozenset[str], frozenset[float]]:
        t, n = na.get(name, (frozenset(), frozenset()))
        return DEFAULT_NA | na_all_text | t, na_all_num | n

    if value_cols:
        missing = [c for c in value_cols if c not in index]
        if missing:
            raise LayoutError(f"{path.name}: value columns {missing} not in the file (columns: "
                              f"{', '.join(names)})")
        values = list(value_cols)
    else:
        taken = {key, *time.names}
        numeric = [n for n in names if n not in taken and n.lower() not in INDEX_LIKE
                   and _is_numeric(sample, index[n], markers(n), decimal)]
        kind_guess = kind or _kind(names)
        price = [n for n in numeric if n.lower() in PRICE_FIELDS]
        values = price if kind_guess == "price" and price else numeric
        if not values:
            raise LayoutError(f"{path.name}: no numeric value column found (columns: "
                              f"{', '.join(names)}); pass --target NAME")
    return Columns(key=index[key] if key else None, time=time,
                   values=tuple((n, index[n]) for n in values), kind=kind or _kind(names),
                   naive_tz=tz, na={n: markers(n) for n in values})


def _kind(names: Sequence[str]) -> str:
    return "price" if any(h.lower() in PRICE_HINTS or h.lower().endswith("_close")
                          for h in names) else "sensor"


def _is_numeric(sample: Sequence[Sequence[str]], i: int,
                markers: tuple[frozenset[str], frozenset[float]], decimal: str) -> bool:
    """Whether every sampled cell of column ``i`` that is not a missing marker is a number."""
    comma = decimal == ","
    try:  # the common case in one pass: every cell a plain number
        xs = [float(r[i].replace(",", ".") if comma else r[i]) for r in sample]
        if xs and all(x == x for x in xs):
            return True
    except (ValueError, IndexError):
        pass
    cells = _sample(sample, i, markers[0])
    return bool(cells) and all(is_number(c, decimal) for c in cells)
