"""The engine: one shard's online forecaster (see :mod:`streamseq.engine.core`)."""

from __future__ import annotations

from streamseq.engine.core import FORMAT_VERSION, Engine, Shard
from streamseq.engine.output import EngineOutput, EngineStats

__all__ = ["Engine", "EngineOutput", "EngineStats", "FORMAT_VERSION", "Shard"]
