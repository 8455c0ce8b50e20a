"""Replay recorded CSV / CSV.gz / JSONL files as wire messages, interleaved by event time.

Files are read with :func:`streamseq.io.files.read_events` and a
:class:`~streamseq.io.files.FileLayout`, the same column mapping as ``streamseq backtest``
(key column or file name as key, time column, value columns, kind, rows per file). Several
files are merged by event time the way a live feed would deliver them, each file keeping its
own order, so per-key order and the original event times are preserved. (A single file
holding several keys is replayed in file order: sort it by time first.)

Each event becomes the wire JSON of ``docs/CONTRACTS.md``:

* sensor: ``{"kind":"sensor","sensor_id":K,"ts":MS,"values":{...}}``;
* price with standard fields (``price, size`` or ``open..volume``): the fields at top
  level, ``{"kind":"price","symbol":K,"ts":MS,"price":...,"size":...}``;
* price with other columns (FX bid/ask bars): ``{"kind":"price","symbol":K,"ts":MS,
  "values":{...}}``.

Whole numbers are written as integers (``"size":100``); missing readings as ``null``.

With ``loop=True`` the files are replayed again and again; each pass is shifted forward in
event time by the span of the first pass plus its smallest per-key step, so every key's
event times keep increasing across passes.

Examples
--------
>>> import pathlib, tempfile
>>> d = pathlib.Path(tempfile.mkdtemp())
>>> head = "timestamp,value\\n"
>>> _ = (d / "a.csv").write_text(head + "2024-01-01 00:00:00,1\\n2024-01-01 02:00:00,3\\n")
>>> _ = (d / "b.csv").write_text(head + "2024-01-01 01:00:00,2.5\\n")
>>> for key, payload, ts in replay_messages([d]):
...     print(key, payload.decode())
a {"kind":"sensor","sensor_id":"a","ts":1704067200000,"values":{"value":1}}
b {"kind":"sensor","sensor_id":"b","ts":1704070800000,"values":{"value":2.5}}
a {"kind":"sensor","sensor_id":"a","ts":1704074400000,"values":{"value":3}}
>>> looped = replay_messages([d / "a.csv"], loop=True)
>>> [ts for _, _, ts in itertools.islice(looped, 4)]
[1704067200000, 1704074400000, 1704081600000, 1704088800000]
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterable, Iterator
from pathlib import Path

from simulators.output import Message, dumps
from streamseq.events import Event
from streamseq.events.schema import PRICE_FIELDS
from streamseq.io.files import FileLayout, RowErrors, read_events

__all__ = ["event_payload", "replay_messages"]

log = logging.getLogger(__name__)

_PRICE_FIELDS = frozenset(PRICE_FIELDS)
_MAX_INT_FLOAT = 2.0 ** 53


def _plain(x: float | None) -> float | int | None:
    if x is not None and x.is_integer() and abs(x) < _MAX_INT_FLOAT:
        return int(x)
    return x


def event_payload(event: Event) -> bytes:
    """The wire JSON of one event (compact, deterministic).

    Examples
    --------
    >>> event_payload(Event("price", "SPY", 1000, {"price": 167.41, "size": 100.0}))
    b'{"kind":"price","symbol":"SPY","ts":1000,"price":167.41,"size":100}'
    >>> event_payload(Event("sensor", "s1", 1000, {"t": None, "h": 0.5}))
    b'{"kind":"sensor","sensor_id":"s1","ts":1000,"values":{"t":null,"h":0.5}}'
    """
    values = {name: _plain(v) for name, v in event.values.items()}
    doc: dict[str, object]
    if event.kind == "price":
        doc = {"kind": "price", "symbol": event.key, "ts": event.ts_ms}
        if _PRICE_FIELDS.issuperset(values):
            doc.update(values)
        else:
            doc["values"] = values
    else:
        doc = {"kind": event.kind, "sensor_id": event.key, "ts": event.ts_ms, "values": values}
    if event.id is not None:
        doc["id"] = event.id
    return dumps(doc).encode()


def replay_messages(paths: Iterable[str | Path], layout: FileLayout = FileLayout(), *,
                    loop: bool = False, errors: RowErrors | None = None) -> Iterator[Message]:
    """Yield ``(key, payload, ts_ms)`` for the events of ``paths``, interleaved by time.

    Parameters
    ----------
    paths
        Files or folders of recorded streams.
    layout
        Column mapping (``limit_per_file`` caps the events taken from each file).
    loop
        Replay forever, shifting each pass forward in event time.
    errors
        Collects the rows that could not become events (counted by reason).
    """
    paths = list(paths)
    errors = errors if errors is not None else RowErrors()
    shift = 0
    for n_pass in itertools.count():
        first = last = None
        min_step: int | None = None
        last_ts: dict[str, int] = {}
        n = 0
        for ev in read_events(paths, layout, errors):
            ts = ev.ts_ms
            if n_pass == 0:
                first = ts if first is None else first
                last = ts
                prev = last_ts.get(ev.key)
                if prev is not None and ts > prev and (min_step is None or ts - prev < min_step):
                    min_step = ts - prev
                last_ts[ev.key] = ts
            n += 1
            if shift:
                ev = Event(ev.kind, ev.key, ts + shift, ev.values, ev.id)
            yield ev.key, event_payload(ev), ev.ts_ms
        if errors.total:
            log.info("replay pass %d: %d rows skipped %s", n_pass, errors.total,
                     dict(errors.counts))
        if not loop or n == 0:
            return
        if n_pass == 0:
            span = (last or 0) - (first or 0) + (min_step or 1000)
        shift += span
