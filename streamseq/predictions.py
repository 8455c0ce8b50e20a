"""The prediction record: what the service publishes and the backtest can write.

One JSON object per forecast, keyed by the event key::

    {"id": "sensors:3:1042", "key": "s-0007", "kind": "sensor", "event_ts": 1704067200000,
     "target_ts": [1704067260000], "horizon": 1, "yhat": {"temp": [21.7]},
     "lo": {"temp": [21.1]}, "hi": {"temp": [22.4]},
     "model_version": 118, "source": {"topic": "sensors", "partition": 3, "offset": 1042}}

``id`` is derived from the source coordinates only, so a record re-published after a restart
carries the same id and consumers can drop duplicates. ``yhat`` is in original units; a
value the key has never shown is ``null``. ``lo`` and ``hi`` bound the prediction interval
of each step (default coverage 90%; ``null`` until the key has a scale). With
``--prediction-weights`` a record ends with ``weights``: per target, each forecaster's share
of the published forecast at each step. Values flagged as anomalies get their own records
(:meth:`PredictionEncoder.anomalies`, the ``--anomaly-topic``).

A batch is serialised in one pass (:class:`PredictionEncoder`): each numeric field is
formatted for the whole batch at once (numpy arrays to Python floats to text in a few
passes), and the records' pre-escaped parts are interleaved column by column into one list,
joined into one string and split into records at the newlines (no per-record Python code),
byte for byte what ``json.dumps(record, separators=(",", ":"))`` gives (measured in bench/results/e2e.md,
"prediction records"; a dict per record encoded by orjson would cost more than this
format, so the service needs no JSON library beyond the standard one).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from itertools import repeat
from operator import attrgetter
from typing import Any

import numpy as np

from streamseq.engine import EngineOutput
from streamseq.events.schema import Event, EventColumns
from streamseq.forecast.aggregate import EXPERTS
from streamseq.pipeline import Prediction, Record

__all__ = ["PredictionEncoder", "prediction_id", "encode_json", "anomaly_records"]

_INF = math.inf
_OFFSET = attrgetter("offset")
_PLACE = attrgetter("topic", "partition")
_TIMESTAMP = attrgetter("timestamp")
_PREDICTION = tuple.__new__  # Prediction's own constructor without its Python frame


def prediction_id(topic: str, partition: int, offset: int) -> str:
    """Deterministic id of the forecast made at one source record.

    >>> prediction_id("sensors", 3, 1042)
    'sensors:3:1042'
    """
    return f"{topic}:{partition}:{offset}"


_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False)


def encode_json(rec: dict[str, Any]) -> bytes:
    """A record that is not a forecast (text shards' outputs) as compact JSON bytes."""
    return _ENCODER.encode(rec).encode()


def _number(x: float) -> str:
    return "null" if x != x or x == _INF or x == -_INF else repr(x)


def _fields(values: np.ndarray, names: Sequence[str]) -> list[str | list[str]]:
    """The inside of each row's JSON object ``"t1":[v,v],"t2":[v,v]`` for ``values``
    ``[rows, horizon, targets]`` (``names[j]`` is target ``j``'s ``"name":[``), as parts
    for :func:`_interleave` (a string: the same in every row), numbers as :func:`_number`
    writes them (rounded to 10 decimals, ``null`` when not finite), formatted in a few
    passes over the whole batch.

    >>> _fields(np.array([[[1.5, np.nan]], [[-0.25, 2.0]]]), ['"a":[', '"b":['])
    [['"a":[1.5],"b":[null]', '"a":[-0.25],"b":[2.0]']]
    >>> _fields(np.array([[[1.5], [2.0]]]), ['"a":['])
    ['"a":[', ['1.5,2.0'], ']']
    """
    rows, horizon, n_targets = values.shape
    flat = np.round(values, 10).transpose(0, 2, 1).ravel()  # [row][target][step]
    text = list(map(repr, flat.tolist()))
    for k in np.flatnonzero(~np.isfinite(flat)).tolist():
        text[k] = "null"
    cells = text if horizon == 1 else [",".join(text[k:k + horizon])
                                       for k in range(0, len(text), horizon)]
    if n_targets == 1:
        return [names[0], cells, "]"]
    return [[",".join(name + cells[r * n_targets + j] + "]" for j, name in enumerate(names))
             for r in range(rows)]]


def _interleave(columns: Sequence[str | list[str]], n: int) -> list[str]:
    """The parts of ``n`` rows, row after row: ``columns[k]`` gives each row's ``k``-th part
    (a string: the same in every row; neighbouring ones are joined first).

    >>> "".join(_interleave(["<", ["a", "b"], ":", "=", ["1", "2"], ">"], 2))
    '<a:=1><b:=2>'
    """
    merged: list[str | list[str]] = []
    for column in columns:
        if isinstance(column, str) and merged and isinstance(merged[-1], str):
            merged[-1] += column
        else:
            merged.append(column)
    parts: list[str] = [""] * (n * len(merged))
    for k, column in enumerate(merged):
        parts[k::len(merged)] = [column] * n if isinstance(column, str) else column
    return parts


class PredictionEncoder:
    """Serialises the forecasts of one engine call, one pass per batch.

    Parameters
    ----------
    kind
        The shard's event kind (``sensor`` / ``price``).
    max_cached_keys
        Bound of the cache of escaped keys (keys repeat; the cache is cleared when full).

    Examples
    --------
    >>> from streamseq.config import EngineConfig, LearnerConfig
    >>> from streamseq.engine import Engine
    >>> from streamseq.pipeline import InputRecord
    >>> eng = Engine(EngineConfig(learner=LearnerConfig(k1=1, k2=2, batch_windows=1)))
    >>> evs = [Event("sensor", "a", 60_000 * i, {"x": float(i % 3)}) for i in range(3)]
    >>> out = eng.process(evs)
    >>> src = [InputRecord("sensors", 1, 40 + i, None) for i in range(3)]
    >>> preds = PredictionEncoder("sensor").encode(evs, out, eng.target_names, src)
    >>> rec = json.loads(preds[2].value)
    >>> preds[2].key, rec["id"], rec["source"], rec["target_ts"], sorted(rec["yhat"])
    (b'a', 'sensors:1:42', {'topic': 'sensors', 'partition': 1, 'offset': 42}, [180000], ['x'])
    """

    def __init__(self, kind: str, max_cached_keys: int = 200_000) -> None:
        self.kind = kind
        self.max_cached_keys = max_cached_keys
        self._key_bytes: dict[str, bytes] = {}
        self._key_json: dict[str, str] = {}
        self._sources: dict[tuple[str, int], tuple[str, str]] = {}

    def _keys_of(self, keys: list[str]) -> tuple[list[bytes], list[str]]:
        """Each key's UTF-8 bytes and JSON text (cached: keys repeat)."""
        raw, text = self._key_bytes, self._key_json
        missing = set(keys).difference(raw)
        if missing:
            if len(raw) + len(missing) > self.max_cached_keys:
                raw.clear()
                text.clear()
                missing = set(keys)
            for key in missing:
                raw[key] = key.encode()
                text[key] = json.dumps(key)
        return list(map(raw.__getitem__, keys)), list(map(text.__getitem__, keys))

    def _source(self, topic: str, partition: int) -> tuple[str, str]:
        found = self._sources.get((topic, partition))
        if found is None:
            found = self._sources[(topic, partition)] = (
                '{"id":"' + json.dumps(f"{topic}:{partition}:")[1:-1],
                '"source":{"topic":' + json.dumps(topic) + f',"partition":{partition},'
                '"offset":')
        return found

    def encode(self, events: Sequence[Event], out: EngineOutput, targets: Sequence[str],
               sources: Sequence[Record]) -> list[Prediction]:
        """One :class:`Prediction` per forecast in ``out``; ``sources[i]`` is event ``i``'s
        record. ``model_version`` is the number of optimizer steps applied before the
        forecast was made."""
        index = out.index.tolist()
        if not index:
            return []
        n = len(index)
        horizon = int(out.yhat.shape[1])
        names = [json.dumps(t) + ":[" for t in targets]
        # one conversion per batch: each field's text for every row
        yhat, lo, hi = (_fields(a, names) for a in (out.yhat, out.lo, out.hi))
        target_ts = (list(map(str, out.target_ts[:, 0].tolist())) if horizon == 1
                     else [",".join(map(str, ts)) for ts in out.target_ts.tolist()])
        cols = EventColumns.of(events)
        if n == len(cols) == len(sources):  # every event forecast (index is sorted)
            srcs, keys, times = list(sources), cols.keys, cols.ts_ms
        else:
            srcs = list(map(sources.__getitem__, index))
            keys = list(map(cols.keys.__getitem__, index))
            times = list(map(cols.ts_ms.__getitem__, index))
        key_bytes, key_json = self._keys_of(keys)
        offsets = list(map(str, map(_OFFSET, srcs)))
        places = list(map(_PLACE, srcs))
        head: str | list[str]
        tail: str | list[str]
        if places.count(places[0]) == n:  # one partition's records (the pipeline's call)
            head, tail = self._source(*places[0])
        else:
            heads, tails = zip(*(self._source(*p) for p in places), strict=True)
            head, tail = list(heads), list(tails)
        low, high = int(out.version.min()), int(out.version.max())
        version = str(low) if low == high else list(map(str, out.version.tolist()))
        # every record's parts in one list, joined once: the parts are JSON text, so no
        # part holds a raw newline and the records come apart at the newlines
        parts = _interleave([
            head, offsets, '","key":', key_json, f',"kind":{json.dumps(self.kind)},"event_ts":',
            list(map(str, times)), ',"target_ts":[', target_ts,
            f'],"horizon":{horizon},"yhat":{{', *yhat, '},"lo":{', *lo, '},"hi":{', *hi,
            '},"model_version":', version, ",", tail, offsets, "}",
            "" if out.weights is None else self._weights(out.weights, names), "}\n"], n)
        values = "".join(parts).encode().split(b"\n")
        values.pop()  # after the last newline
        return list(map(_PREDICTION, repeat(Prediction, n), zip(
            key_bytes, values, map(_TIMESTAMP, srcs), strict=True)))

    @staticmethod
    def _weights(weights: np.ndarray, names: Sequence[str]) -> list[str]:
        """Per row, the ``,"weights":{...}`` member of the record."""
        rows = np.round(weights, 6).transpose(0, 2, 3, 1).tolist()
        experts = [json.dumps(e) + ":[" for e in EXPERTS]
        return [',"weights":{' + ",".join(
            name[:-1] + "{" + ",".join(e + ",".join(map(_number, row[j][k])) + "]"
                                       for k, e in enumerate(experts)) + "}"
            for j, name in enumerate(names)) + "}" for row in rows]

    def anomalies(self, events: Sequence[Event], out: EngineOutput, targets: Sequence[str],
                  sources: Sequence[Record]) -> list[Prediction]:
        """One record per flagged value (:func:`anomaly_records`), keyed by the event key."""
        recs = anomaly_records(events, out, targets)
        if not recs:
            return []
        rows = np.flatnonzero(out.anomaly.any(axis=1))
        flagged = [int(out.index[r]) for r in rows.tolist()
                   for _ in range(int(out.anomaly[r].sum()))]
        return [Prediction(rec["key"].encode(), encode_json(rec), sources[i].timestamp)
                for rec, i in zip(recs, flagged, strict=True)]


def anomaly_records(events: Sequence[Event], out: EngineOutput,
                    targets: Sequence[str]) -> list[dict[str, Any]]:
    """One record per flagged value: an event whose value of a target fell outside the
    anomaly interval of the one-step forecast made before it arrived::

        {"key": "s-0007", "kind": "sensor", "ts": 1704067260000, "target": "temp",
         "value": 35.2, "yhat": 21.8, "lo": 19.9, "hi": 23.6}
    """
    recs = []
    rows, cols = np.nonzero(out.anomaly)
    checked = out.checked[rows, cols].tolist()
    for r, c, (fc, lo, hi) in zip(rows.tolist(), cols.tolist(), checked, strict=True):
        ev = events[int(out.index[r])]
        name = targets[c]
        recs.append({"key": ev.key, "kind": ev.kind, "ts": ev.ts_ms, "target": name,
                     "value": ev.values.get(name), "yhat": fc, "lo": lo, "hi": hi})
    return recs
