"""The prediction record: what the service publishes and the backtest can write.

One JSON object per forecast, keyed by the event key::

    {"id": "sensors:3:1042", "key": "s-0007", "kind": "sensor", "event_ts": 1704067200000,
     "target_ts": [1704067260000], "horizon": 1, "yhat": {"temp": [21.7]},
     "model_version": 118, "source": {"topic": "sensors", "partition": 3, "offset": 1042}}

``id`` is derived from the source coordinates only, so a record re-published after a restart
carries the same id and consumers can drop duplicates. ``yhat`` is in original units; a
value the key has never shown is ``null``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from streamseq.engine import EngineOutput
from streamseq.events.schema import Event

__all__ = ["prediction_records", "encode_record", "prediction_id"]


def prediction_id(topic: str, partition: int, offset: int) -> str:
    """Deterministic id of the forecast made at one source record.

    >>> prediction_id("sensors", 3, 1042)
    'sensors:3:1042'
    """
    return f"{topic}:{partition}:{offset}"


def prediction_records(events: Sequence[Event], out: EngineOutput, targets: Sequence[str],
                       sources: Sequence[tuple[str, int, int]]) -> list[dict[str, Any]]:
    """One record per forecast in ``out``; ``sources[i]`` is event i's (topic, partition,
    offset). ``model_version`` is the number of optimizer steps applied before the
    forecast was made."""
    recs = []
    horizon = int(out.yhat.shape[1])
    # one conversion per batch, not per record: [row][target][step] as Python floats
    yhat = np.round(out.yhat, 10).transpose(0, 2, 1).tolist()
    target_ts = out.target_ts.tolist()
    versions = out.version.tolist()
    names = list(enumerate(targets))
    for row, i in enumerate(out.index.tolist()):
        ev = events[i]
        topic, partition, offset = sources[i]
        values = yhat[row]
        recs.append({
            "id": prediction_id(topic, partition, offset),
            "key": ev.key,
            "kind": ev.kind,
            "event_ts": ev.ts_ms,
            "target_ts": target_ts[row],
            "horizon": horizon,
            "yhat": {name: [v if math.isfinite(v) else None for v in values[j]]
                     for j, name in names},
            "model_version": versions[row],
            "source": {"topic": topic, "partition": partition, "offset": offset},
        })
    return recs


_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False)


def encode_record(rec: dict[str, Any]) -> bytes:
    return _ENCODER.encode(rec).encode()
