"""Drift detection per key: Page-Hinkley on each key's scaled absolute one-step error.

Every key's detector is a handful of numbers in per-key arrays (:class:`DriftDetector`),
updated by compiled code one error at a time (:func:`page_hinkley_update`), with the
semantics of river's ``drift.PageHinkley`` (tests/unit/test_drift.py checks detection for
detection): a running mean of the errors, cumulative deviations above and below it with a
forgetting factor, and a detection when either strays more than ``threshold`` from its
extreme, after ``min_instances`` errors. After a detection the key's detector starts over.
"""

from __future__ import annotations

import numba as nb
import numpy as np

from streamseq.config import DriftConfig
from streamseq.state.table import SlotArrays

__all__ = ["DriftDetector", "page_hinkley_update"]


class DriftDetector:
    """Page-Hinkley settings and each key's detector state.

    Examples
    --------
    >>> d = DriftDetector(DriftConfig())
    >>> d.arrays.grow(1)
    >>> errs = [0.1] * 300 + [3.0] * 100
    >>> hits = [page_hinkley_update(0, e, d.arrays["n"], d.arrays["stats"], *d.params)
    ...         for e in errs]
    >>> hits.index(True) > 300, sum(hits)
    (True, 1)
    """

    def __init__(self, config: DriftConfig) -> None:
        self.config = config
        self.enabled = config.detector != "none"
        # min_instances, delta, threshold, alpha
        self.params = (int(config.min_instances), float(config.delta),
                       float(config.threshold), float(config.alpha))
        # stats: mean, sum_increase, sum_decrease, min_increase, max_decrease
        self.arrays = SlotArrays({
            "n": ((), np.int64, 0),  # errors seen since the last start; -1: just detected
            "stats": ((5,), np.float64, 0.0),
        })


@nb.njit(cache=True, nogil=True, error_model="numpy")
def page_hinkley_update(slot: int, x: float, n: np.ndarray, stats: np.ndarray,
                        min_instances: int, delta: float, threshold: float,
                        alpha: float) -> bool:
    """Fold error ``x`` into the key's detector; True when it detects a change."""
    if n[slot] <= 0:  # fresh, or the update after a detection: start over
        n[slot] = 0
        stats[slot, 0] = 0.0
        stats[slot, 1] = 0.0
        stats[slot, 2] = 0.0
        stats[slot, 3] = np.inf
        stats[slot, 4] = -1.0
    n[slot] += 1
    mean = stats[slot, 0] + (1.0 / n[slot]) * (x - stats[slot, 0])  # river's rounding
    stats[slot, 0] = mean
    dev = x - mean
    inc = alpha * stats[slot, 1] + dev - delta
    dec = alpha * stats[slot, 2] + dev + delta
    stats[slot, 1] = inc
    stats[slot, 2] = dec
    if inc < stats[slot, 3]:
        stats[slot, 3] = inc
    if dec > stats[slot, 4]:
        stats[slot, 4] = dec
    if n[slot] >= min_instances and (inc - stats[slot, 3] > threshold
                                     or stats[slot, 4] - dec > threshold):
        n[slot] = -1
        return True
    return False
