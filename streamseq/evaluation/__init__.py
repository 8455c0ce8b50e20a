"""Prequential evaluation: forecasts scored against the truth when it arrives."""

from __future__ import annotations

from streamseq.evaluation.drift import DriftDetector
from streamseq.evaluation.metrics import ErrorTotals, summarize
from streamseq.evaluation.scoring import Scoring

__all__ = ["DriftDetector", "ErrorTotals", "Scoring", "summarize"]
