"""Seasonal period per key: configured, or detected online from the key's own events.

Detection is cheap and needs evidence. A key's typical interval between events is
tracked robustly (each new interval clipped to half and twice the current estimate, so a
gap does not move it much); after ``PROBE`` events the candidate period is the number of
events in a day, ``round(1 day / interval)``, if it lies in ``[2, max_period]``. From then
on a ring of the key's last ``period + 1`` values is kept (the seasonal naive forecast
reads it) and, for each channel, the lag-``period`` autocorrelation of the changes is
accumulated. A channel is seasonal when that correlation ``rho`` over ``n`` pairs is both
significant, ``rho * sqrt(n) >= 3`` (three standard errors of a white-noise correlation),
and large enough to matter, ``rho >= 0.1`` (the seasonal lag explains at least 1% of the
variance of the changes), after at least a full period of pairs. Without that evidence the
seasonal expert sleeps: no period without evidence.
"""

from __future__ import annotations

import math

from numba import njit

__all__ = ["DAY_MS", "PROBE", "typical_interval", "candidate_period", "has_season"]

DAY_MS = 86_400_000.0
PROBE = 48
MIN_RHO = 0.1
Z_EVIDENCE = 3.0


@njit(cache=True)
def typical_interval(current: float, dt: float) -> float:
    """Robust running interval: the first positive ``dt``, then an exponentially weighted
    mean of intervals clipped to ``[current / 2, 2 current]``.

    >>> x = 0.0
    >>> for dt in [300.0] * 20 + [86400.0] + [300.0] * 5:
    ...     x = typical_interval(x, dt)
    >>> round(x, 1)
    311.6
    """
    if dt <= 0.0:
        return current
    if current <= 0.0:
        return dt
    clipped = min(max(dt, 0.5 * current), 2.0 * current)
    return current + 0.05 * (clipped - current)


@njit(cache=True)
def candidate_period(interval_ms: float, max_period: int) -> int:
    """Events per day for a key with this typical interval, 0 if outside ``[2, max_period]``.

    >>> candidate_period(300_000.0, 288), candidate_period(60_000.0, 288)
    (288, 0)
    """
    if interval_ms <= 0.0:
        return 0
    m = int(round(DAY_MS / interval_ms))
    return m if 2 <= m <= max_period else 0


@njit(cache=True)
def has_season(sxy: float, sxx: float, syy: float, pairs: float, period: int) -> bool:
    """Whether the lag-``period`` correlation of changes is evidence of a season.

    >>> has_season(30.0, 100.0, 100.0, 400.0, 24), has_season(5.0, 100.0, 100.0, 400.0, 24)
    (True, False)
    """
    if pairs < period or sxx <= 0.0 or syy <= 0.0:
        return False
    rho = sxy / math.sqrt(sxx * syy)
    return rho >= MIN_RHO and rho * math.sqrt(pairs) >= Z_EVIDENCE
