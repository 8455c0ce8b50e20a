"""Per-key features: value transforms, online/fixed scaling, time gaps, calendar."""

from __future__ import annotations

from streamseq.features.calendar import calendar_features
from streamseq.features.scaling import welford_update, zscore
from streamseq.features.transforms import default_transform, forward_transform, invert_forecast

__all__ = [
    "calendar_features",
    "default_transform",
    "forward_transform",
    "invert_forecast",
    "welford_update",
    "zscore",
]
