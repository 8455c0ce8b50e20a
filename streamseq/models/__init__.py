"""Pure torch modules (no I/O, no globals)."""

from __future__ import annotations

from streamseq.models.recurrent import RecurrentForecaster

__all__ = ["RecurrentForecaster"]
