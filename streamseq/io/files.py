"""Read recorded streams from CSV, CSV.gz and JSONL files (or folders of them).

The same column mapping serves ``streamseq backtest`` and ``streamseq replay``:

* key: ``--key-col``; else the first of ``key``, ``sensor_id``, ``symbol``, ``station``
  present; else the file name (``ETTh2.csv`` -> key ``ETTh2``).
* time: ``--time-col``; else the first of ``ts``, ``timestamp``, ``time``, ``date``,
  ``datetime``, ``event_time``, ``timestamp_utc``, ``timestamp_ny``; else ``year, month, day,
  hour`` columns (Beijing air). A column ending in ``_ny`` is read in America/New_York.
* values: ``--target``/``--features`` if given; else, for price files, the standard price
  fields present (``price, size`` or ``open..volume``); else every numeric column.

Several files are interleaved by event time, the way a live feed would deliver them; each
file's own order is kept, so per-key order is preserved.
"""

from __future__ import annotations

import csv
import gzip
import heapq
import io
import logging
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from streamseq.events.decode import EventDecoder
from streamseq.events.errors import EventError
from streamseq.events.schema import PRICE_FIELDS, Event

__all__ = ["FileLayout", "RowErrors", "expand_paths", "read_events", "iter_file"]

log = logging.getLogger(__name__)

SUFFIXES = (".csv", ".csv.gz", ".jsonl", ".jsonl.gz", ".json.gz", ".txt.gz")
KEY_CANDIDATES = ("key", "sensor_id", "symbol", "station")
TIME_CANDIDATES = ("ts", "timestamp", "time", "date", "datetime", "event_time",
                   "timestamp_utc", "timestamp_ny")
TIME_PARTS = ("year", "month", "day", "hour")
INDEX_LIKE = frozenset(("no", "index", "id", "unnamed: 0", ""))
PRICE_HINTS = ("price", "close")
SNIFF_ROWS = 200


@dataclass(frozen=True)
class FileLayout:
    """How columns of a recorded file map onto events. ``None`` means infer."""

    key_col: str | None = None
    time_col: str | None = None
    value_cols: tuple[str, ...] | None = None
    kind: str | None = None
    naive_tz: str | None = None
    limit_per_file: int | None = None


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


def expand_paths(paths: Iterable[str | Path]) -> list[Path]:
    """Files named, and the recorded-stream files inside folders named, sorted."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out.extend(sorted(f for f in p.rglob("*") if f.is_file() and f.name.endswith(SUFFIXES)))
        elif p.exists():
            out.append(p)
        else:
            raise FileNotFoundError(p)
    return out


def _stem(path: Path) -> str:
    name = path.name
    for suffix in sorted(SUFFIXES, key=len, reverse=True):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def _open_text(path: Path) -> io.TextIOBase:
    if path.name.endswith(".gz"):
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", errors="replace", newline="")
    return open(path, encoding="utf-8", errors="replace", newline="")  # noqa: SIM115


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _numeric_columns(header: Sequence[str], sample: Sequence[Sequence[str]]) -> list[str]:
    numeric = []
    for i, name in enumerate(header):
        cells = [r[i].strip() for r in sample if i < len(r)]
        seen = [c for c in cells if c and c.lower() not in ("na", "nan", "null", "none")]
        if seen and all(_is_number(c) for c in seen):
            numeric.append(name)
    return numeric


def _resolve_layout(path: Path, header: list[str], sample: list[list[str]], layout: FileLayout):
    lower = {h.lower(): h for h in header}
    key_col = layout.key_col or next((lower[c] for c in KEY_CANDIDATES if c in lower), None)
    if layout.key_col and layout.key_col not in header:
        raise ValueError(f"{path}: key column {layout.key_col!r} not in {header}")
    time_col = layout.time_col or next((lower[c] for c in TIME_CANDIDATES if c in lower), None)
    time_parts: tuple[str, ...] = ()
    if time_col is None:
        if all(p in lower for p in TIME_PARTS):
            time_parts = tuple(lower[p] for p in TIME_PARTS)
        else:
            raise ValueError(f"{path}: no time column found in {header}; pass --time-col")
    elif time_col not in header:
        raise ValueError(f"{path}: time column {time_col!r} not in {header}")
    naive_tz = layout.naive_tz or (
        "America/New_York" if time_col and time_col.lower().endswith("_ny") else "UTC")
    kind = layout.kind or ("price" if any(h.lower() in PRICE_HINTS or h.lower().endswith("_close")
                                          for h in header) else "sensor")
    if layout.value_cols:
        missing = [c for c in layout.value_cols if c not in header]
        if missing:
            raise ValueError(f"{path}: value columns {missing} not in {header}")
        value_cols = list(layout.value_cols)
    else:
        skip = {key_col, time_col, *time_parts}
        numeric = [c for c in _numeric_columns(header, sample)
                   if c not in skip and c.lower() not in INDEX_LIKE]
        price_cols = [c for c in numeric if c.lower() in PRICE_FIELDS]
        value_cols = price_cols if kind == "price" and price_cols else numeric
        if not value_cols:
            raise ValueError(f"{path}: no numeric value columns found in {header}")
    return key_col, time_col, time_parts, naive_tz, kind, value_cols


def _iter_csv(path: Path, layout: FileLayout, errors: RowErrors) -> Iterator[Event]:
    with _open_text(path) as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if header is None:
            return
        header = [h.strip() for h in header]
        sample: list[list[str]] = []
        for row in reader:
            sample.append(row)
            if len(sample) >= SNIFF_ROWS:
                break
        key_col, time_col, parts, naive_tz, kind, value_cols = _resolve_layout(
            path, header, sample, layout)
        idx = {h: i for i, h in enumerate(header)}
        key_i = idx[key_col] if key_col else None
        time_i = idx[time_col] if time_col else None
        part_i = [idx[p] for p in parts]
        value_index = [(c, idx[c]) for c in value_cols]
        decoder = EventDecoder(kind=kind, naive_tz=naive_tz)
        file_key = _stem(path)
        rows: Iterable[list[str]] = _chain(sample, reader)
        n = 0
        for line, row in enumerate(rows, start=2):
            if not row:
                continue
            try:
                key = row[key_i] if key_i is not None else file_key
                if time_i is not None:
                    t: object = row[time_i]
                else:
                    y, mo, d, h = (int(float(row[i])) for i in part_i)
                    t = f"{y:04d}-{mo:02d}-{d:02d}T{h:02d}:00:00"
                ev = decoder.from_row(row, key=key, time_value=t, value_index=value_index)
            except EventError as err:
                errors.add(err, f"{path.name}:{line}")
                continue
            except (ValueError, IndexError) as exc:
                errors.add(EventError("bad_time", str(exc)), f"{path.name}:{line}")
                continue
            yield ev
            n += 1
            if layout.limit_per_file is not None and n >= layout.limit_per_file:
                return


def _chain(first: list[list[str]], rest: Iterator[list[str]]) -> Iterator[list[str]]:
    yield from first
    yield from rest


def _iter_jsonl(path: Path, layout: FileLayout, errors: RowErrors) -> Iterator[Event]:
    decoder = EventDecoder(kind=layout.kind or "sensor", naive_tz=layout.naive_tz or "UTC",
                           value_fields=layout.value_cols)
    with _open_text(path) as fh:
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


def iter_file(path: Path, layout: FileLayout = FileLayout(),
              errors: RowErrors | None = None) -> Iterator[Event]:
    """Events of one file in file order; bad rows go to ``errors``."""
    errors = errors if errors is not None else RowErrors()
    name = path.name.lower()
    if ".jsonl" in name or name.endswith(".json.gz"):
        return _iter_jsonl(path, layout, errors)
    return _iter_csv(path, layout, errors)


def read_events(paths: Iterable[str | Path], layout: FileLayout = FileLayout(),
                errors: RowErrors | None = None) -> Iterator[Event]:
    """Events of all files, interleaved by event time (each file's own order kept).

    Examples
    --------
    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (d / "a.csv").write_text("timestamp,value\\n2024-01-01 00:00:00,1\\n2024-01-01 02:00:00,3\\n")
    >>> _ = (d / "b.csv").write_text("timestamp,value\\n2024-01-01 01:00:00,2\\n2024-01-01 01:30:00,NA\\n")
    >>> errors = RowErrors()
    >>> [(e.key, e.values["value"]) for e in read_events([d], errors=errors)]
    [('a', 1.0), ('b', 2.0), ('a', 3.0)]
    >>> dict(errors.counts)  # a row with every value missing carries nothing to learn
    {'no_values': 1}
    """
    files = expand_paths(paths)
    errors = errors if errors is not None else RowErrors()
    iters = [iter_file(p, layout, errors) for p in files]
    if len(iters) == 1:
        return iters[0]
    return heapq.merge(*iters, key=lambda e: e.ts_ms)


def with_layout(layout: FileLayout, **changes: object) -> FileLayout:
    """A copy of ``layout`` with some fields changed (used by the CLI)."""
    return replace(layout, **changes)  # type: ignore[arg-type]
