"""Read recorded streams from tables (CSV and its dialects, gzip or not) and JSON lines.

The same reader and options serve ``streamseq backtest`` and ``streamseq replay``. What a
file holds is read from its content, never its suffix (:mod:`streamseq.io.sniff`): the
delimiter (``,`` ``;`` tab ``|``), whether there is a header, the decimal mark; JSON lines
are events in the wire format. Columns (:mod:`streamseq.io.columns`):

* key: ``--key-col``; else the first of ``key``, ``sensor_id``, ``symbol``, ``station``
  present; else the file name (``ETTh2.csv`` -> key ``ETTh2``).
* time: ``--time-col`` / ``--date-col``; else found by name or by its values, with a format
  that the data decides (:mod:`streamseq.io.times`); ``--time-format`` to say it.
* values: ``--target``/``--features`` if given; else, for price files, the standard price
  fields present (``price, size`` or ``open..volume``); else every numeric column.
* missing readings: empty cells and the usual markers (``NA``, ``NaN``, ``null``, ``?``,
  ...), plus ``--na-values`` (for every column or one column).

Several files are interleaved by event time, the way a live feed would deliver them; each
file's own order is kept, so per-key order is preserved. Rows that cannot become events are
counted by reason in :class:`RowErrors`; a file whose layout cannot be read raises
:class:`~streamseq.io.exceptions.LayoutError` before any event is read.
"""

from __future__ import annotations

import csv
import heapq
import itertools
import logging
import math
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from streamseq.events.decode import EventDecoder, check_key
from streamseq.events.errors import EventError
from streamseq.events.schema import Event
from streamseq.exceptions import UsageError
from streamseq.io.columns import Columns, TimeSource, resolve_columns, time_format_error
from streamseq.io.exceptions import LayoutError
from streamseq.io.sniff import Dialect, content_kind, open_text, read_head, sniff_dialect
from streamseq.io.times import TimeParser

__all__ = ["FileLayout", "RowErrors", "SUFFIXES", "expand_paths", "iter_file", "read_events"]

log = logging.getLogger(__name__)

_TABLES = (".csv", ".tsv", ".txt", ".dat", ".psv", ".tab")
SUFFIXES = (*_TABLES, *(s + ".gz" for s in _TABLES), ".jsonl", ".jsonl.gz", ".json.gz")
SAMPLE_ROWS = 1000
MAX_KEY_LEN = 256
_INFS = frozenset((math.inf, -math.inf))


@dataclass(frozen=True)
class FileLayout:
    """How the files are written and how their columns map onto events. ``None``: detect.

    Attributes
    ----------
    key_col, time_col, date_col
        Key column; time column (``DATE+CLOCK`` for two columns); date column (with
        ``time_col`` as its clock, if given).
    time_format
        strptime format or ``epoch_s``/``epoch_ms``/``epoch_us``/``epoch_ns``.
    value_cols
        Value columns, in order.
    kind
        ``"sensor"`` or ``"price"``.
    naive_tz
        Zone of times without one (IANA name, ``UTC`` or ``+HH:MM``).
    limit_per_file
        Read at most this many events of each file.
    delimiter, header, decimal
        Table dialect; ``header=False`` for files without a header row.
    columns
        Column names (for files without a header; they replace a header if there is one).
    na_values
        Extra missing markers: ``(None, "-200")`` for every column, ``("CO", "-200")`` for one.
    """

    key_col: str | None = None
    time_col: str | None = None
    value_cols: tuple[str, ...] | None = None
    kind: str | None = None
    naive_tz: str | None = None
    limit_per_file: int | None = None
    date_col: str | None = None
    time_format: str | None = None
    delimiter: str | None = None
    header: bool | None = None
    columns: tuple[str, ...] | None = None
    decimal: str | None = None
    na_values: tuple[tuple[str | None, str], ...] = ()


@dataclass
class RowErrors:
    """Bad rows met while reading: counted by reason, first few kept for the report."""

    counts: Counter[str] = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)

    def add(self, err: EventError, where: str) -> None:
        self.counts[err.reason] += 1
        if len(self.examples) < 20:
            self.examples.append(f"{where}: {err}")

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def summary(self, examples: int = 3) -> str:
        """One line: counts by reason and the first examples.

        Examples
        --------
        >>> e = RowErrors(); e.add(EventError("bad_time", "x"), "a.csv:2"); e.summary()
        '1 rows skipped (bad_time 1); first: a.csv:2: bad_time: x'
        """
        counts = ", ".join(f"{r} {n:,}" for r, n in self.counts.most_common())
        first = " | ".join(self.examples[:examples])
        return f"{self.total:,} rows skipped ({counts})" + (f"; first: {first}" if first else "")


def expand_paths(paths: Iterable[str | Path]) -> list[Path]:
    """Files named, and the tables and JSON-lines files inside folders named, sorted.

    Inside folders, files with a recorded-stream suffix (:data:`SUFFIXES`) whose content is
    a table or JSON lines are taken; text files (a README, prose) are left out. A path that
    does not exist is a :class:`~streamseq.exceptions.UsageError`.
    """
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            for f in sorted(f for f in p.rglob("*") if f.is_file()
                            and f.name.lower().endswith(SUFFIXES)):
                kind = content_kind(f)
                if kind in ("table", "jsonl"):
                    out.append(f)
                else:
                    log.debug("skipping %s: %s, not a table", f, kind)
        elif p.exists():
            out.append(p)
        else:
            raise UsageError(f"no such file or folder: {p}")
    return out


def _stem(path: Path) -> str:
    name = path.name
    for suffix in sorted(SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def _names(header: Sequence[str] | None, layout: FileLayout, width: int) -> list[str]:
    """Column names: ``--columns``, else the header, else ``col1..colN``; blanks and
    repeats made unique."""
    n = max(width, len(header or ()), len(layout.columns or ()))
    given = list(layout.columns or header or ())
    names = [given[i].strip() if i < len(given) else "" for i in range(n)]
    seen: Counter[str] = Counter()
    out = []
    for i, name in enumerate(names):
        name = name or f"col{i + 1}"
        seen[name] += 1
        out.append(name if seen[name] == 1 else f"{name}.{seen[name] - 1}")
    return out


def _number_parser(name: str, na_text: frozenset[str], na_numbers: frozenset[float],
                   decimal: str) -> Callable[[str], float | None]:
    """``cell -> float | None`` for one value column (None: a missing reading)."""
    comma = decimal == ","

    def parse(cell: str) -> float | None:
        try:
            x = float(cell.replace(",", ".") if comma else cell)
        except ValueError:
            if cell.strip().lower() in na_text:
                return None
            raise EventError("non_numeric",
                             f"value {name!r} is not a number: {cell[:40]!r}") from None
        if x != x or x in na_numbers:
            return None
        if x in _INFS:
            raise EventError("non_finite", f"value {name!r} is {x}")
        return x
    return parse


def _values_parser(columns: Columns, decimal: str
                   ) -> Callable[[Sequence[str]], dict[str, float | None]]:
    """``row -> {name: value}``. Rows of plain finite numbers take one fast path; a row with
    a missing marker, a sentinel or a bad cell is parsed cell by cell."""
    names = [name for name, _ in columns.values]
    index = [i for _, i in columns.values]
    cells = [(name, i, _number_parser(name, *columns.na[name], decimal))
             for name, i in columns.values]
    sentinels = frozenset().union(*(columns.na[n][1] for n in names))
    comma = decimal == ","

    def slow(row: Sequence[str]) -> dict[str, float | None]:
        values = {name: parse(row[i]) for name, i, parse in cells}
        if all(v is None for v in values.values()):
            raise EventError("no_values", "every value of the row is missing")
        return values

    def parse(row: Sequence[str]) -> dict[str, float | None]:
        try:
            xs = [float(row[i].replace(",", ".")) for i in index] if comma else [
                float(row[i]) for i in index]
        except ValueError:
            return slow(row)
        total = sum(xs)
        if total - total != 0 or (sentinels and not sentinels.isdisjoint(xs)):
            return slow(row)  # NaN, infinity or a sentinel among them
        return dict(zip(names, xs, strict=True))
    return parse


@dataclass
class _Table:
    """One table, opened, its dialect and columns resolved, positioned after the sample."""

    path: Path
    dialect: Dialect
    columns: Columns
    sample: list[tuple[int, list[str]]]
    reader: Iterator[list[str]]
    close: Callable[[], None]

    def events(self, errors: RowErrors, limit: int | None) -> Iterator[Event]:
        cols = self.columns
        time_of = cols.time.reader(cols.naive_tz)
        values_of = _values_parser(cols, self.dialect.decimal)
        key_i = cols.key
        file_key = _stem(self.path)
        kind = cols.kind
        width = 1 + max([i for _, i in cols.values] + list(cols.time.indices)
                        + ([key_i] if key_i is not None else []))
        reader = self.reader
        sample_lines = [line for line, _ in self.sample]
        rows = itertools.chain((row for _, row in self.sample), reader)
        n = 0
        try:
            for k, row in enumerate(rows):
                if len(row) < width:
                    if not row:
                        continue
                    row = row + [""] * (width - len(row))
                try:
                    key = row[key_i].strip() if key_i is not None else file_key
                    if not key or len(key) > MAX_KEY_LEN or not (key.isascii()
                                                                 and key.isprintable()):
                        check_key(key, MAX_KEY_LEN)  # the one key rule (raises bad_key)
                    try:
                        ts = time_of(row)
                    except EventError:
                        if not cols.time.text(row).strip(" :-"):
                            raise EventError("missing_time", "the time cell is empty") from None
                        raise
                    values = values_of(row)
                except EventError as err:
                    if not any(c.strip() for c in row):
                        continue  # a row of empty cells is a blank line, not a reading
                    line = sample_lines[k] if k < len(sample_lines) else getattr(
                        reader, "line_num", 0)
                    errors.add(err, f"{self.path.name}:{line}")
                    continue
                yield Event(kind, key, ts, values)
                n += 1
                if limit is not None and n >= limit:
                    return
        except csv.Error as exc:
            raise _unreadable(self.path, getattr(reader, "line_num", 0), exc) from None
        finally:
            self.close()


def _unreadable(path: Path, line: int, exc: csv.Error) -> LayoutError:
    return LayoutError(f"{path.name}:{line}: cannot be read as a table ({exc})")


def _narrow(path: Path, dialect: Dialect, source: TimeSource) -> tuple[str, ...]:
    """Read on through the file until its times leave one candidate format.

    A value decides only when some candidates read it and others do not (a value no
    candidate reads is a bad row, not evidence)."""
    parsers = [(f, TimeParser(f).parse) for f in source.formats]

    def reads(parse: Callable[[str], int], text: str) -> bool:
        try:
            parse(text)
        except EventError:
            return False
        return True

    with open_text(path) as fh:
        reader = csv.reader(fh, delimiter=dialect.delimiter)
        if dialect.header:
            next(reader, None)
        try:
            for row in reader:
                text = source.text(row)
                ok = [(f, p) for f, p in parsers if reads(p, text)]
                if ok and len(ok) < len(parsers):
                    parsers = ok
                    if len(parsers) == 1:
                        break
        except csv.Error as exc:
            raise _unreadable(path, reader.line_num, exc) from None
    return tuple(f for f, _ in parsers)


def _open_table(path: Path, layout: FileLayout, announce: Callable[[str, str], None]) -> _Table:
    header_flag = layout.header
    dialect = sniff_dialect(read_head(path), layout.delimiter, header_flag, layout.decimal)
    fh = open_text(path)
    try:
        reader = csv.reader(fh, delimiter=dialect.delimiter)
        header = next(reader, None) if dialect.header else None
        names = _names(header, layout, dialect.width)
        sample: list[tuple[int, list[str]]] = []
        for row in reader:
            sample.append((reader.line_num, row))
            if len(sample) >= SAMPLE_ROWS:
                break
        rows = [r for _, r in sample]
        columns = resolve_columns(
            path, names, rows, key_col=layout.key_col, time_col=layout.time_col,
            date_col=layout.date_col, time_format=layout.time_format,
            value_cols=layout.value_cols, kind=layout.kind, naive_tz=layout.naive_tz,
            decimal=dialect.decimal, na_values=layout.na_values)
        if len(columns.time.formats) > 1:
            formats = _narrow(path, dialect, columns.time)
            if len(formats) > 1:
                texts = [t for t in (columns.time.text(r) for r in rows) if t.strip()]
                raise time_format_error(path, columns.time.label, texts, formats)
            columns = replace(columns, time=replace(columns.time, formats=formats))
    except csv.Error as exc:
        fh.close()
        raise _unreadable(path, reader.line_num, exc) from None
    except BaseException:
        fh.close()
        raise
    announce(path.name, _describe(dialect, columns, header is None))
    return _Table(path, dialect, columns, sample, reader, fh.close)


def _describe(dialect: Dialect, columns: Columns, no_header: bool) -> str:
    t = columns.time
    parts = [f"time from {t.label!r} ({t.how}, format {t.formats[0]}"
             + (f", read in {columns.naive_tz})" if columns.naive_tz != "UTC" else ")")]
    if dialect.delimiter != ",":
        parts.append(f"delimiter {dialect.delimiter!r}")
    if no_header:
        parts.append("no header row")
    if dialect.decimal != ".":
        parts.append(f"decimal mark {dialect.decimal!r}")
    parts.append(f"{len(columns.values)} value columns")
    return ", ".join(parts)


def _iter_jsonl(path: Path, layout: FileLayout, errors: RowErrors) -> Iterator[Event]:
    decoder = EventDecoder(kind=layout.kind or "sensor", naive_tz=layout.naive_tz or "UTC",
                           value_fields=layout.value_cols)
    with open_text(path) as fh:
        n = 0
        for line, text in enumerate(fh, start=1):
            if not text.strip():
                continue
            try:
                ev = decoder.decode(text)
            except EventError as err:
                errors.add(err, f"{path.name}:{line}")
                continue
            yield ev
            n += 1
            if layout.limit_per_file is not None and n >= layout.limit_per_file:
                return


class _Announcer:
    """Logs how each file is read: at INFO when it differs from the file before."""

    def __init__(self) -> None:
        self.last: str | None = None

    def __call__(self, name: str, description: str) -> None:
        level = logging.DEBUG if description == self.last else logging.INFO
        log.log(level, "%s: %s", name, description)
        self.last = description


def iter_file(path: Path, layout: FileLayout = FileLayout(), errors: RowErrors | None = None,
              announce: Callable[[str, str], None] | None = None) -> Iterator[Event]:
    """Events of one file in file order; bad rows go to ``errors``.

    The layout is resolved now (a :class:`LayoutError` is raised here, before any event);
    the rows are read as the iterator is consumed.
    """
    errors = errors if errors is not None else RowErrors()
    kind = content_kind(path)
    if kind == "jsonl":
        return _iter_jsonl(path, layout, errors)
    if kind == "empty":
        return iter(())
    if kind == "text" and layout.header is None and layout.delimiter is None:
        raise LayoutError(f"{path.name} holds text, not a table of readings (no delimiter "
                          "splits its lines into columns of numbers and times); for a text "
                          "stream use streamseq backtest-text, for a table pass --delimiter")
    table = _open_table(path, layout, announce or _Announcer())
    return table.events(errors, layout.limit_per_file)


def read_events(paths: Iterable[str | Path], layout: FileLayout = FileLayout(),
                errors: RowErrors | None = None) -> Iterator[Event]:
    """Events of all files, interleaved by event time (each file's own order kept).

    Examples
    --------
    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (d / "a.csv").write_text("timestamp,value\\n2024-01-01 00:00:00,1\\n2024-01-01 02:00:00,3\\n")
    >>> _ = (d / "b.txt").write_text("when;value\\n1/1/2024 1:00;2,5\\n1/13/2024 1:30;NA\\n")
    >>> errors = RowErrors()
    >>> [(e.key, e.values["value"]) for e in read_events([d], errors=errors)]
    [('a', 1.0), ('b', 2.5), ('a', 3.0)]
    >>> dict(errors.counts)  # a row with every value missing carries nothing to learn
    {'no_values': 1}
    """
    files = expand_paths(paths)
    errors = errors if errors is not None else RowErrors()
    announce = _Announcer()
    iters = [iter_file(p, layout, errors, announce) for p in files]
    if len(iters) == 1:
        return iters[0]
    return heapq.merge(*iters, key=lambda e: e.ts_ms)
