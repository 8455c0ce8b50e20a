"""Calendar features from event time: hour of day and day of week on the unit circle."""

from __future__ import annotations

import numpy as np

__all__ = ["calendar_features", "N_CALENDAR"]

N_CALENDAR = 4
_DAY_MS = 86_400_000
_WEEK_MS = 7 * _DAY_MS
_EPOCH_WEEKDAY_OFFSET_MS = 3 * _DAY_MS  # 1970-01-01 was a Thursday; shift so Monday = 0


def calendar_features(ts_ms: np.ndarray) -> np.ndarray:
    """``[n, 4]``: sin/cos of the time of day and of the day of week (UTC).

    Examples
    --------
    >>> f = calendar_features(np.array([0, 6 * 3_600_000]))
    >>> np.round(f, 3).tolist()
    [[0.0, 1.0, 0.434, -0.901], [1.0, 0.0, 0.223, -0.975]]
    """
    ts = np.asarray(ts_ms, dtype=np.int64)
    day = (ts % _DAY_MS) / _DAY_MS * (2 * np.pi)
    week = ((ts + _EPOCH_WEEKDAY_OFFSET_MS) % _WEEK_MS) / _WEEK_MS * (2 * np.pi)
    return np.stack([np.sin(day), np.cos(day), np.sin(week), np.cos(week)], axis=1)
