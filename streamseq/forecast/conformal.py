"""Adaptive conformal inference (Gibbs & Candès, NeurIPS 2021) on scale-free residuals.

Per key, channel and horizon step the interval of a forecast ``yhat`` is
``yhat +- q(alpha_t) * spread``, where ``spread`` is the key's recent mean absolute
residual at that step (an exponentially weighted mean: the interval follows the key's
scale and its volatility) and ``q`` maps a miscoverage level to a multiple of it. When the
outcome arrives, ACI moves the working level::

    alpha_t+1 = alpha_t + rate * (alpha - miss_t)

(``miss_t`` = 1 when the outcome fell outside the interval). Gibbs & Candès (Prop. 4.1)
show the long-run miscoverage is within ``(max(alpha_1, 1 - alpha_1) + rate) / (rate T)``
of ``alpha`` for *any* sequence of outcomes, as long as the intervals shrink as
``alpha_t`` grows and cover everything for ``alpha_t <= 0``: that holds for any
decreasing map ``q``, here the quantile of a Laplace score, ``q(a) = ln(1 / a)`` (the
residual over its mean absolute value exceeds ``q`` with probability ``a`` for a Laplace
residual; ACI corrects whatever shape the real residuals have). ``q`` is capped at
``Q_MAX`` (``a <= e^-Q_MAX``), which only matters after a long run of misses.
"""

from __future__ import annotations

import math

from numba import njit

__all__ = ["Q_MAX", "quantile_multiplier", "aci_step", "winkler"]

Q_MAX = 20.0


@njit(cache=True)
def quantile_multiplier(level: float) -> float:
    """Half-width in units of the spread for the working miscoverage ``level``.

    >>> round(quantile_multiplier(0.1), 4), quantile_multiplier(1.5), quantile_multiplier(-1.0)
    (2.3026, 0.0, 20.0)
    """
    if level >= 1.0:
        return 0.0
    if level <= math.exp(-Q_MAX):
        return Q_MAX
    return -math.log(level)


@njit(cache=True)
def aci_step(level: float, target: float, miss: bool, rate: float) -> float:
    """The next working level: ``level + rate * (target - miss)``.

    >>> aci_step(0.1, 0.1, True, 0.01), aci_step(0.1, 0.1, False, 0.01)
    (0.091, 0.101)
    """
    return level + rate * (target - (1.0 if miss else 0.0))


@njit(cache=True)
def winkler(lo: float, hi: float, y: float, miscoverage: float) -> float:
    """Interval (Winkler) score of ``[lo, hi]`` for the outcome ``y``: the width plus
    ``2 / miscoverage`` times the distance by which ``y`` falls outside (lower is better).

    >>> winkler(0.0, 2.0, 1.0, 0.1), winkler(0.0, 2.0, 3.0, 0.1)
    (2.0, 22.0)
    """
    score = hi - lo
    if y < lo:
        score += 2.0 / miscoverage * (lo - y)
    elif y > hi:
        score += 2.0 / miscoverage * (y - hi)
    return score
