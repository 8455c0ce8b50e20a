"""Fixed-share exponentially weighted aggregation with an adaptive learning rate.

Per key, channel and horizon step the published forecast is ``sum_e w_e f_e`` over the
experts awake at that step (an expert without a forecast, such as the seasonal one before
a period is known, sleeps: the weights of the others are renormalised). After each outcome:

1. **Exponential weights** (Vovk; Littlestone & Warmuth): ``w_e <- w_e exp(-eta l_e)`` over
   the awake experts, their total mass kept, sleeping experts untouched (the specialists
   rule of Freund, Schapire, Singer & Warmuth, 1997).
2. **Fixed share** (Herbster & Warmuth, 1998): ``w <- (1 - share) w + share / E``, so no
   weight ever falls below ``share / E`` and the weights can follow a switch of the best
   expert: the regret is against the best *sequence* of experts with few switches.
3. **Learning rate without tuning**: AdaHedge (de Rooij, van Erven, Grünwald & Koolen,
   JMLR 2014), ``eta = ln E / gap``, where ``gap`` sums the mixability gaps
   ``delta_t = sum_e w_e l_e + ln(sum_e w_e exp(-eta l_e)) / eta >= 0``. It needs no bound on
   the losses and is invariant to their scale, and its regret is within a constant factor
   of Hedge tuned in hindsight, so nothing is fitted to the data. (A gap discounted to the
   last ~1/share steps was tried: no better on the held-out streams, and less standard.)
4. **A constant cost against persistence**: the weighted mixture ``A`` is combined with the
   benchmark ``B``, persistence (the random walk for prices), by (A,B)-Prod
   (:func:`prod_step`): on streams where no expert beats the last value, the published
   forecast loses at most a constant to it over the whole stream, while keeping ``A``'s
   gains where there are some.

Losses are scale-free absolute errors ``|y - f_e| / s`` (``s`` the key's mean absolute
one-step change, see :mod:`streamseq.forecast.aggregate`), winsorized at ``CLIP`` scale
units so one wild value cannot freeze the learning rate. The linearised loss (the
"gradient trick", which competes with the best convex combination) was measured on the
held-out streams of ``bench.peers`` and did worse (mean MASE 0.954 against 0.938).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

__all__ = ["SAFE_RATE", "fixed_share_update", "mix", "prod_step"]

SAFE_RATE = 0.5


@njit(cache=True)
def mix(weights: np.ndarray, forecasts: np.ndarray, awake: np.ndarray) -> float:
    """Weighted mean of the awake experts' forecasts (one awake: its forecast, exactly).

    >>> mix(np.array([0.2, 0.3, 0.5]), np.array([1.0, 2.0, 9.0]), np.array([True, True, False]))
    1.6
    """
    total = 0.0
    acc = 0.0
    count = 0
    only = math.nan
    for e in range(weights.shape[0]):
        if awake[e]:
            total += weights[e]
            acc += weights[e] * forecasts[e]
            count += 1
            only = forecasts[e]
    if count == 1:
        return only
    if count == 0 or total <= 0.0:
        return math.nan
    return acc / total


@njit(cache=True)
def fixed_share_update(weights: np.ndarray, gap: float, losses: np.ndarray, awake: np.ndarray,
                       share: float) -> float:
    """Update ``weights`` (in place, summing to 1) with the awake experts' ``losses``;
    returns the new AdaHedge gap.

    With ``gap == 0`` (no evidence yet) the rate is infinite: the weight goes to the awake
    experts with the smallest loss (follow the leader), then fixed share spreads
    ``share`` of it back.

    Examples
    --------
    >>> w = np.full(3, 1 / 3); awake = np.ones(3, dtype=np.bool_)
    >>> g = fixed_share_update(w, 0.0, np.array([1.0, 0.0, 2.0]), awake, 0.03)
    >>> np.round(w, 4).tolist(), round(g, 4)  # leader takes all but the share
    ([0.01, 0.98, 0.01], 1.0)
    >>> g = fixed_share_update(w, g, np.array([1.0, 0.0, 2.0]), awake, 0.03)
    >>> round(float(w[1]), 4), round(g, 4)  # at most 1 - 2 share / 3 = 0.98
    (0.9756, 1.0157)
    """
    n = weights.shape[0]
    mass = 0.0
    mixed = 0.0
    lmin = math.inf
    for e in range(n):
        if awake[e]:
            mass += weights[e]
            mixed += weights[e] * losses[e]
            lmin = min(lmin, losses[e])
    if mass <= 0.0 or not math.isfinite(mixed):
        return gap
    mixed /= mass
    if gap > 0.0:
        eta = math.log(n) / gap
        z = 0.0
        for e in range(n):
            if awake[e]:
                z += weights[e] / mass * math.exp(-eta * (losses[e] - lmin))
        delta = mixed - (lmin - math.log(z) / eta)
        for e in range(n):
            if awake[e]:
                weights[e] = weights[e] * math.exp(-eta * (losses[e] - lmin)) / z
    else:
        z = 0.0
        for e in range(n):
            if awake[e] and losses[e] == lmin:
                z += weights[e]
        delta = mixed - lmin
        for e in range(n):
            if awake[e]:
                weights[e] = weights[e] * mass / z if losses[e] == lmin else 0.0
    total = 0.0
    for e in range(n):
        total += weights[e]
    for e in range(n):
        weights[e] = (1.0 - share) * weights[e] / total + share / n
    return gap + max(delta, 0.0)


@njit(cache=True)
def prod_step(weight: float, gain: float, share: float) -> float:
    """(A,B)-Prod (Sani, Neu & Lazaric, NeurIPS 2014): the weight of the aggregate ``A``
    against the benchmark ``B`` (persistence), whose weight stays ``1 - SAFE_RATE``.

    ``gain`` is B's loss minus A's, clipped to ``[-1, 1]``; the weight is multiplied by
    ``1 + SAFE_RATE * gain``. With the rate 1/2 and A's start weight 1/2 the combination's
    regret against the benchmark is at most ``2 ln 2`` loss units over the whole stream (their
    Theorem 1), while it keeps A's regret against the best expert up to a log factor.
    The weight is bounded so that each of A and B keeps at least ``share`` of the
    combination (the fixed share of two experts: either can come back after a long run of
    the other).

    >>> w = SAFE_RATE
    >>> for _ in range(3):
    ...     w = prod_step(w, 0.2, 0.01)
    >>> round(w, 4), round(prod_step(w, -5.0, 0.01), 4)
    (0.6655, 0.3328)
    """
    g = min(max(gain, -1.0), 1.0)
    w = weight * (1.0 + SAFE_RATE * g)
    bound = (1.0 - SAFE_RATE) * (1.0 - share) / share
    return min(max(w, (1.0 - SAFE_RATE) / bound), bound)
