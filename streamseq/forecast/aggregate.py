"""Per-key aggregation of forecasters, with prediction intervals and anomaly flags.

For each event of a key, in stream order, :class:`ExpertAggregator` (one compiled pass over
the events of a call, whatever keys they belong to):

1. **scores** the forecasts whose target is this event: each forecaster's error (totals in
   original units), the mixture's weights (:mod:`~streamseq.forecast.mixture`) and each
   interval's working level (:mod:`~streamseq.forecast.conformal`); an arrival outside the
   wide (anomaly) interval of its one-step forecast is flagged;
2. **learns** the event: the key's scale, the smoother, the season ring and evidence, the
   linear expert;
3. **forecasts** ``horizon`` steps with every expert, mixes them with the recurrent model's
   forecast, and puts an interval around the mixture.

Everything happens in the engine's transformed space, here called *path space*: levels
for level channels, the logarithm of the price for prices (so a change is the log return
the engine models, and persistence is the random walk), ``log1p`` of sizes. Forecasts,
intervals and errors are given back in original units. Losses and the season test are
scale-free: errors are divided by the key's *scale*, its mean absolute one-step change
(the denominator of MASE, Hyndman & Koehler 2006), a running mean over at most
``SCALE_MEMORY`` changes.

Forecasters (the names of the ``forecaster`` metric label): ``model`` (the recurrent
model, given by the caller), ``persistence`` (the last value; the random walk for prices),
``smoother`` (damped Holt), ``seasonal`` (the value one season before the target, when the
key has a season), ``linear`` (RLS autoregression on changes) and their ``mixture``. An
expert without a forecast sleeps (the model before a key has shown a value, the seasonal
expert before a season is known); for the error totals a sleeping expert is scored as
persistence, so every forecaster is scored on the same cells.

Per-key state lives in :class:`~streamseq.state.table.SlotArrays` indexed by the
engine's key slot; results depend only on each key's events in order, not on how they
were cut into calls or which keys shared a call.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch
from numba import njit

from streamseq.config import ForecastConfig
from streamseq.features.transforms import CODES
from streamseq.forecast.autoregression import rls_predict, rls_reset, rls_update
from streamseq.forecast.conformal import Q_MAX, aci_step, quantile_multiplier, winkler
from streamseq.forecast.mixture import SAFE_RATE, fixed_share_update, mix, prod_step
from streamseq.forecast.seasonal import PROBE, candidate_period, has_season, typical_interval
from streamseq.forecast.smoothing import holt_forecast, holt_update
from streamseq.state.table import SlotArrays

__all__ = ["FORECASTERS", "EXPERTS", "ExpertAggregator", "Aggregated", "to_path",
           "from_path", "summarize_totals", "add_totals"]

FORECASTERS = ("model", "persistence", "smoother", "seasonal", "linear", "mixture")
EXPERTS = FORECASTERS[:-1]
MODEL, PERSISTENCE, SMOOTHER, SEASONAL, LINEAR, MIXTURE = range(6)
N_EXPERTS = len(EXPERTS)
CLIP = 8.0  # scale units: the linear expert's regressors and forecast changes
SCALE_MEMORY = 1000.0  # changes averaged into a key's scale (then exponentially weighted)
SPREAD_FLOOR = 1e-3  # an interval's spread is at least this share of the key's scale
SAFE_SCALE = 2.0  # scale units of a full (A,B)-Prod gain (chosen on bench.peers' TUNING sets)
PRIOR = 1.0  # prior variance of the linear expert's coefficients (scale units)
TOTALS = ("tot_abs", "tot_sq", "tot_n", "cov_in", "cov_n", "width", "winkler", "anomalies")

_LOGRET, _LOG1P = CODES["logret"], CODES["log1p"]


class Params(NamedTuple):
    alpha: float
    beta: float
    phi: float
    forgetting: float
    share: float
    miscoverage: float
    anomaly_miscoverage: float
    aci_rate: float
    spread_rate: float
    period: int  # -1 detect, 0 none, else events per season
    max_period: int
    mixed: int  # bit e set: expert e may enter the mixture
    safe: bool  # combine the mixture with persistence by (A,B)-Prod


def to_path(codes: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Original units to path space along the last axis (``codes`` per channel).

    >>> to_path(np.array([0, 1, 2]), np.array([[2.0, np.e, 0.0]])).tolist()
    [[2.0, 1.0, 0.0]]
    """
    out = np.array(x, dtype=np.float64, copy=True)
    lr = codes == _LOGRET
    if lr.any():
        with np.errstate(divide="ignore", invalid="ignore"):
            p = out[..., lr]
            out[..., lr] = np.where(p > 0, np.log(np.where(p > 0, p, 1.0)), np.nan)
    l1 = codes == _LOG1P
    if l1.any():
        out[..., l1] = np.log1p(np.maximum(out[..., l1], 0.0))
    return out


def from_path(codes: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Path space back to original units along the last axis.

    >>> from_path(np.array([0, 1, 2]), np.array([[2.0, 0.0, 0.0]])).tolist()
    [[2.0, 1.0, 0.0]]
    """
    out = np.array(x, dtype=np.float64, copy=True)
    lr = codes == _LOGRET
    if lr.any():
        out[..., lr] = np.exp(np.clip(out[..., lr], -700.0, 700.0))
    l1 = codes == _LOG1P
    if l1.any():
        out[..., l1] = np.expm1(np.clip(out[..., l1], -700.0, 700.0))
    return out


@njit(cache=True)
def _original(code: int, x: float) -> float:
    if code == _LOGRET:
        return math.exp(min(max(x, -700.0), 700.0))
    if code == _LOG1P:
        return math.expm1(min(max(x, -700.0), 700.0))
    return x


@njit(cache=True)
def _scale(scale: float, count: float, last: float) -> float:
    floor = 1e-12 + 1e-9 * abs(last) if math.isfinite(last) else 1e-12
    return max(scale, floor) if count > 0 else floor


@njit(cache=True)
def _spread(spread: float, count: float, scale: float, changes: float, h: int) -> float:
    """The residual spread of an interval: the running mean absolute residual, at least
    ``SPREAD_FLOOR`` of the key's scale (a stretch of exact forecasts cannot shrink it to
    nothing); before any residual, the scale times ``sqrt(h)``; NaN before any change."""
    if count > 0:
        return max(spread, SPREAD_FLOOR * scale)
    return scale * math.sqrt(h) if changes > 0 else math.nan


@njit(cache=True)
def _clip(x: float) -> float:
    return min(max(x, -CLIP), CLIP)


@dataclass
class Aggregated:
    """What one :meth:`ExpertAggregator.process` call gives, row ``i`` for event ``i``.

    Attributes
    ----------
    yhat, lo, hi
        ``[n, horizon, channels]``: the mixture's forecast and its interval at the
        configured coverage, original units (NaN where the key has no value yet).
    anomaly
        ``[n, channels]``: the arriving value fell outside the anomaly interval of its
        one-step forecast.
    checked
        ``[n, channels, 3]``: that one-step forecast and its anomaly interval (lo, hi),
        original units (NaN where nothing was checked).
    errors
        ``[n, channels, forecasters]``: truth minus each forecaster's one-step forecast
        (order of :data:`FORECASTERS`), original units, NaN where nothing was scored.
    covered
        ``[n, channels, 2]``: whether the arriving value fell inside the one-step interval
        (1 or 0, NaN where none was scored) and that interval's width, original units.
    weights
        ``[n, horizon, channels, experts]`` mixing weights of the awake experts (order of
        :data:`EXPERTS`), when asked for.
    """

    yhat: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    anomaly: np.ndarray
    checked: np.ndarray
    errors: np.ndarray
    covered: np.ndarray
    weights: np.ndarray | None = None


class ExpertAggregator:
    """Experts, their per-key mixture and adaptive conformal intervals for one shard.

    Parameters
    ----------
    config
        Experts, mixture and interval settings.
    codes
        Transform code of each target channel (:data:`streamseq.features.transforms.CODES`).
    horizon
        Forecast steps.
    capacity
        Initial key slots (grown on demand).

    Examples
    --------
    >>> agg = ExpertAggregator(ForecastConfig(), np.array([0]), horizon=1)
    >>> y = 10.0 + np.sin(np.arange(400) / 5.0)
    >>> out = agg.process(np.zeros(400, np.int64), 60_000 * np.arange(400), y[:, None])
    >>> out.yhat.shape, bool(np.isfinite(out.lo[1:]).all())
    ((400, 1, 1), True)
    >>> t = agg.totals(); mae = t["tot_abs"][0, 0] / t["tot_n"][0, 0]
    >>> bool(mae[FORECASTERS.index("mixture")] < mae[FORECASTERS.index("persistence")])
    True
    """

    def __init__(self, config: ForecastConfig, codes: Sequence[int] | np.ndarray, horizon: int,
                 capacity: int = 64) -> None:
        self.config = config
        self.codes = np.asarray(codes, dtype=np.int64)
        self.horizon = horizon
        c, h, e, f = len(self.codes), horizon, N_EXPERTS, len(FORECASTERS)
        d = 2 + config.ar_lags
        r = config.max_period + 1
        mixed = 1 << MODEL
        for name in config.experts:
            mixed |= 1 << EXPERTS.index(name)
        self.params = Params(
            config.smoother_alpha, config.smoother_beta, config.smoother_phi,
            config.ar_forgetting, config.share,
            1.0 - config.coverage, 1.0 - config.anomaly_coverage, config.aci_rate,
            config.spread_rate, -1 if config.period is None else config.period,
            config.max_period, mixed, bool(config.experts))
        f64, i64, nan = np.float64, np.int64, math.nan
        self.state = SlotArrays({
            "n": ((), i64, 0),
            "last_ts": ((), i64, 0),
            "interval": ((), f64, 0.0),
            "period": ((), i64, 0),
            "ring_from": ((), i64, 0),
            "last": ((c,), f64, nan),
            "scale": ((c,), f64, 0.0),
            "scale_n": ((c,), f64, 0.0),
            "level": ((c,), f64, nan),
            "trend": ((c,), f64, 0.0),
            "ring": ((r, c), f64, nan),
            "season": ((c, 4), f64, 0.0),  # pairs, sum xy, sum xx, sum yy
            "lags": ((c, config.ar_lags), f64, 0.0),
            "theta": ((c, d), f64, 0.0),
            "cov": ((c, d, d), f64, nan),  # NaN: not started (set to PRIOR * I on first use)
            "pend": ((h, h, c, e + 2), f64, nan),  # experts, published, hedge
            "pend_q": ((h, h, c, 2), f64, nan),
            "pend_awake": ((h, h, c), i64, 0),
            "weights": ((h, c, e), f64, 1.0 / e),
            "gap": ((h, c), f64, 0.0),
            "safe": ((h, c), f64, SAFE_RATE),  # (A,B)-Prod weight of the hedge
            "aci": ((h, c, 2), f64, nan),
            "spread": ((h, c), f64, 0.0),
            "spread_n": ((h, c), f64, 0.0),
            "tot_abs": ((h, c, f), f64, 0.0),
            "tot_sq": ((h, c, f), f64, 0.0),
            "tot_n": ((h, c), f64, 0.0),
            "cov_in": ((h, c), f64, 0.0),
            "cov_n": ((h, c), f64, 0.0),
            "width": ((h, c), f64, 0.0),
            "winkler": ((h, c), f64, 0.0),
            "anomalies": ((c,), f64, 0.0),
        }, capacity)
        self.evicted = {name: np.zeros(self.state.specs[name][0]) for name in TOTALS}

    # ------------------------------------------------------------------ main path
    def process(self, slots: np.ndarray, ts: np.ndarray, values: np.ndarray,
                model: np.ndarray | None = None, *, weights: bool = False,
                scoring: bool = True) -> Aggregated:
        """Score, learn and forecast the events ``(slots[i], ts[i], values[i])`` in order.

        ``values [n, channels]`` and ``model [n, horizon, channels]`` (the recurrent model's
        forecast made at each event; NaN or ``None``: no model forecast) are in original
        units. Slots may repeat (a run of one key); each key's events must come in its
        stream order. Without ``scoring`` the events are learned and forecast but add
        nothing to the totals (a warm-up or context span).
        """
        slots = np.ascontiguousarray(slots, dtype=np.int64)
        n, c, h = len(slots), len(self.codes), self.horizon
        if n and int(slots.max()) >= self.state.capacity:
            cap = max(self.state.capacity, 1)
            while cap <= int(slots.max()):
                cap *= 2
            self.state.grow(cap)
        y = np.ascontiguousarray(to_path(self.codes, np.asarray(values, dtype=np.float64)))
        mp = (np.full((n, h, c), np.nan) if model is None
              else np.ascontiguousarray(to_path(self.codes, np.asarray(model, np.float64))))
        nan = np.nan
        out = Aggregated(np.full((n, h, c), nan), np.full((n, h, c), nan),
                         np.full((n, h, c), nan), np.zeros((n, c), dtype=np.bool_),
                         np.full((n, c, 3), nan), np.full((n, c, len(FORECASTERS)), nan),
                         np.full((n, c, 2), nan),
                         np.full((n, h, c, N_EXPERTS), nan) if weights else None)
        w_out = out.weights if out.weights is not None else np.zeros((0, h, c, N_EXPERTS))
        s = self.state
        _run(slots, np.ascontiguousarray(ts, dtype=np.int64), y, mp, self.codes, self.params,
             s["n"], s["last_ts"], s["interval"], s["period"], s["ring_from"], s["last"],
             s["scale"], s["scale_n"], s["level"], s["trend"], s["ring"], s["season"],
             s["lags"], s["theta"], s["cov"], s["pend"], s["pend_q"], s["pend_awake"],
             s["weights"], s["gap"], s["safe"], s["aci"], s["spread"], s["spread_n"], s["tot_abs"],
             s["tot_sq"], s["tot_n"], s["cov_in"], s["cov_n"], s["width"], s["winkler"],
             s["anomalies"], out.yhat, out.lo, out.hi, out.anomaly, out.checked, out.errors,
             out.covered, w_out, weights, scoring)
        return out

    # ------------------------------------------------------------------ key slots
    def reset(self, slots: Sequence[int] | np.ndarray) -> None:
        """Forget the keys in ``slots`` (fresh state; their totals are dropped)."""
        self.state.reset(slots)

    def forget(self, slots: Sequence[int] | np.ndarray) -> None:
        """Keep the totals of keys about to be evicted (the key table then resets them)."""
        idx = np.asarray(slots, dtype=np.int64)
        idx = idx[idx < self.state.capacity]
        for name in TOTALS:
            self.evicted[name] += self.state[name][idx].sum(axis=0)

    # ------------------------------------------------------------------ reporting
    def totals(self, slots: Sequence[int] | np.ndarray | None = None,
               evicted: bool = False) -> dict[str, np.ndarray]:
        """Error, coverage and anomaly sums over ``slots`` (default: every slot, with the
        evicted keys' sums), plus the evicted keys' with ``evicted``:
        ``tot_abs``/``tot_sq [horizon, channels, forecasters]``, ``tot_n``, ``cov_in``,
        ``cov_n``, ``width``, ``winkler [horizon, channels]``, ``anomalies [channels]``."""
        idx = (np.arange(self.state.capacity) if slots is None
               else np.asarray(slots, dtype=np.int64))
        add = evicted or slots is None
        return {n: self.state[n][idx].sum(axis=0) + (self.evicted[n] if add else 0.0)
                for n in TOTALS}

    def key_weights(self, slot: int) -> np.ndarray:
        """The mixing weights ``[horizon, channels, experts]`` of one key (all experts,
        summing to 1)."""
        return self.state["weights"][slot].copy()

    def nbytes_per_key(self) -> int:
        return self.state.nbytes_per_slot

    # ------------------------------------------------------------------ persistence
    def state_dict(self) -> dict[str, Any]:
        """State as tensors and plain types (``torch.load(weights_only=True)``)."""
        rows = np.arange(self.state.capacity)
        return {"capacity": self.state.capacity, "rows": self.state.state_dict(rows),
                "evicted": {n: torch.from_numpy(a.copy()) for n, a in self.evicted.items()}}

    def load_state_dict(self, d: dict[str, Any]) -> None:
        cap = int(d["capacity"])
        self.state.grow(cap)
        self.state.load_rows(np.arange(cap), d["rows"])
        self.evicted = {n: d["evicted"][n].numpy().copy() for n in TOTALS}


def add_totals(a: dict[str, np.ndarray] | None, b: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Sum two :meth:`ExpertAggregator.totals` (summed over channels, so shards with other
    targets add up)."""
    flat = {n: (v.sum(axis=1) if n != "anomalies" else v.sum(keepdims=True))
            for n, v in b.items()}
    if a is None:
        return flat
    return {n: a[n] + flat[n] for n in a}


def summarize_totals(t: dict[str, np.ndarray], coverage: float) -> dict[str, Any]:
    """Per forecaster MAE, RMSE and MASE (against one-step persistence, as the engine's
    summary), and the interval's coverage, mean width and mean Winkler score (original
    units), from :meth:`ExpertAggregator.totals` or :func:`add_totals`.

    >>> agg = ExpertAggregator(ForecastConfig(), np.array([0]), 1)
    >>> _ = agg.process(np.zeros(50, np.int64), np.arange(50) * 1000, np.arange(50.0)[:, None])
    >>> s = summarize_totals(agg.totals(), 0.9)
    >>> s["forecasters"]["persistence"]["mase"], s["interval"]["nominal"]
    (1.0, 0.9)
    """
    n = float(t["tot_n"].sum())
    naive = float(t["tot_abs"][0, ..., PERSISTENCE].sum() / max(t["tot_n"][0].sum(), 1.0))
    out: dict[str, Any] = {"forecasters": {}}
    for f, name in enumerate(FORECASTERS):
        if n == 0:
            out["forecasters"][name] = {"mae": None, "rmse": None, "mase": None}
            continue
        mae = float(t["tot_abs"][..., f].sum() / n)
        out["forecasters"][name] = {"mae": mae,
                                    "rmse": float(np.sqrt(t["tot_sq"][..., f].sum() / n)),
                                    "mase": mae / naive if naive > 0 else None}
    cn = float(t["cov_n"].sum())
    out["interval"] = {"nominal": coverage,
                       "coverage": float(t["cov_in"].sum() / cn) if cn else None,
                       "width": float(t["width"].sum() / cn) if cn else None,
                       "winkler": float(t["winkler"].sum() / cn) if cn else None,
                       "scored": int(cn)}
    out["anomalies"] = int(t["anomalies"].sum())
    return out


# ---------------------------------------------------------------------- the compiled pass
@njit(cache=True)
def _run(slots, ts, y, model, codes, prm, n, last_ts, interval, period, ring_from, last,  # noqa: C901, PLR0912, PLR0913, PLR0915
         scale, scale_n, level, trend, ring, season, lags, theta, cov, pend, pend_q,
         pend_awake, weights, gap, safe, aci, spread, spread_n, tot_abs, tot_sq, tot_n, cov_in,
         cov_n, width, wink, anomalies, out_yhat, out_lo, out_hi, out_anom, out_checked,
         out_err, out_cov, out_w, want_w, count):  # pragma: no cover - compiled; tested via ExpertAggregator
    n_events, channels = y.shape
    horizon = model.shape[1]
    n_exp = N_EXPERTS
    n_lags = lags.shape[2]
    d = theta.shape[2]
    misc = (prm.miscoverage, prm.anomaly_miscoverage)
    fc = np.empty(n_exp)
    loss = np.empty(n_exp)
    awake = np.empty(n_exp, dtype=np.bool_)
    x = np.empty(d)
    buf = np.empty(n_lags)
    for i in range(n_events):
        k = slots[i]
        j = n[k]
        # ---- the key's interval and season
        if j > 0:
            interval[k] = typical_interval(interval[k], float(ts[i] - last_ts[k]))
        last_ts[k] = ts[i] if j == 0 else max(last_ts[k], ts[i])
        if prm.period > 0 and j == 0:
            period[k] = prm.period
            ring_from[k] = 0
        elif prm.period < 0 and j == PROBE:
            period[k] = candidate_period(interval[k], prm.max_period)
            ring_from[k] = j
        m = period[k]
        ring_len = m + 1

        # ---- 1. score the forecasts whose target is this event
        for h in range(1, horizon + 1):
            if j < h:
                break
            o = (j - h) % horizon
            for c in range(channels):
                yc = y[i, c]
                fm = pend[k, o, h - 1, c, n_exp]
                if math.isnan(yc) or math.isnan(fm):
                    continue
                code = codes[c]
                s = _scale(scale[k, c], scale_n[k, c], last[k, c])
                truth = _original(code, yc)
                for f in range(n_exp + 1):
                    err = truth - _original(code, pend[k, o, h - 1, c, f])
                    if count:
                        tot_abs[k, h - 1, c, f] += abs(err)
                        tot_sq[k, h - 1, c, f] += err * err
                    if h == 1:
                        out_err[i, c, f] = err
                if count:
                    tot_n[k, h - 1, c] += 1.0
                if scale_n[k, c] > 0:  # else no scale yet to weigh the errors with
                    bits = pend_awake[k, o, h - 1, c]
                    for e in range(n_exp):
                        awake[e] = (bits >> e) & 1 == 1
                        fe = pend[k, o, h - 1, c, e]
                        loss[e] = min(abs(yc - fe) / s, CLIP)
                    gap[k, h - 1, c] = fixed_share_update(weights[k, h - 1, c], gap[k, h - 1, c],
                                                          loss, awake, prm.share)
                    if prm.safe:
                        hedge = pend[k, o, h - 1, c, n_exp + 1]
                        pers = pend[k, o, h - 1, c, PERSISTENCE]
                        gain = (abs(yc - pers) - abs(yc - hedge)) / (SAFE_SCALE * s)
                        safe[k, h - 1, c] = prod_step(safe[k, h - 1, c], gain, prm.share)
                res = abs(yc - fm)
                for lv in range(2):
                    q = pend_q[k, o, h - 1, c, lv]
                    if math.isnan(q):
                        continue
                    miss = res > q
                    aci[k, h - 1, c, lv] = aci_step(aci[k, h - 1, c, lv], misc[lv], miss,
                                                    prm.aci_rate)
                    lo = _original(code, fm - q)
                    hi = _original(code, fm + q)
                    if lv == 0:
                        if h == 1:
                            out_cov[i, c, 0] = 0.0 if miss else 1.0
                            out_cov[i, c, 1] = hi - lo
                        if count:
                            cov_n[k, h - 1, c] += 1.0
                            cov_in[k, h - 1, c] += 0.0 if miss else 1.0
                            width[k, h - 1, c] += hi - lo
                            wink[k, h - 1, c] += winkler(lo, hi, truth, misc[0])
                    elif h == 1:
                        out_anom[i, c] = miss
                        anomalies[k, c] += 1.0 if miss and count else 0.0
                        out_checked[i, c, 0] = _original(code, fm)
                        out_checked[i, c, 1] = lo
                        out_checked[i, c, 2] = hi
                # the spread is winsorized at Q_MAX of itself: one wild outlier cannot blow
                # it up, yet it can grow twenty-fold a step after a quiet stretch
                cap = Q_MAX * _spread(spread[k, h - 1, c], spread_n[k, h - 1, c], s, scale_n[k, c], h)
                r = min(res, cap) if math.isfinite(cap) else res
                cnt = spread_n[k, h - 1, c] + 1.0
                spread[k, h - 1, c] += max(1.0 / cnt, prm.spread_rate) * (r - spread[k, h - 1, c])
                spread_n[k, h - 1, c] = cnt

        # ---- 2. learn the event
        for c in range(channels):
            yc = y[i, c]
            prev = last[k, c]
            obs = not math.isnan(yc)
            s = _scale(scale[k, c], scale_n[k, c], prev)
            seasonal_change = 0.0
            if m > 0 and j - m - 1 >= ring_from[k]:
                then = ring[k, (j - m) % ring_len, c] - ring[k, j % ring_len, c]
                if math.isfinite(then):
                    st = season[k, c]
                    if obs and math.isfinite(prev):
                        now = yc - prev
                        st[0] += 1.0
                        st[1] += now * then
                        st[2] += now * now
                        st[3] += then * then
                    if prm.period > 0 or has_season(st[1], st[2], st[3], st[0], m):
                        seasonal_change = then
            if obs and math.isfinite(prev):
                change = yc - prev
                if math.isnan(cov[k, c, 0, 0]):
                    rls_reset(theta[k, c], cov[k, c], PRIOR)
                x[0] = 1.0
                for a in range(n_lags):
                    x[1 + a] = _clip(lags[k, c, a] / s)
                x[d - 1] = _clip(seasonal_change / s)
                rls_update(theta[k, c], cov[k, c], x, _clip(change / s), prm.forgetting, PRIOR)
                for a in range(n_lags - 1, 0, -1):
                    lags[k, c, a] = lags[k, c, a - 1]
                lags[k, c, 0] = change
                cnt = scale_n[k, c] + 1.0
                scale[k, c] += (abs(change) - scale[k, c]) / min(cnt, SCALE_MEMORY)
                scale_n[k, c] = cnt
            if obs:
                if math.isnan(level[k, c]):
                    level[k, c] = yc
                    trend[k, c] = 0.0
                else:
                    level[k, c], trend[k, c] = holt_update(level[k, c], trend[k, c], yc,
                                                           prm.alpha, prm.beta, prm.phi)
                last[k, c] = yc
            if m > 0:
                ring[k, j % ring_len, c] = last[k, c]
        n[k] = j + 1

        # ---- 3. forecast
        slot_h = j % horizon
        for c in range(channels):
            lc = last[k, c]
            code = codes[c]
            if math.isnan(lc):
                for h in range(horizon):
                    pend[k, slot_h, h, c, :] = math.nan
                    pend_q[k, slot_h, h, c, :] = math.nan
                continue
            s = _scale(scale[k, c], scale_n[k, c], lc)
            st = season[k, c]
            seasonal = m > 0 and j - m >= ring_from[k] and (
                prm.period > 0 or has_season(st[1], st[2], st[3], st[0], m))
            for a in range(n_lags):
                buf[a] = lags[k, c, a]
            path = lc
            started = not math.isnan(cov[k, c, 0, 0])
            for h in range(1, horizon + 1):
                fc[PERSISTENCE] = lc
                fc[SMOOTHER] = holt_forecast(level[k, c], trend[k, c], prm.phi, h)
                back = j + h - m * ((h + m - 1) // m) if m > 0 else 0
                fc[SEASONAL] = ring[k, back % ring_len, c] if seasonal else lc
                x[0] = 1.0
                for a in range(n_lags):
                    x[1 + a] = _clip(buf[a] / s)
                then = 0.0
                if seasonal and h <= m:
                    then = ring[k, (j + h - m) % ring_len, c] - ring[k, (j + h - m - 1) % ring_len, c]
                x[d - 1] = _clip(then / s)
                step = _clip(rls_predict(theta[k, c], x)) * s if started else 0.0
                path += step
                for a in range(n_lags - 1, 0, -1):
                    buf[a] = buf[a - 1]
                buf[0] = step
                fc[LINEAR] = path
                mv = model[i, h - 1, c]
                fc[MODEL] = mv if math.isfinite(mv) else lc
                bits = 0
                for e in range(n_exp):
                    ok = (prm.mixed >> e) & 1 == 1
                    if e == MODEL:
                        ok = ok and math.isfinite(mv)
                    elif e == SEASONAL:
                        ok = ok and seasonal
                    awake[e] = ok
                    if ok:
                        bits |= 1 << e
                hedge = mix(weights[k, h - 1, c], fc, awake)
                trust = safe[k, h - 1, c] / (safe[k, h - 1, c] + 1.0 - SAFE_RATE) if prm.safe else 1.0
                yhat = trust * hedge + (1.0 - trust) * lc if trust < 1.0 else hedge
                pend[k, slot_h, h - 1, c, n_exp + 1] = hedge
                for e in range(n_exp):
                    pend[k, slot_h, h - 1, c, e] = fc[e]
                pend[k, slot_h, h - 1, c, n_exp] = yhat
                pend_awake[k, slot_h, h - 1, c] = bits
                sp = _spread(spread[k, h - 1, c], spread_n[k, h - 1, c], s, scale_n[k, c], h)
                for lv in range(2):
                    if math.isnan(aci[k, h - 1, c, lv]):
                        aci[k, h - 1, c, lv] = misc[lv]
                    pend_q[k, slot_h, h - 1, c, lv] = quantile_multiplier(
                        aci[k, h - 1, c, lv]) * sp
                q = pend_q[k, slot_h, h - 1, c, 0]
                out_yhat[i, h - 1, c] = _original(code, yhat)
                out_lo[i, h - 1, c] = _original(code, yhat - q)
                out_hi[i, h - 1, c] = _original(code, yhat + q)
                if want_w:
                    total = 0.0
                    for e in range(n_exp):
                        if awake[e]:
                            total += weights[k, h - 1, c, e]
                    for e in range(n_exp):
                        we = trust * weights[k, h - 1, c, e] / total if awake[e] else 0.0
                        out_w[i, h - 1, c, e] = we + (1.0 - trust if e == PERSISTENCE else 0.0)
