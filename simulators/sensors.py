"""Seeded synthetic sensor streams with seasonality, trend, noise and regime changes.

Each of ``n_sensors`` sensors (keys ``s-0000``, ``s-0001``, ...) reports one or more named
values every ``interval`` seconds of a simulated clock. For sensor ``i`` and value ``v``,
with a per-series scale ``s`` drawn in [1, 5]::

    signal(t) = level + slope * days(t) + daily(t) + weekly(t) + shifts(t) + drift(t)
    observed  = signal(t) + noise * s * burst(t) * N(0, 1)   [+ spike] [or stuck] [or gap]

``daily`` is a sine of the time of day plus a weaker second harmonic, ``weekly`` a sine of
the time of week (phases drawn per series, so series peak at different hours); noise is
white, so a model that learns the seasonal shape beats persistence. Event times are
``start + k * interval + offset_i + jitter``, with a fixed per-sensor offset and a small
jitter that keeps every sensor inside its interval, so the keys interleave in time order.

Anomalies and regime changes start independently per sensor step (per value, except
dropouts which silence the whole sensor) with the probabilities of :class:`AnomalyRates`:

``level_shift``  the level jumps by +-(1..3) s for good;
``drift``        a linear drift of +-(1..3) s over about ``drift_steps`` steps, then it stays;
``variance_burst`` the noise is 3..6x larger for about ``burst_steps`` steps;
``stuck``        the reading repeats the last value for about ``stuck_steps`` steps;
``dropout``      the sensor sends nothing for about ``dropout_steps`` steps (a gap);
``spike``        a single reading is off by +-(5..10) noise sigmas.

The truth file (:mod:`simulators.truth`) gets each event's noise-free ``signal`` (level,
trend, seasonality, shifts and drift, which a forecaster should track) with the anomaly
``labels`` active at that event, and one ``anomaly`` record per anomaly started.

Output is reproducible byte for byte for a given seed and parameters (``numpy``
``Generator(PCG64)``; each random component has its own stream, so turning on spikes does
not change the noise). Generation is vectorised over blocks of about 4096 events.

Examples
--------
>>> sim = SensorSimulator(n_sensors=2, values=("temp", "hum"), seed=7, steps=2)
>>> for key, payload, ts in sim.messages():
...     print(payload.decode())
{"kind":"sensor","sensor_id":"s-0000","ts":1704067202982,"values":{"temp":41.39,"hum":92.605}}
{"kind":"sensor","sensor_id":"s-0001","ts":1704067211301,"values":{"temp":7.621,"hum":83.643}}
{"kind":"sensor","sensor_id":"s-0000","ts":1704067261239,"values":{"temp":42.311,"hum":92.983}}
{"kind":"sensor","sensor_id":"s-0001","ts":1704067271445,"values":{"temp":8.94,"hum":83.263}}
>>> from streamseq.events import EventDecoder
>>> EventDecoder().decode(next(iter(sim.messages()))[1]).values
{'temp': 41.39, 'hum': 92.605}
"""

from __future__ import annotations

import heapq
import itertools
import json
import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields

import numpy as np

from simulators.output import Message
from simulators.truth import TruthWriter
from streamseq.events import parse_time

__all__ = ["AnomalyRates", "SensorSimulator", "ANOMALIES"]

log = logging.getLogger(__name__)

ANOMALIES = ("level_shift", "drift", "variance_burst", "stuck", "dropout", "spike")
_STREAMS = ("params", "jitter", "noise", *ANOMALIES)
_DAY = 86_400.0
_WEEK = 7 * _DAY


@dataclass(frozen=True)
class AnomalyRates:
    """Probability, per sensor step (and value), that each anomaly starts.

    Examples
    --------
    >>> AnomalyRates.uniform(0.001).spike
    0.001
    """

    level_shift: float = 0.0
    drift: float = 0.0
    variance_burst: float = 0.0
    stuck: float = 0.0
    dropout: float = 0.0
    spike: float = 0.0

    def __post_init__(self) -> None:
        for f in fields(self):
            rate = getattr(self, f.name)
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"anomaly rate {f.name}={rate} is not in [0, 1]")

    @classmethod
    def uniform(cls, rate: float) -> AnomalyRates:
        """Every anomaly at the same rate."""
        return cls(**{name: rate for name in ANOMALIES})


@dataclass
class _Episode:
    """An anomaly lasting steps [start, end) of sensor i (value v; -1 = whole sensor)."""

    kind: str
    i: int
    v: int
    start: int
    end: int
    param: float
    value: float | None = None  # stuck: the frozen reading


class SensorSimulator:
    """N sensors with seasonal, trending, noisy values and optional anomalies.

    Parameters
    ----------
    n_sensors
        Number of sensors (keys ``{key_prefix}0000`` ...).
    values
        Value names each sensor reports.
    seed
        Seed; same seed and parameters give the same bytes.
    start
        Simulated clock start (ISO 8601 or epoch ms).
    interval
        Seconds between two readings of one sensor.
    steps
        Readings per sensor; ``None`` runs forever.
    jitter
        Random part of each reading's time, as a fraction of ``interval`` (0..0.5).
    noise, daily, weekly, trend
        Noise sigma, daily and weekly amplitudes, and trend per day, relative to each
        series' scale.
    anomalies
        Start probabilities of the anomalies (all zero by default: a clean stream).
    drift_steps, burst_steps, stuck_steps, dropout_steps
        Mean length of those episodes, in steps (each drawn in [0.5, 1.5] x mean).
    decimals
        Readings are rounded to this many decimals on the wire.
    key_prefix
        Prefix of the sensor keys.

    Attributes
    ----------
    keys
        The sensor keys.
    """

    def __init__(self, n_sensors: int = 10, values: Sequence[str] = ("value",), *,
                 seed: int = 0, start: str | int = "2024-01-01T00:00:00Z",
                 interval: float = 60.0, steps: int | None = None, jitter: float = 0.05,
                 noise: float = 0.2, daily: float = 1.0, weekly: float = 0.3,
                 trend: float = 0.02, anomalies: AnomalyRates = AnomalyRates(),
                 drift_steps: int = 720, burst_steps: int = 60, stuck_steps: int = 30,
                 dropout_steps: int = 30, decimals: int = 3, key_prefix: str = "s-",
                 block_events: int = 4096) -> None:
        if n_sensors < 1:
            raise ValueError("n_sensors must be >= 1")
        if not values or len(set(values)) != len(values):
            raise ValueError(f"values must be distinct names, got {list(values)}")
        if interval <= 0 or not 0.0 <= jitter <= 0.5:
            raise ValueError("interval must be > 0 and jitter in [0, 0.5]")
        if interval * 1000 < 2:
            raise ValueError("interval must be at least 2 ms")
        self.n_sensors = n_sensors
        self.values = tuple(str(v) for v in values)
        self.seed = seed
        self.start_ms = parse_time(start)
        self.interval_ms = int(round(interval * 1000))
        self.steps = steps
        self.jitter = jitter
        self.anomalies = anomalies
        self.durations = {"drift": drift_steps, "variance_burst": burst_steps,
                          "stuck": stuck_steps, "dropout": dropout_steps}
        self.decimals = decimals
        self.block_steps = max(1, block_events // n_sensors)
        self.keys = [f"{key_prefix}{i:04d}" for i in range(n_sensors)]

        rng = self._rng("params")
        n, nv = n_sensors, len(self.values)
        scale = rng.uniform(1.0, 5.0, (n, nv))
        self.scale = scale
        self.level0 = rng.uniform(10.0, 100.0, (n, nv))
        self.slope = trend * scale * rng.standard_normal((n, nv))
        self.amp_daily = daily * scale * rng.uniform(0.5, 1.5, (n, nv))
        self.amp_weekly = weekly * scale * rng.uniform(0.5, 1.5, (n, nv))
        self.phase = rng.uniform(0.0, 2 * math.pi, (3, n, nv))
        self.sigma = noise * scale
        span = self.interval_ms * (1.0 - jitter)
        self.offset_ms = np.floor(rng.uniform(0.0, span, n)).astype(np.int64)

    def _rng(self, stream: str) -> np.random.Generator:
        tag = _STREAMS.index(stream)
        return np.random.Generator(np.random.PCG64(np.random.SeedSequence([self.seed, tag])))

    # -- public ---------------------------------------------------------------------------
    def messages(self, truth: TruthWriter | None = None) -> Iterator[Message]:
        """Yield ``(key, payload, ts_ms)`` in event-time order; truth goes to ``truth``."""
        prefixes = [f'{{"kind":"sensor","sensor_id":{json.dumps(k)},"ts":' for k in self.keys]
        names = [json.dumps(v) for v in self.values]
        mids = [',"values":{' + names[0] + ":"] + ["," + nm + ":" for nm in names[1:]]
        single = len(self.values) == 1
        mid0 = mids[0]
        pending: list[tuple[int, int, dict[str, object]]] = []  # anomaly records by ts
        tiebreak = itertools.count()
        for block in self._blocks(truth is not None):
            ts_rows, obs_rows, order_rows, present_rows, signal_rows, labels, records = block
            for rec in records:
                ts_rec = int(rec["ts"])  # type: ignore[call-overload]
                heapq.heappush(pending, (ts_rec, next(tiebreak), rec))
            for b, order in enumerate(order_rows):
                row_ts = ts_rows[b]
                row = obs_rows[b]
                present = present_rows[b] if present_rows is not None else None
                for i in order:
                    if present is not None and not present[i]:
                        continue
                    t = row_ts[i]
                    vals = row[i]
                    if single:
                        payload = f"{prefixes[i]}{t}{mid0}{vals[0]!r}}}}}"
                    else:
                        body = "".join([m + repr(x) for m, x in zip(mids, vals, strict=True)])
                        payload = f"{prefixes[i]}{t}{body}}}}}"
                    if truth is not None:
                        while pending and pending[0][0] <= t:
                            truth.write(heapq.heappop(pending)[2])
                        rec = {"type": "event", "key": self.keys[i], "ts": t,
                               "signal": dict(zip(self.values, signal_rows[b][i], strict=True))}
                        lab = labels.get((b, i))
                        if lab:
                            rec["labels"] = lab
                        truth.write(rec)
                    yield self.keys[i], payload.encode(), t
        if truth is not None:
            while pending:
                truth.write(heapq.heappop(pending)[2])

    # -- generation -----------------------------------------------------------------------
    def _blocks(self, want_truth: bool) -> Iterator[tuple]:
        n, nv = self.n_sensors, len(self.values)
        rng_jit, rng_noise = self._rng("jitter"), self._rng("noise")
        rngs = {a: self._rng(a) for a in ANOMALIES}
        level = self.level0.copy()
        last_obs = level.copy()
        active: dict[str, list[_Episode]] = {a: [] for a in ANOMALIES}
        jitter_ms = self.interval_ms * self.jitter
        k0 = 0
        while self.steps is None or k0 < self.steps:
            nb = self.block_steps if self.steps is None else min(self.block_steps, self.steps - k0)
            ks = np.arange(k0, k0 + nb, dtype=np.int64)
            ts = (self.start_ms + ks[:, None] * self.interval_ms + self.offset_ms[None, :]
                  + np.floor(rng_jit.random((nb, n)) * jitter_ms).astype(np.int64))
            t_sec = ts / 1000.0
            days = ((ts - self.start_ms) / 1000.0 / _DAY)[..., None]
            wd = (2 * math.pi / _DAY) * t_sec[..., None]
            ww = (2 * math.pi / _WEEK) * t_sec[..., None]
            signal = (level + self.slope * days
                      + self.amp_daily * (np.sin(wd + self.phase[0])
                                          + 0.3 * np.sin(2 * wd + self.phase[1]))
                      + self.amp_weekly * np.sin(ww + self.phase[2]))
            labels: dict[tuple[int, int], dict[str, list[str]]] = {}
            records: list[dict[str, object]] = []

            def label(b0: int, b1: int, i: int, v: int, name: str,
                      labels: dict[tuple[int, int], dict[str, list[str]]] = labels) -> None:
                if want_truth:
                    for b in range(b0, b1):
                        labels.setdefault((b, i), {}).setdefault(self.values[v], []).append(name)

            # new episodes of this block
            for kind in ANOMALIES:
                rate = getattr(self.anomalies, kind)
                if rate <= 0.0:
                    continue
                rng = rngs[kind]
                shape = (nb, n) if kind == "dropout" else (nb, n, nv)
                hits = np.argwhere(rng.random(shape) < rate)
                for hit in hits.tolist():
                    b, i = hit[0], hit[1]
                    v = hit[2] if len(hit) > 2 else -1
                    ep = self._new_episode(kind, rng, k0 + b, i, v)
                    active[kind].append(ep)
                    if want_truth:
                        records.append(self._record(ep, int(ts[b, i])))

            # level shifts and drifts move the signal
            for ep in active["level_shift"]:
                b = ep.start - k0
                signal[b:, ep.i, ep.v] += ep.param
                level[ep.i, ep.v] += ep.param
                label(b, b + 1, ep.i, ep.v, "level_shift")
            active["level_shift"].clear()
            still = []
            for ep in active["drift"]:
                length = ep.end - ep.start
                ramp = np.clip(ks - ep.start + 1, 0, length) * (ep.param / length)
                signal[:, ep.i, ep.v] += ramp
                label(max(ep.start - k0, 0), min(ep.end - k0, nb), ep.i, ep.v, "drift")
                if ep.end <= k0 + nb:
                    level[ep.i, ep.v] += ep.param
                else:
                    still.append(ep)
            active["drift"] = still

            # noise, bursts, spikes, stuck readings
            sigma = np.broadcast_to(self.sigma, (nb, n, nv))
            if active["variance_burst"]:
                sigma = sigma.copy()
                for ep in active["variance_burst"]:
                    b0, b1 = max(ep.start - k0, 0), min(ep.end - k0, nb)
                    sigma[b0:b1, ep.i, ep.v] *= ep.param
                    label(b0, b1, ep.i, ep.v, "variance_burst")
            obs = signal + sigma * rng_noise.standard_normal((nb, n, nv))
            for ep in active["stuck"]:
                b0, b1 = max(ep.start - k0, 0), min(ep.end - k0, nb)
                if ep.value is None:
                    ep.value = float(obs[b0 - 1, ep.i, ep.v] if b0 > 0 else last_obs[ep.i, ep.v])
                obs[b0:b1, ep.i, ep.v] = ep.value
                label(b0, b1, ep.i, ep.v, "stuck")
            for ep in active["spike"]:
                b = ep.start - k0
                obs[b, ep.i, ep.v] += ep.param * self.sigma[ep.i, ep.v]
                label(b, b + 1, ep.i, ep.v, "spike")
            active["spike"].clear()
            last_obs = obs[-1].copy()
            present = None
            if active["dropout"]:
                present = np.ones((nb, n), dtype=bool)
                for ep in active["dropout"]:
                    present[max(ep.start - k0, 0):min(ep.end - k0, nb), ep.i] = False
            for kind in ("variance_burst", "stuck", "dropout"):
                active[kind] = [ep for ep in active[kind] if ep.end > k0 + nb]

            order = np.argsort(ts, axis=1, kind="stable")
            yield (ts.tolist(), np.round(obs, self.decimals).tolist(), order.tolist(),
                   None if present is None else present.tolist(),
                   np.round(signal, self.decimals + 2).tolist() if want_truth else None,
                   labels, records)
            k0 += nb

    def _new_episode(self, kind: str, rng: np.random.Generator, k: int, i: int,
                     v: int) -> _Episode:
        sign = 1.0 if rng.random() < 0.5 else -1.0
        if kind in self.durations:
            mean = max(1, self.durations[kind])
            length = int(rng.integers(max(1, mean // 2), mean + mean // 2 + 1))
        else:
            length = 1
        if kind in ("level_shift", "drift"):
            param = sign * rng.uniform(1.0, 3.0) * float(self.scale[i, v])
        elif kind == "variance_burst":
            param = rng.uniform(3.0, 6.0)
        elif kind == "spike":
            param = sign * rng.uniform(5.0, 10.0)
        else:
            param = 0.0
        return _Episode(kind, i, v, k, k + length, float(param))

    def _record(self, ep: _Episode, ts: int) -> dict[str, object]:
        rec: dict[str, object] = {"type": "anomaly", "anomaly": ep.kind, "key": self.keys[ep.i],
                                  "ts": ts}
        if ep.v >= 0:
            rec["value"] = self.values[ep.v]
        if ep.kind in self.durations:
            rec["steps"] = ep.end - ep.start
            rec["end_ts"] = int(self.start_ms + ep.end * self.interval_ms + self.offset_ms[ep.i])
        if ep.kind in ("level_shift", "drift"):
            rec["magnitude"] = round(ep.param, 6)
        elif ep.kind == "variance_burst":
            rec["factor"] = round(ep.param, 6)
        elif ep.kind == "spike":
            rec["magnitude"] = round(ep.param * float(self.sigma[ep.i, ep.v]), 6)
        return rec
