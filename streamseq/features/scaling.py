"""Vectorised per-key running mean and variance (Welford), river ``StandardScaler`` semantics.

River's per-dict ``StandardScaler.learn_one`` + ``transform_one`` costs microseconds per key
and value; the hot loop instead updates many keys in one numpy call (keys in one call are
distinct). The statistics are identical (see tests/unit/test_features.py).
"""

from __future__ import annotations

import numpy as np

__all__ = ["welford_update", "zscore"]


def welford_update(count: np.ndarray, mean: np.ndarray, m2: np.ndarray, slots: np.ndarray,
                   u: np.ndarray, observed: np.ndarray) -> None:
    """Fold ``u[i, j]`` into the statistics of ``slots[i]``, column ``j``, where ``observed``.

    ``slots`` must be distinct. Arrays are updated in place.

    Examples
    --------
    >>> c, m, s = np.zeros((1, 1)), np.zeros((1, 1)), np.zeros((1, 1))
    >>> for x in (1.0, 2.0, 4.0):
    ...     welford_update(c, m, s, np.array([0]), np.array([[x]]), np.array([[True]]))
    >>> float(m[0, 0]), float(s[0, 0] / c[0, 0])  # mean, population variance
    (2.3333333333333335, 1.5555555555555554)
    """
    n = count[slots] + observed
    safe_n = np.where(n > 0, n, 1.0)
    old_mean = mean[slots]
    delta = np.where(observed, u - old_mean, 0.0)
    new_mean = old_mean + delta / safe_n
    m2[slots] = m2[slots] + np.where(observed, delta * (u - new_mean), 0.0)
    mean[slots] = new_mean
    count[slots] = n


def zscore(u: np.ndarray, count: np.ndarray, mean: np.ndarray, m2: np.ndarray,
           clip: float) -> tuple[np.ndarray, np.ndarray]:
    """Scaled values and the scale (std) used; a value with no spread yet scales to 0.

    Returns ``(z, std)`` where ``std`` is 1 where the variance is not yet defined.
    """
    var = np.where(count > 0, m2 / np.where(count > 0, count, 1.0), 0.0)
    std = np.sqrt(var)
    ok = std > 1e-12
    std = np.where(ok, std, 1.0)
    z = np.where(ok, (u - mean) / std, 0.0)
    return np.clip(z, -clip, clip), std
