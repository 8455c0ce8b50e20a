"""Online learning by truncated backpropagation through time."""

from __future__ import annotations

from streamseq.learner.tbptt import OnlineLearner, UpdateResult
from streamseq.learner.windows import PendingWindows, WindowRings

__all__ = ["OnlineLearner", "PendingWindows", "UpdateResult", "WindowRings"]
