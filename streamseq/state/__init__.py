"""Per-key state (hidden-state table) and checkpoints."""

from __future__ import annotations

from streamseq.state.checkpoint import CheckpointStore, LocalCheckpointStore
from streamseq.state.hidden import HiddenStateTable

__all__ = ["CheckpointStore", "HiddenStateTable", "LocalCheckpointStore"]
