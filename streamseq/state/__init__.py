"""Per-key state (the key table and its per-key arrays) and checkpoints."""

from __future__ import annotations

from streamseq.state.checkpoint import CheckpointStore, LocalCheckpointStore
from streamseq.state.table import KeyTable, SlotArrays

__all__ = ["CheckpointStore", "KeyTable", "LocalCheckpointStore", "SlotArrays"]
