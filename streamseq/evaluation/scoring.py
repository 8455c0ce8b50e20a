"""Prequential scoring: each forecast is scored when its target arrives.

Per key the part keeps the last ``horizon`` forecasts (the one made at the key's position
``p`` sits at ``p % horizon``), the persistence value and the forecast's unit scale of
each, and the error sums of the model and of persistence per horizon step and target.
:func:`score_event` scores one arriving event against the forecasts made 1..horizon
events earlier; :func:`record_forecast` stores a new forecast. Both are compiled and
called by the engine for every event in stream order.

What a later part (expert mixtures, conformal intervals) gets per forecast: the model's
forecast in the transformed, scaled space (``EngineOutput.yhat_z``), the key's unit scale
(``EngineOutput.scale``) and the mean/std used (:attr:`Scoring.arrays` of the features
part hold the key's statistics); such a part keeps its own per-key arrays (a
:class:`~streamseq.state.SlotArrays` attached to the key table under its own name).
"""

from __future__ import annotations

import math

import numba as nb
import numpy as np

from streamseq.evaluation.metrics import METRIC_ARRAYS, ErrorTotals
from streamseq.features.transforms import CODES
from streamseq.state.table import SlotArrays

__all__ = ["Scoring", "score_event", "record_forecast"]

_LOGRET, _LOG1P = CODES["logret"], CODES["log1p"]


class Scoring:
    """Pending forecasts and error sums of every key.

    Parameters
    ----------
    horizon, n_targets
        Forecast steps and target columns.

    Examples
    --------
    >>> s = Scoring(2, 1)
    >>> sorted(s.arrays)[:4], s.arrays.nbytes_per_slot
    (['cnt', 'forecast', 'm_abs', 'm_sq'], 144)
    """

    def __init__(self, horizon: int, n_targets: int) -> None:
        h, t = horizon, n_targets
        self.horizon = h
        self.n_targets = t
        self.evicted = ErrorTotals.zeros(h, t)  # error sums of keys no longer held
        self.arrays = SlotArrays({
            "forecast": ((h, h, t), np.float64, np.nan),  # made at position p, at p % h
            "unit": ((h, t), np.float64, 1.0),  # the forecast's unit scale
            "persistence": ((h, t), np.float64, np.nan),  # the key's value at position p
            **{name: ((h, t), np.float64, 0.0) for name in METRIC_ARRAYS},
        })

    def key_totals(self, slot: int) -> ErrorTotals:
        return ErrorTotals(*(self.arrays[n][slot].copy() for n in METRIC_ARRAYS))

    def totals(self, slots: np.ndarray) -> ErrorTotals:
        """Error sums of ``slots`` plus those of evicted keys."""
        t = ErrorTotals.from_arrays({n: self.arrays[n][slots].sum(axis=0)
                                     for n in METRIC_ARRAYS})
        t.add(self.evicted)
        return t

    def forget(self, slots: np.ndarray) -> None:
        """Keep the error sums of keys about to be evicted."""
        self.evicted.add(ErrorTotals.from_arrays(
            {n: self.arrays[n][slots].sum(axis=0) for n in METRIC_ARRAYS}))


@nb.njit(cache=True, nogil=True, error_model="numpy")
def score_event(slot: int, position: int, truth: np.ndarray, forecast: np.ndarray,
                unit: np.ndarray, persistence: np.ndarray, m_abs: np.ndarray,
                m_sq: np.ndarray, p_abs: np.ndarray, p_sq: np.ndarray, cnt: np.ndarray,
                err_model: np.ndarray, err_persistence: np.ndarray,
                scale: np.ndarray, one_step: np.ndarray) -> int:
    """Score the key's forecasts whose target is this event (``truth [targets]``).

    Writes the errors (truth minus forecast, NaN where none) and scales per horizon step
    into the output rows and adds them to the key's sums. ``one_step`` receives the
    one-step absolute errors of model and persistence divided by their scale, summed over
    targets (for the z-scored totals and the drift detector); returns how many targets
    were scored one step ahead.
    """
    horizon = forecast.shape[1]
    n_t = truth.shape[0]
    one_step[0] = 0.0
    one_step[1] = 0.0
    scored = 0
    for j in range(1, horizon + 1):
        if position < j:
            continue
        age = (position - j) % horizon
        for c in range(n_t):
            em = truth[c] - forecast[slot, age, j - 1, c]
            ep = truth[c] - persistence[slot, age, c]
            sc = unit[slot, age, c]
            scale[j - 1, c] = sc
            if math.isnan(em) or math.isnan(ep):
                continue
            err_model[j - 1, c] = em
            err_persistence[j - 1, c] = ep
            m_abs[slot, j - 1, c] += abs(em)
            m_sq[slot, j - 1, c] += em * em
            p_abs[slot, j - 1, c] += abs(ep)
            p_sq[slot, j - 1, c] += ep * ep
            cnt[slot, j - 1, c] += 1.0
            if j == 1:
                one_step[0] += abs(em) / sc
                one_step[1] += abs(ep) / sc
                scored += 1
    return scored


@nb.njit(cache=True, nogil=True, error_model="numpy")
def record_forecast(slot: int, position: int, y_scaled: np.ndarray, mean: np.ndarray,
                    std: np.ndarray, last: np.ndarray, unknown: np.ndarray,
                    codes: np.ndarray, forecast: np.ndarray, unit: np.ndarray,
                    persistence: np.ndarray, yhat: np.ndarray) -> None:
    """Turn the model's scaled forecast ``y_scaled [horizon, targets]`` into original
    units (``yhat``), and keep it with its unit scale and the persistence value ``last``.

    Log returns compound on the last value (``last * exp(cumulative return)``), log1p
    values are ``expm1``-ed; a target the key never showed is NaN.
    """
    horizon, n_t = y_scaled.shape
    at = position % horizon
    for c in range(n_t):
        code = codes[c]
        cum = 0.0
        for j in range(horizon):
            u = y_scaled[j, c] * std[c] + mean[c]
            if code == _LOGRET:
                cum += u
                val = last[c] * math.exp(min(max(cum, -50.0), 50.0))
            elif code == _LOG1P:
                val = math.expm1(u)
            else:
                val = u
            yhat[j, c] = np.nan if unknown[c] else val
            forecast[slot, at, j, c] = yhat[j, c]
        if code == _LOGRET:
            sc = abs(last[c]) * std[c]
        elif code == _LOG1P:
            sc = (1.0 + abs(last[c])) * std[c]
        else:
            sc = std[c]
        unit[slot, at, c] = sc if (math.isfinite(sc) and sc > 0) else 1.0
        persistence[slot, at, c] = last[c]
