"""Ground truth of a simulated run, written as JSON lines (``--truth PATH``).

One record per line, each with a ``type``, a ``key`` and a ``ts`` (epoch ms):

``event``
    One per emitted event: ``signal`` is the noise-free value(s) behind the observation;
    ``labels`` (only when non-empty) names the anomalies active at that event per value,
    e.g. ``{"temp": ["spike"]}``. Price events also carry ``vol`` and ``regime``.
``anomaly``
    An injected anomaly or regime change of one key starts (``anomaly``: ``level_shift``,
    ``drift``, ``variance_burst``, ``stuck``, ``dropout``, ``spike``, ``jump``), with its
    parameters and, for episodes, ``end_ts``.
``regime``
    A market-wide price regime switch (``regime``: ``calm`` / ``stressed``), one record per
    symbol.
``fault``
    A wire fault injected by :mod:`simulators.faults` (``fault``: ``out_of_order``,
    ``duplicate``, ``malformed``, ``nan``, ``missing_field``), with ``seq``, the 0-based
    position of the faulty message in the output stream.

Records are written as the stream is emitted, so a run cut short by ``--count`` lists the
truth of what it sent (plus at most the few messages held back by an out-of-order fault).

Examples
--------
>>> import io
>>> buf = io.StringIO()
>>> t = TruthWriter(buf)
>>> t.write({"type": "fault", "fault": "duplicate", "key": "s-0001", "ts": 1, "seq": 7})
>>> buf.getvalue()
'{"type":"fault","fault":"duplicate","key":"s-0001","ts":1,"seq":7}\\n'
>>> t.records
1
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import IO

__all__ = ["TruthWriter", "read_truth"]

log = logging.getLogger(__name__)


class TruthWriter:
    """Append truth records to a JSONL file or text stream.

    Parameters
    ----------
    target
        A path (created or truncated) or an open text stream (not closed by :meth:`close`).
    """

    def __init__(self, target: str | Path | IO[str]) -> None:
        if isinstance(target, (str, Path)):
            Path(target).parent.mkdir(parents=True, exist_ok=True)
            self._fh: IO[str] = open(target, "w", encoding="utf-8")  # noqa: SIM115
            self._owned = True
        else:
            self._fh = target
            self._owned = False
        self.records = 0

    def write(self, record: dict[str, object]) -> None:
        """Write one record (compact, deterministic JSON)."""
        self._fh.write(json.dumps(record, separators=(",", ":")) + "\n")
        self.records += 1

    def close(self) -> None:
        if self._owned:
            self._fh.close()
        else:
            self._fh.flush()

    def __enter__(self) -> TruthWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_truth(path: str | Path) -> list[dict[str, object]]:
    """All records of a truth file."""
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]
