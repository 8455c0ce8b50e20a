"""Exponential smoothing with a damped additive trend (Gardner & McKenzie, 1985).

The smoother expert: per key and channel a level and a trend, updated with each observed
value. Damping (``phi < 1``) makes long-horizon forecasts level off instead of extending
the last trend for ever, the safe default of the forecasting literature (Hyndman &
Athanasopoulos, *Forecasting: Principles and Practice*, 8.2); ``phi = 1`` is Holt's linear
method (river's ``HoltWinters`` with ``alpha`` and ``beta``).
"""

from __future__ import annotations

from numba import njit

__all__ = ["holt_update", "holt_forecast"]


@njit(cache=True)
def holt_update(level: float, trend: float, y: float, alpha: float, beta: float,
                phi: float) -> tuple[float, float]:
    """One step of damped Holt: the new ``(level, trend)`` after observing ``y``.

    Examples
    --------
    >>> holt_update(10.0, 1.0, 12.0, 0.5, 0.5, 1.0)  # level 0.5*12 + 0.5*11, trend 0.5*1.5 + 0.5
    (11.5, 1.25)
    """
    new_level = alpha * y + (1.0 - alpha) * (level + phi * trend)
    new_trend = beta * (new_level - level) + (1.0 - beta) * phi * trend
    return new_level, new_trend


@njit(cache=True)
def holt_forecast(level: float, trend: float, phi: float, h: int) -> float:
    """The ``h``-step forecast ``level + (phi + phi^2 + ... + phi^h) * trend``.

    >>> holt_forecast(10.0, 2.0, 0.5, 2)  # 10 + (0.5 + 0.25) * 2
    11.5
    """
    damp = 0.0
    p = 1.0
    for _ in range(h):
        p *= phi
        damp += p
    return level + damp * trend
