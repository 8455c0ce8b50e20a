"""What the engine returns per call (:class:`EngineOutput`) and counts (:class:`EngineStats`)."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from streamseq.events.errors import EventError
from streamseq.forecast.aggregate import FORECASTERS
from streamseq.learner.tbptt import UpdateResult

__all__ = ["EngineOutput", "EngineStats"]


@dataclass
class EngineStats:
    """Counters of one engine since it was created (restored with checkpoints)."""

    events: int = 0
    accepted: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    dropped: Counter[str] = field(default_factory=Counter)
    updates_applied: int = 0
    updates_skipped: int = 0
    last_loss: float = math.nan
    last_grad_norm: float = math.nan
    drift_events: int = 0
    evicted: int = 0
    z_abs_model: float = 0.0
    z_abs_persistence: float = 0.0
    z_scored: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {k: (dict(v) if isinstance(v, Counter) else v) for k, v in self.__dict__.items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EngineStats:
        s = cls(**{k: v for k, v in d.items() if k not in ("rejected", "dropped")})
        s.rejected = Counter(d["rejected"])
        s.dropped = Counter(d["dropped"])
        return s


@dataclass
class EngineOutput:
    """What one :meth:`Engine.process` call produced, aligned with its input.

    Attributes
    ----------
    index
        Positions (in the input) of the events that were applied and forecast.
    yhat
        ``[len(index), horizon, targets]`` forecasts in original units (NaN where the key
        has never shown a value of that target).
    err_model, err_persistence
        ``[len(index), horizon, targets]``: truth minus forecast for the forecast made ``h``
        events earlier for horizon ``h`` (NaN where there was none or the value is missing).
    scale
        The forecast's unit scale (key's std at forecast time), to express errors z-scored.
    target_ts
        ``[len(index), horizon]`` estimated event time of each forecast's target.
    version
        ``[len(index)]`` optimizer steps applied when each forecast was made (the weights'
        version: a function of the stream, not of how it was cut into calls).
    rejected, dropped
        ``(position, reason)`` of events refused (dead-letter) or dropped by the ordering
        policy (duplicate, late).
    updates
        Update points reached during the call.
    drift_events, evicted
        Drift detections and keys evicted during the call (increments, for metrics).
    model_yhat
        ``[len(index), horizon, targets]`` the recurrent model's own forecast (original
        units); ``yhat`` is the published mixture unless the aggregation is off.
    lo, hi
        ``[len(index), horizon, targets]`` the prediction interval of ``yhat`` at the
        configured coverage (NaN before the key has a scale).
    anomaly, checked
        ``[len(index), targets]``: the event's value fell outside the anomaly interval of
        the one-step forecast made before it; ``[len(index), targets, 3]`` that forecast
        and its interval (lo, hi), original units.
    forecaster_errors
        ``[len(index), targets, forecasters]`` truth minus each forecaster's one-step
        forecast (:data:`streamseq.forecast.FORECASTERS`), original units.
    covered
        ``[len(index), targets, 2]`` whether the value fell inside the one-step interval
        made before it (1/0, NaN where none was scored) and that interval's width.
    weights
        ``[len(index), horizon, targets, experts]`` the mixing weights, when configured
        (``forecast.weights``), else ``None``.
    anomalies
        Anomalies flagged during the call (an increment, for metrics).
    yhat_z, z_mean, z_std
        The model's forecast in the transformed, scaled space (``[len(index), horizon,
        targets]``, before ``* z_std + z_mean`` and the inverse transform) and the key's
        scaler mean and std of each target at forecast time (``[len(index), targets]``):
        what a part that combines or calibrates forecasts works on.
    """

    index: np.ndarray
    yhat: np.ndarray
    err_model: np.ndarray
    err_persistence: np.ndarray
    scale: np.ndarray
    target_ts: np.ndarray
    version: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    rejected: list[tuple[int, EventError]] = field(default_factory=list)
    dropped: list[tuple[int, str]] = field(default_factory=list)
    updates: list[UpdateResult] = field(default_factory=list)
    drift_events: int = 0
    evicted: int = 0
    yhat_z: np.ndarray = field(default_factory=lambda: np.zeros((0, 1, 1)))
    z_mean: np.ndarray = field(default_factory=lambda: np.zeros((0, 1)))
    z_std: np.ndarray = field(default_factory=lambda: np.zeros((0, 1)))
    model_yhat: np.ndarray = field(default_factory=lambda: np.zeros((0, 1, 1)))
    lo: np.ndarray = field(default_factory=lambda: np.zeros((0, 1, 1)))
    hi: np.ndarray = field(default_factory=lambda: np.zeros((0, 1, 1)))
    anomaly: np.ndarray = field(default_factory=lambda: np.zeros((0, 1), np.bool_))
    checked: np.ndarray = field(default_factory=lambda: np.zeros((0, 1, 3)))
    forecaster_errors: np.ndarray = field(
        default_factory=lambda: np.zeros((0, 1, len(FORECASTERS))))
    covered: np.ndarray = field(default_factory=lambda: np.zeros((0, 1, 2)))
    weights: np.ndarray | None = None
    anomalies: int = 0

    @classmethod
    def empty(cls, n: int, horizon: int, targets: int) -> EngineOutput:
        """Rows for ``n`` input events (NaN forecasts and errors, unit scales)."""
        nan = np.full((n, horizon, targets), np.nan)
        return cls(np.zeros(0, np.int64), nan, nan.copy(), nan.copy(),
                   np.ones((n, horizon, targets)), np.zeros((n, horizon), np.int64),
                   np.zeros(n, np.int64), yhat_z=nan.copy(), z_mean=np.zeros((n, targets)),
                   z_std=np.ones((n, targets)), model_yhat=nan.copy(), lo=nan.copy(),
                   hi=nan.copy(), anomaly=np.zeros((n, targets), np.bool_),
                   checked=np.full((n, targets, 3), np.nan),
                   forecaster_errors=np.full((n, targets, len(FORECASTERS)), np.nan),
                   covered=np.full((n, targets, 2), np.nan))

    def keep(self, index: np.ndarray) -> None:
        """Keep the rows of ``index`` (the applied events)."""
        self.index = index
        if len(index) == len(self.yhat):  # every row (index is sorted): nothing to drop
            return
        for name in ("yhat", "err_model", "err_persistence", "scale", "target_ts", "version",
                     "yhat_z", "z_mean", "z_std", "model_yhat", "lo", "hi", "anomaly",
                     "checked", "forecaster_errors", "covered"):
            setattr(self, name, getattr(self, name)[index])
        if self.weights is not None:
            self.weights = self.weights[index]
