"""Command-line options of the file reader, shared by ``streamseq backtest`` and ``replay``.

Examples
--------
>>> import argparse
>>> p = argparse.ArgumentParser()
>>> add_layout_args(p)
>>> a = p.parse_args(["--time-col", "Date+Time", "--time-format", "%d/%m/%Y %H.%M.%S",
...                   "--delimiter", ";", "--na-values=-200", "--na-values", "CO(GT)=-999,?"])
>>> layout = layout_from_args(a)
>>> layout.time_col, layout.delimiter, layout.na_values
('Date+Time', ';', ((None, '-200'), ('CO(GT)', '-999'), ('CO(GT)', '?')))
"""

from __future__ import annotations

import argparse

from streamseq.exceptions import UsageError
from streamseq.io.files import FileLayout
from streamseq.io.times import TimeParser, resolve_zone

__all__ = ["add_layout_args", "layout_from_args", "names"]

DELIMITER_NAMES = {",": ",", ";": ";", "|": "|", "\t": "\t", "\\t": "\t", "tab": "\t",
                   "comma": ",", "semicolon": ";", "pipe": "|"}


def names(text: str) -> list[str]:
    """A comma-separated list of column names (an argparse ``type``)."""
    out = [t.strip() for t in text.split(",") if t.strip()]
    if not out:
        raise argparse.ArgumentTypeError("expected a comma-separated list of names")
    return out


def add_layout_args(p: argparse.ArgumentParser) -> None:
    """The reader's options: columns, times, dialect and missing markers."""
    g = p.add_argument_group("input files (detected from the content when not given)")
    g.add_argument("--key-col", help="key column (default: key/sensor_id/symbol/station, "
                   "else the file name)")
    g.add_argument("--time-col", metavar="NAME|DATE+CLOCK",
                   help="event time column, or a date and a clock column joined by '+' "
                   "(default: found by name, else by values)")
    g.add_argument("--date-col", help="date column; its clock is --time-col, or a column "
                   "named like a time that holds times of day")
    g.add_argument("--time-format", metavar="FORMAT",
                   help="strptime format of the times (e.g. '%%d/%%m/%%Y %%H:%%M'), or "
                   "epoch_s, epoch_ms, epoch_us, epoch_ns (default: detected when the data "
                   "decides it)")
    g.add_argument("--tz", "--naive-tz", dest="tz", metavar="ZONE",
                   help="zone of times without one: IANA name, UTC or +HH:MM (default UTC; "
                   "*_ny columns: America/New_York)")
    g.add_argument("--target", type=names, action="extend",
                   help="forecast column(s), comma-separated or repeated (default: every "
                   "numeric column; for price files the price fields)")
    g.add_argument("--features", type=names, action="extend",
                   help="extra input column(s), not forecast")
    g.add_argument("--kind", choices=["sensor", "price"], help="event kind (default: price "
                   "when a price/close column exists)")
    g.add_argument("--delimiter", metavar="CHAR",
                   help="field separator: ',' ';' tab '|' (default: detected)")
    g.add_argument("--no-header", action="store_true",
                   help="the first row is data, not column names (default: detected)")
    g.add_argument("--columns", type=names, metavar="A,B,...",
                   help="column names (files without a header; replaces a header if any)")
    g.add_argument("--decimal", choices=[".", ","],
                   help="decimal mark (default: ',' when numbers are written 2,6 in a file "
                   "not separated by commas)")
    g.add_argument("--na-values", action="append", metavar="[COL=]V1,V2",
                   help="extra missing-value markers, for every column or for COL "
                   "(repeatable; write --na-values=-200 for a negative number)")
    g.add_argument("--limit", type=int, help="read at most this many rows per file")


def _na_values(specs: list[str] | None) -> tuple[tuple[str | None, str], ...]:
    out: list[tuple[str | None, str]] = []
    for spec in specs or []:
        col, eq, markers = spec.partition("=")
        column: str | None = col.strip() if eq else None
        text = markers if eq else spec
        if eq and not column:
            raise UsageError(f"--na-values {spec!r}: the column name before '=' is empty")
        items = [m.strip() for m in text.split(",")]
        if not any(items):
            raise UsageError(f"--na-values {spec!r} names no marker")
        out += [(column, m) for m in items if m]
    return tuple(out)


def layout_from_args(a: argparse.Namespace) -> FileLayout:
    """A :class:`FileLayout` from parsed options, checked (:class:`UsageError` if not)."""
    values: tuple[str, ...] | None = None
    extra = getattr(a, "values", None) or []
    if a.target or a.features or extra:
        values = tuple(dict.fromkeys([*(a.target or []), *extra, *(a.features or [])]))
    if a.tz:
        resolve_zone(a.tz)
    if a.time_format:
        TimeParser(a.time_format)
    delimiter = None
    if a.delimiter is not None:
        delimiter = DELIMITER_NAMES.get(a.delimiter, a.delimiter if len(a.delimiter) == 1
                                        else None)
        if delimiter is None:
            raise UsageError(f"--delimiter {a.delimiter!r}: give one character, or tab")
    if a.time_col is not None and "+" in a.time_col and a.date_col:
        raise UsageError("give either --time-col DATE+CLOCK or --date-col DATE, not both")
    if a.limit is not None and a.limit < 1:
        raise UsageError("--limit must be at least 1")
    return FileLayout(key_col=a.key_col, time_col=a.time_col, date_col=a.date_col,
                      time_format=a.time_format, value_cols=values, kind=a.kind,
                      naive_tz=a.tz, limit_per_file=a.limit, delimiter=delimiter,
                      header=False if a.no_header else None,
                      columns=tuple(a.columns) if a.columns else None, decimal=a.decimal,
                      na_values=_na_values(a.na_values))
