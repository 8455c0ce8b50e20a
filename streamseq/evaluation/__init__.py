"""Prequential evaluation: forecasts scored against the truth when it arrives."""

from __future__ import annotations

from streamseq.evaluation.drift import DriftMonitor
from streamseq.evaluation.metrics import ErrorTotals, summarize

__all__ = ["DriftMonitor", "ErrorTotals", "summarize"]
