"""One event's model inputs from its raw values and its key's history.

For each event: missing values are carried forward (with a missingness flag), values are
transformed (level, log return, log1p), folded into the key's running mean and variance
(river ``StandardScaler`` semantics, see :mod:`streamseq.features.scaling`), z-scored and
clipped; the time gap and calendar features are appended. :func:`featurize` does this for one
event in compiled code (the engine calls it for every event in stream order); the key's
statistics live in :attr:`FeaturePipeline.arrays`.
"""

from __future__ import annotations

import math

import numba as nb
import numpy as np

from streamseq.config import EngineConfig
from streamseq.features.calendar import N_CALENDAR
from streamseq.features.transforms import CODES, default_transform
from streamseq.state.table import SlotArrays

__all__ = ["FeaturePipeline", "featurize"]

_LEVEL, _LOGRET, _LOG1P = CODES["level"], CODES["logret"], CODES["log1p"]
_DAY_MS = 86_400_000
_WEEK_MS = 7 * _DAY_MS
_WEEK_SHIFT_MS = 3 * _DAY_MS


class FeaturePipeline:
    """The feature settings of a shard and each key's statistics.

    Parameters
    ----------
    config
        The engine configuration (``features``, ``kind``).
    names
        The shard's value names, targets first.
    n_targets
        How many of ``names`` are forecast.

    Examples
    --------
    >>> f = FeaturePipeline(EngineConfig(kind="price"), ("price", "size"), 1)
    >>> f.codes.tolist(), f.n_inputs  # log return, log1p; 2 values, 2 flags, dt, calendar
    ([1, 2], 9)
    """

    def __init__(self, config: EngineConfig, names: tuple[str, ...], n_targets: int) -> None:
        fc = config.features
        self.config = fc
        transforms = [fc.transforms.get(n, default_transform(config.kind, n)) for n in names]
        self.codes = np.array([CODES[x] for x in transforms], dtype=np.int64)
        self.target_codes = self.codes[:n_targets]
        v = len(names)
        self.n_values = v
        self.n_inputs = 2 * v + (1 if fc.dt else 0) + (N_CALENDAR if fc.calendar else 0)
        self.fixed = fc.scaling == "fixed"
        self.arrays = SlotArrays({
            "last_raw": ((v,), np.float64, np.nan),  # last known value (carried)
            "count": ((v + 1,), np.float64, 0.0),  # scaler: values then the time gap
            "mean": ((v + 1,), np.float64, 0.0),
            "m2": ((v + 1,), np.float64, 0.0),
            "frozen": ((), np.bool_, False),
            "gap_ema": ((), np.float64, 0.0),  # typical time between events (target_ts)
        })


@nb.njit(cache=True, nogil=True, error_model="numpy")
def featurize(slot: int, raw: np.ndarray, position: int, gap_ms: int, ts: int,
              codes: np.ndarray, last_raw: np.ndarray, count: np.ndarray, mean: np.ndarray,
              m2: np.ndarray, frozen: np.ndarray, fixed: bool, fixed_warmup: int, clip: float,
              target_clip: float, use_gap: bool, use_calendar: bool, x: np.ndarray,
              z: np.ndarray, std: np.ndarray, filled: np.ndarray,
              unknown: np.ndarray) -> None:
    """Model inputs ``x`` of one event, and what forecasting needs about it.

    Updates the key's statistics in place. Writes ``x`` (float32 model inputs: clipped
    z-scores, missing flags, time gap, calendar), ``z`` (z-scores clipped at
    ``target_clip``: the residual base and training targets), ``std`` (scale used),
    ``filled`` (values with missing ones carried forward) and ``unknown`` (never seen).
    """
    v = raw.shape[0]
    for j in range(v):
        miss = math.isnan(raw[j])
        prev = last_raw[slot, j]
        val = prev if miss else raw[j]
        filled[j] = val
        unknown[j] = math.isnan(val)
        safe = 0.0 if unknown[j] else val
        code = codes[j]
        if code == _LOGRET:
            ok = safe > 0 and prev > 0 and math.isfinite(prev)
            u = math.log(safe / prev) if ok else 0.0
        elif code == _LOG1P:
            u = math.log1p(max(safe, 0.0))
        else:
            u = safe
        observed = not miss and not (fixed and frozen[slot])
        _scale(slot, j, u, observed, count, mean, m2, target_clip, z, std)
        if unknown[j]:
            z[j] = 0.0
        x[j] = min(max(z[j], -clip), clip)
        x[v + j] = 1.0 if miss else 0.0
        if not miss:
            last_raw[slot, j] = raw[j]
    gap = math.log1p(gap_ms / 1000.0)
    observed = position > 0 and not (fixed and frozen[slot])
    _scale(slot, v, gap, observed, count, mean, m2, target_clip, z, std)
    at = 2 * v
    if use_gap:
        x[at] = min(max(z[v], -clip), clip)
        at += 1
    if fixed and fixed_warmup > 0 and count[slot, 0] >= fixed_warmup:
        frozen[slot] = True
    if use_calendar:
        day = (ts % _DAY_MS) / _DAY_MS * (2 * math.pi)
        week = ((ts + _WEEK_SHIFT_MS) % _WEEK_MS) / _WEEK_MS * (2 * math.pi)
        x[at] = math.sin(day)
        x[at + 1] = math.cos(day)
        x[at + 2] = math.sin(week)
        x[at + 3] = math.cos(week)


@nb.njit(inline="always", cache=True, nogil=True, error_model="numpy")
def _scale(slot: int, j: int, u: float, observed: bool, count: np.ndarray, mean: np.ndarray,
           m2: np.ndarray, clip: float, z: np.ndarray, std: np.ndarray) -> None:
    """Welford update (when observed), then the z-score of ``u`` and the std used."""
    if observed:
        n = count[slot, j] + 1.0
        old = mean[slot, j]
        new = old + (u - old) / n
        m2[slot, j] += (u - old) * (u - new)
        mean[slot, j] = new
        count[slot, j] = n
    c = count[slot, j]
    var = m2[slot, j] / c if c > 0 else 0.0
    s = math.sqrt(var)
    if s > 1e-12:
        std[j] = s
        z[j] = min(max((u - mean[slot, j]) / s, -clip), clip)
    else:
        std[j] = 1.0
        z[j] = 0.0
