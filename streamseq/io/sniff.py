"""What a file holds, read from its first lines: a table (and its dialect), JSON lines, or text.

The suffix is never trusted: ``readings.txt`` that holds ``;``-separated numbers is a table,
and a ``.tsv`` of ``sentence<TAB>label`` lines is text. :func:`sniff_dialect` finds the
delimiter (``,`` ``;`` tab ``|``), whether the first row is a header and the decimal mark;
:func:`content_kind` tells a table from text.

Examples
--------
>>> d = sniff_dialect(["20110301 090100;1,3803;1,3805", "20110301 090200;1,3804;1,3806"])
>>> d.delimiter, d.header, d.decimal
(';', False, ',')
>>> sniff_dialect(["time|value", "2024-01-01 00:00|1.5"]).delimiter
'|'
"""

from __future__ import annotations

import codecs
import csv
import gzip
import io
import json
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import BinaryIO, cast

from streamseq.io.times import detect_formats

__all__ = ["Dialect", "DELIMITERS", "content_kind", "is_number", "open_text", "read_head",
           "sniff_dialect"]

DELIMITERS = (",", ";", "\t", "|")
HEAD_BYTES = 256_000
HEAD_LINES = 200
_COMMA_DECIMAL = re.compile(r"^\s*[+-]?\d+,\d+\s*$")
_DOT_DECIMAL = re.compile(r"^\s*[+-]?\d*\.\d+(?:[eE][+-]?\d+)?\s*$")


@dataclass(frozen=True)
class Dialect:
    """How a table is written.

    Attributes
    ----------
    delimiter
        Field separator.
    header
        Whether the first row names the columns.
    decimal
        ``"."`` or ``","`` (``2,6`` is 2.6; only with a delimiter other than ``,``).
    width
        Fields in a typical row.
    """

    delimiter: str = ","
    header: bool = True
    decimal: str = "."
    width: int = 1


def _binary(path: Path) -> BinaryIO:
    if path.name.lower().endswith(".gz"):
        return cast(BinaryIO, gzip.open(path, "rb"))
    return open(path, "rb")  # noqa: SIM115


def encoding_of(head: bytes) -> str:
    """The text encoding of a file from its first bytes: UTF-16 by its byte-order mark,
    UTF-8 (a mark dropped) when the bytes decode as UTF-8, else Windows-1252 (which every
    byte decodes in: ``°C`` in a header stays ``°C``).

    Examples
    --------
    >>> encoding_of("Temp (°C)".encode("utf-8")), encoding_of("Temp (°C)".encode("cp1252"))
    ('utf-8-sig', 'cp1252')
    >>> encoding_of("time".encode("utf-16"))
    'utf-16'
    """
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return "utf-16"
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.reason != "unexpected end of data":  # not just a character cut by the head
            return "cp1252"
    return "utf-8-sig"


def open_text(path: Path) -> io.TextIOBase:
    """The file as text (gzip by suffix; the encoding from :func:`encoding_of`, any bad
    byte later in the file replaced), with newlines left to the CSV reader."""
    with _binary(path) as fh:
        head = fh.read(HEAD_BYTES)
    return io.TextIOWrapper(_binary(path), encoding=encoding_of(head), errors="replace",
                            newline="")


def read_head(path: Path, max_bytes: int = HEAD_BYTES, max_lines: int = HEAD_LINES) -> list[str]:
    """The first non-empty lines of a file (a cut last line dropped)."""
    with open_text(path) as fh:
        text = fh.read(max_bytes)
    lines = text.splitlines()
    if len(text) >= max_bytes and lines:
        lines.pop()
    return [ln for ln in lines if ln.strip()][:max_lines]


def is_number(text: str, decimal: str = ".") -> bool:
    """Whether a cell reads as a number (``2,6`` too when the decimal mark is ``,``).

    Examples
    --------
    >>> is_number(" 1e3 "), is_number("2,6"), is_number("2,6", ","), is_number("nan")
    (True, False, True, False)
    """
    t = text.strip()
    if decimal == ",":
        t = t.replace(",", ".")
    try:
        x = float(t)
    except ValueError:
        return False
    return x == x and t.lower() not in ("inf", "+inf", "-inf", "infinity", "-infinity")


def _rows(lines: Sequence[str], delimiter: str) -> list[list[str]]:
    return [r for r in csv.reader(lines, delimiter=delimiter) if r]


def _clean_share(rows: list[list[str]]) -> float:
    """Share of cells that are numbers (either decimal mark), empty, or short tokens
    without another candidate delimiter in them."""
    cells = [c for r in rows[1:] for c in r] or [c for r in rows for c in r]
    if not cells:
        return 0.0
    def clean(c: str) -> bool:
        s = c.strip()
        return not s or is_number(s) or is_number(s, ",") or not any(d in s for d in DELIMITERS)
    return sum(map(clean, cells)) / len(cells)


def _delimiter(lines: Sequence[str]) -> tuple[str, int] | None:
    """The delimiter that splits the lines into the same number (>= 2) of fields; between
    several, the one whose cells are cleanest (``1,5;2,5`` is split by ``;``)."""
    qualified: list[tuple[float, int, str, list[list[str]]]] = []
    for d in DELIMITERS:
        rows = _rows(lines, d)
        if not rows:
            continue
        width, count = Counter(len(r) for r in rows).most_common(1)[0]
        consistency = count / len(rows)
        if width >= 2 and consistency >= 0.9:
            qualified.append((consistency, width, d, rows))
    if not qualified:
        return None
    if len(qualified) > 1:
        qualified.sort(key=lambda q: (q[0], _clean_share(q[3]), q[1]), reverse=True)
    return qualified[0][2], qualified[0][1]


def _data_like(cell: str, decimal: str) -> bool:
    s = cell.strip()
    return bool(s) and (is_number(s, decimal) or bool(detect_formats([s])))


def _column_like_data(cells: list[str], decimal: str) -> bool:
    """Whether a column's cells are numbers (90%) or times."""
    if not cells:
        return False
    if sum(is_number(c, decimal) for c in cells) >= 0.9 * len(cells):
        return True
    return bool(detect_formats(cells))


def _has_header(rows: list[list[str]], decimal: str) -> bool:
    """A first row is a header unless it looks like the rows under it: it is one when a
    column holds data below a non-data first cell, or when it has no data cell at all."""
    if len(rows) < 2:
        return not any(_data_like(c, decimal) for c in rows[0]) if rows else True
    first, below = rows[0], rows[1:]
    for i, cell in enumerate(first):
        if cell.strip() and not _data_like(cell, decimal):
            col = [r[i].strip() for r in below[:50] if i < len(r) and r[i].strip()]
            if _column_like_data(col, decimal):
                return True
    return not any(_data_like(c, decimal) for c in first)


def _decimal(rows: list[list[str]], delimiter: str) -> str:
    if delimiter == ",":
        return "."
    cells = [c for r in rows[1:] for c in r]
    commas = sum(bool(_COMMA_DECIMAL.match(c)) for c in cells)
    dots = sum(bool(_DOT_DECIMAL.match(c)) for c in cells)
    return "," if commas and not dots else "."


def sniff_dialect(lines: Sequence[str], delimiter: str | None = None,
                  header: bool | None = None, decimal: str | None = None) -> Dialect:
    """The dialect of a table from its first lines; given parts are taken as they are.

    Examples
    --------
    >>> sniff_dialect(["a,b", "1,2"])
    Dialect(delimiter=',', header=True, decimal='.', width=2)
    >>> sniff_dialect(["x\\ty", "1.5\\t2"], header=False)
    Dialect(delimiter='\\t', header=False, decimal='.', width=2)
    """
    if delimiter is None:
        found = _delimiter(lines)
        delimiter = found[0] if found else ","
    rows = _rows(lines, delimiter)
    widths = Counter(len(r) for r in rows)
    width = widths.most_common(1)[0][0] if widths else 1
    if decimal is None:
        decimal = _decimal(rows, delimiter)
    if header is None:
        header = _has_header(rows, decimal)
    return Dialect(delimiter, header, decimal, width)


def _words(cells: list[str]) -> float:
    return sum(len(c.split()) for c in cells) / len(cells) if cells else 0.0


def content_kind(path: Path) -> str:
    """See :func:`_content_kind` (cached while the file is unchanged)."""
    st = path.stat()
    return _content_kind(path, st.st_mtime_ns, st.st_size)


@lru_cache(maxsize=1024)
def _content_kind(path: Path, _mtime_ns: int, _size: int) -> str:
    """``"table"``, ``"jsonl"``, ``"text"`` or ``"empty"``, from the file's first lines.

    A table splits into the same number of fields on every line, has no column of prose
    (three or more words a cell on average) and has a column of times or a majority of
    numeric columns; a single column of numbers is a table too.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (d / "t.txt").write_text("date;value\\n2024-01-01;1\\n2024-01-02;2\\n")
    >>> _ = (d / "s.txt").write_text("A fine film, really.\\t1\\nNot good at all.\\t0\\n")
    >>> content_kind(d / "t.txt"), content_kind(d / "s.txt")
    ('table', 'text')
    """
    lines = read_head(path, max_lines=60)
    if not lines:
        return "empty"
    if lines[0].lstrip().startswith("{"):
        try:
            if isinstance(json.loads(lines[0]), dict):
                return "jsonl"
        except ValueError:
            pass
    found = _delimiter(lines)
    if found is None:
        numeric = sum(is_number(ln) or is_number(ln, ",") for ln in lines[1:] or lines)
        return "table" if numeric >= 0.9 * len(lines[1:] or lines) else "text"
    dialect = sniff_dialect(lines, delimiter=found[0])
    rows = _rows(lines, dialect.delimiter)
    body = rows[1:] if dialect.header else rows
    columns = [[r[i] for r in body if i < len(r) and r[i].strip()] for i in range(dialect.width)]
    times = [bool(col) and bool(detect_formats(col[:50], allow_numbers=False))
             for col in columns]
    if any(_words(col) >= 3 and not is_time for col, is_time in zip(columns, times, strict=True)):
        return "text"
    if any(times):
        return "table"
    numeric = sum(bool(col) and all(is_number(c, dialect.decimal) for c in col)
                  for col in columns)
    return "table" if numeric * 2 >= len(columns) else "text"
