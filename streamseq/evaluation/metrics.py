"""Error accumulators and their summary (MAE, RMSE, MSE, MASE vs persistence)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["ErrorTotals", "summarize", "METRIC_ARRAYS"]

# Per-key accumulator arrays, each [horizon, targets], kept in the hidden-state table.
METRIC_ARRAYS = ("m_abs", "m_sq", "p_abs", "p_sq", "cnt")


@dataclass
class ErrorTotals:
    """Sums of errors over many events, per horizon step and target.

    ``m_*`` are the model's, ``p_*`` persistence's (the value ``h`` events earlier) on the
    same events; MASE divides the model's MAE by one-step persistence's MAE.
    """

    m_abs: np.ndarray
    m_sq: np.ndarray
    p_abs: np.ndarray
    p_sq: np.ndarray
    cnt: np.ndarray

    @classmethod
    def zeros(cls, horizon: int, targets: int) -> ErrorTotals:
        z = np.zeros((horizon, targets))
        return cls(z.copy(), z.copy(), z.copy(), z.copy(), z.copy())

    def add(self, other: ErrorTotals) -> None:
        for name in METRIC_ARRAYS:
            getattr(self, name).__iadd__(getattr(other, name))

    def to_dict(self) -> dict[str, Any]:
        return {n: getattr(self, n).tolist() for n in METRIC_ARRAYS}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> ErrorTotals:
        return cls(*(np.asarray(arrays[n], dtype=np.float64) for n in METRIC_ARRAYS))


@dataclass
class Summary:
    events: int = 0
    model: dict[str, float] = field(default_factory=dict)
    persistence: dict[str, float] = field(default_factory=dict)


def summarize(t: ErrorTotals) -> dict[str, Any]:
    """MAE/RMSE/MSE/MASE for model and persistence, averaged over targets and horizons.

    Examples
    --------
    >>> t = ErrorTotals.zeros(1, 1)
    >>> t.m_abs += 2; t.m_sq += 4; t.p_abs += 4; t.p_sq += 8; t.cnt += 2
    >>> s = summarize(t); s["model"]["mae"], s["model"]["mase"], s["persistence"]["rmse"]
    (1.0, 0.5, 2.0)
    """
    n = t.cnt.sum()
    out: dict[str, Any] = {"scored": int(n)}
    naive = t.p_abs[0].sum() / max(t.cnt[0].sum(), 1.0)
    for name, a, s in (("model", t.m_abs, t.m_sq), ("persistence", t.p_abs, t.p_sq)):
        if n == 0:
            out[name] = {"mae": None, "rmse": None, "mse": None, "mase": None}
            continue
        mae = float(a.sum() / n)
        mse = float(s.sum() / n)
        out[name] = {
            "mae": mae,
            "rmse": float(np.sqrt(mse)),
            "mse": mse,
            "mase": float(mae / naive) if naive > 0 else None,
        }
    return out
