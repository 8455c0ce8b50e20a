"""Online learning by truncated backpropagation through time."""

from __future__ import annotations

from streamseq.learner.tbptt import OnlineLearner, UpdateResult, Windows

__all__ = ["OnlineLearner", "UpdateResult", "Windows"]
