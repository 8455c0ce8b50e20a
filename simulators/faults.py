"""Fault injection on a stream of wire messages, the way a real feed misbehaves.

Each input message independently receives at most one fault, with these probabilities:

``out_of_order``
    The message is held back and emitted 1..``max_delay`` positions later.
``duplicate``
    The message is emitted twice in a row (the second copy is the fault).
``malformed``
    The payload is replaced by a truncated prefix (never valid JSON) or by garbage bytes
    (a leading ``0xff``: never UTF-8). No newline bytes, so dry-run lines stay lines.
``nan``
    One value becomes the JSON literal ``NaN``.
``missing_field``
    The key field, ``ts``, or every value field is removed.

So a decoder must reject every ``malformed``, ``nan`` and ``missing_field`` message and may
accept the rest; the duplicate copy and the late message are valid JSON events the service
must handle as duplicates and out-of-order arrivals. Every fault is written to the truth
file (see :mod:`simulators.truth`) with ``seq``, its 0-based position in the output.

Examples
--------
>>> msgs = [(f"k{i}", b'{"key":"k%d","ts":%d,"values":{"x":1.5}}' % (i, i), i)
...         for i in range(1000)]
>>> injector = FaultInjector(FaultRates(duplicate=0.1, nan=0.05), seed=3)
>>> out = list(injector.apply(msgs))
>>> len(out) - len(msgs) == injector.counts["duplicate"]
True
>>> sorted(injector.counts)
['duplicate', 'nan']
>>> next(p for _, p, _ in out if b"NaN" in p)
b'{"key":"k12","ts":12,"values":{"x":NaN}}'
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import astuple, dataclass, fields

import numpy as np

from simulators.output import Message, dumps
from simulators.truth import TruthWriter

__all__ = ["FaultRates", "FaultInjector", "FAULTS"]

log = logging.getLogger(__name__)

FAULTS = ("out_of_order", "duplicate", "malformed", "nan", "missing_field")
_STREAM_TAG = 0xFA017  # mixes into the seed: faults never share random numbers with signals
_KEY_FIELDS = ("sensor_id", "symbol", "key")
_PRICE_FIELDS = ("price", "size", "open", "high", "low", "close", "volume")
_BATCH = 4096


@dataclass(frozen=True)
class FaultRates:
    """Probability that a message receives each fault (they are exclusive: sum <= 1)."""

    out_of_order: float = 0.0
    duplicate: float = 0.0
    malformed: float = 0.0
    nan: float = 0.0
    missing_field: float = 0.0

    def __post_init__(self) -> None:
        for f in fields(self):
            rate = getattr(self, f.name)
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"fault rate {f.name}={rate} is not in [0, 1]")
        if self.total > 1.0:
            raise ValueError(f"fault rates add up to {self.total} > 1")

    @property
    def total(self) -> float:
        return float(sum(astuple(self)))


class FaultInjector:
    """Injects wire faults into a message stream, seeded and reproducible.

    Parameters
    ----------
    rates
        Per-message fault probabilities.
    seed
        Seed of the injector's own random stream.
    max_delay
        Largest delay (in positions) of an out-of-order message.

    Attributes
    ----------
    counts
        Faults injected so far, by kind.
    """

    def __init__(self, rates: FaultRates = FaultRates(), seed: int = 0,
                 max_delay: int = 5) -> None:
        if max_delay < 1:
            raise ValueError("max_delay must be >= 1")
        self.rates = rates
        self.max_delay = max_delay
        self.rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, _STREAM_TAG])))
        self.counts: Counter[str] = Counter()
        self._edges = np.cumsum([getattr(rates, f) for f in FAULTS])

    def apply(self, messages: Iterable[Message],
              truth: TruthWriter | None = None) -> Iterator[Message]:
        """Yield ``messages`` with faults injected; faults are written to ``truth``."""
        if self.rates.total == 0.0:
            yield from messages
            return
        pos = 0  # position of the next output message
        held: list[_Held] = []  # out-of-order messages waiting for their turn
        draws: list[int] = []
        for msg in messages:
            if not draws:
                u = self.rng.random(_BATCH)
                draws = np.searchsorted(self._edges, u, side="right").tolist()[::-1]
            fault = draws.pop()
            name = FAULTS[fault] if fault < len(FAULTS) else None
            if name == "out_of_order":
                held.append(_Held(int(self.rng.integers(1, self.max_delay + 1)), msg, pos))
                continue
            out = msg
            if name in ("malformed", "nan", "missing_field"):
                out, detail = getattr(self, "_" + name)(msg)
                self._mark(truth, name, msg, pos, detail)
            yield out
            pos += 1
            if name == "duplicate":
                self._mark(truth, "duplicate", msg, pos, {"of_seq": pos - 1})
                yield msg
                pos += 1
            if held:
                for h in held:
                    h.remaining -= 1
                while held and held[0].remaining <= 0:
                    late = held.pop(0)
                    self._mark(truth, "out_of_order", late.msg, pos, {"delay": pos - late.due})
                    yield late.msg
                    pos += 1
        for late in held:
            self._mark(truth, "out_of_order", late.msg, pos, {"delay": pos - late.due})
            yield late.msg
            pos += 1

    # -- faults -----------------------------------------------------------------------------
    def _mark(self, truth: TruthWriter | None, name: str, msg: Message, pos: int,
              detail: dict[str, object]) -> None:
        self.counts[name] += 1
        if truth is not None:
            truth.write({"type": "fault", "fault": name, "key": msg[0], "ts": msg[2],
                         "seq": pos, **detail})

    def _malformed(self, msg: Message) -> tuple[Message, dict[str, object]]:
        key, payload, ts = msg
        if len(payload) > 2 and self.rng.random() < 0.5:
            cut = int(self.rng.integers(1, len(payload)))
            return (key, payload[:cut], ts), {"how": "truncated", "bytes": cut}
        n = int(self.rng.integers(8, 65))
        garbage = b"\xff" + self.rng.integers(0x20, 0xFF, n - 1, dtype=np.uint8).tobytes()
        return (key, garbage, ts), {"how": "garbage", "bytes": n}

    def _nan(self, msg: Message) -> tuple[Message, dict[str, object]]:
        key, payload, ts = msg
        doc = _load(payload)
        if doc is None:
            return msg, {"field": None}
        values = doc.get("values")
        if isinstance(values, dict) and values:
            names = list(values)
            target = values
        else:
            names = [f for f in ("open", "high", "low", "close", "price") if f in doc]
            target = doc
        if not names:
            return msg, {"field": None}
        name = names[int(self.rng.integers(len(names)))]
        target[name] = float("nan")
        return (key, dumps(doc).encode(), ts), {"field": name}

    def _missing_field(self, msg: Message) -> tuple[Message, dict[str, object]]:
        key, payload, ts = msg
        doc = _load(payload)
        if doc is None:
            return msg, {"field": None}
        which = int(self.rng.integers(3))
        if which == 0:
            removed = [f for f in _KEY_FIELDS if f in doc]
        elif which == 1:
            removed = [f for f in ("ts", "timestamp", "time", "event_time") if f in doc]
        else:
            removed = ["values"] if "values" in doc else [f for f in _PRICE_FIELDS if f in doc]
        for f in removed:
            del doc[f]
        label = ("key", "ts", "values")[which]
        return (key, dumps(doc).encode(), ts), {"field": label}


@dataclass
class _Held:
    remaining: int  # output positions still to wait
    msg: Message
    due: int  # position the message would have had


def _load(payload: bytes) -> dict[str, object] | None:
    try:
        doc = json.loads(payload)
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None
