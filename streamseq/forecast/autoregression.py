"""Online linear autoregression by recursive least squares (RLS), guarded.

The linear expert regresses a key's next change (in units of the key's scale) on its last
changes and, where the key has a season, on the change one season earlier: an ARIMA(p, 1, 0)
with a seasonal term, re-fitted at every event. RLS with exponential forgetting ``lam``
follows slowly changing coefficients (Haykin, *Adaptive Filter Theory*, ch. 10). Guards:

* regularised start: coefficients 0 (the forecast is persistence) with prior covariance
  ``P = p0 * I``;
* no wind-up: when a constant stretch leaves the covariance unexcited, forgetting would
  grow ``P`` without bound; its trace is capped at ``d * p0``;
* no blow-up: regressors and forecasts are clipped to ``+-clip`` scale units, and a
  non-finite state is reset to the regularised start.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

__all__ = ["rls_reset", "rls_update", "rls_predict"]


@njit(cache=True)
def rls_reset(theta: np.ndarray, cov: np.ndarray, p0: float) -> None:
    """Coefficients 0 and covariance ``p0 * I`` (in place)."""
    d = theta.shape[0]
    for a in range(d):
        theta[a] = 0.0
        for b in range(d):
            cov[a, b] = p0 if a == b else 0.0


@njit(cache=True)
def rls_predict(theta: np.ndarray, x: np.ndarray) -> float:
    """``theta . x``."""
    s = 0.0
    for a in range(x.shape[0]):
        s += theta[a] * x[a]
    return s


@njit(cache=True)
def rls_update(theta: np.ndarray, cov: np.ndarray, x: np.ndarray, y: float, lam: float,
               p0: float) -> bool:
    """One RLS step with forgetting ``lam`` on the pair ``(x, y)`` (in place).

    Returns ``False`` (after resetting the state) when the step gave a non-finite state.

    Examples
    --------
    >>> th, P = np.zeros(2), np.zeros((2, 2)); rls_reset(th, P, 1e6)
    >>> for t in range(50):
    ...     x = np.array([1.0, float(t % 7)])
    ...     ok = rls_update(th, P, x, 2.0 + 3.0 * x[1], 1.0, 1e6)
    >>> np.round(th, 6).tolist()  # exact fit of y = 2 + 3 x
    [2.0, 3.0]
    """
    d = x.shape[0]
    px = np.empty(d)
    for a in range(d):
        s = 0.0
        for b in range(d):
            s += cov[a, b] * x[b]
        px[a] = s
    denom = lam
    for a in range(d):
        denom += x[a] * px[a]
    err = y - rls_predict(theta, x)
    trace = 0.0
    for a in range(d):
        gain = px[a] / denom
        theta[a] += gain * err
        for b in range(d):
            cov[a, b] = (cov[a, b] - gain * px[b]) / lam
        trace += cov[a, a]
    cap = d * p0
    if trace > cap:
        f = cap / trace
        for a in range(d):
            for b in range(d):
                cov[a, b] *= f
    ok = math.isfinite(trace)
    for a in range(d):
        ok = ok and math.isfinite(theta[a])
    if not ok:
        rls_reset(theta, cov, p0)
    return ok
