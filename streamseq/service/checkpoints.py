"""Checkpoints of the service: flush -> durable snapshot -> commit, when due.

The order is what makes restarts exact: a snapshot may only cover predictions that were
delivered (the producer is flushed first, and any undelivered record fails the checkpoint),
and offsets are committed only after the snapshots that cover them are durable. The snapshot
(with its offset) is the source of truth for restores; the committed offset follows it and
serves lag monitoring and tools. A crash anywhere in between re-processes from the last
durable snapshot, with the same prediction ids.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from kafka import TopicPartition
from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata

from streamseq.metrics import ServiceMetrics
from streamseq.service.clients import DeliveryError, Sender
from streamseq.service.shards import Shard
from streamseq.state.checkpoint import CheckpointStore

__all__ = ["Checkpointer", "Outcome", "commit_sync", "commit_async"]

log = logging.getLogger(__name__)

Commit = Callable[[dict[TopicPartition, OffsetAndMetadata]], None]


def commit_sync(consumer: Any, metrics: ServiceMetrics) -> Commit:
    """``consumer.commit``, counted in ``streamseq_offset_commits_total{outcome}``."""
    def commit(offsets: dict[TopicPartition, OffsetAndMetadata]) -> None:
        try:
            consumer.commit(offsets)
        except KafkaError:
            metrics.offset_commits.labels(outcome="failed").inc()
            raise
        metrics.offset_commits.labels(outcome="ok").inc()

    return commit


def commit_async(consumer: Any, metrics: ServiceMetrics) -> Commit:
    """``consumer.commit_async`` (inside a rebalance callback), counted when it completes."""
    def done(offsets: Any, response: Any) -> None:
        failed = isinstance(response, BaseException)
        metrics.offset_commits.labels(outcome="failed" if failed else "ok").inc()
        if failed:
            log.warning("offset commit failed (%s); snapshots are durable", response)

    def commit(offsets: dict[TopicPartition, OffsetAndMetadata]) -> None:
        consumer.commit_async(offsets, callback=done)

    return commit


class Outcome:
    """How a checkpoint ended."""

    OK = "ok"
    RETRY = "retry"  # the flush failed: records may be in flight, nothing written
    REWIND = "rewind"  # records were lost: shards must go back to their last snapshots
    DISABLED = "disabled"  # after an unexpected error: the last durable snapshots stay


class Checkpointer:
    """Decides when a checkpoint is due and writes it.

    Parameters
    ----------
    store
        Where snapshots go.
    sender
        The producer side: flushed before any snapshot.
    metrics
        ``streamseq_checkpoint*`` are set here.
    every_events, every_seconds
        A checkpoint is due after this many records or this much time (monotonic clock).
    """

    def __init__(self, store: CheckpointStore, sender: Sender, metrics: ServiceMetrics,
                 every_events: int, every_seconds: float) -> None:
        self.store = store
        self.sender = sender
        self.metrics = metrics
        self.every_events = every_events
        self.every_seconds = every_seconds
        self.events_since = 0
        self.last = time.monotonic()
        self.disabled = False

    def note(self, records: int) -> None:
        """``records`` more input records were applied."""
        self.events_since += records

    def due(self) -> bool:
        return (self.events_since >= self.every_events
                or time.monotonic() - self.last >= self.every_seconds)

    def checkpoint(self, shards: Sequence[Shard], commit: Commit) -> str:
        """Flush -> snapshot every shard in ``shards`` that applied anything -> commit."""
        if self.disabled:
            log.error("not checkpointing %d shards after a failure: the last durable "
                      "snapshots stay the truth", len(shards))
            return Outcome.DISABLED
        t0 = time.perf_counter()
        self.last = time.monotonic()
        try:
            self.sender.flush(timeout=60)
        except DeliveryError as exc:
            self.metrics.checkpoints.labels(outcome="failed").inc()
            if exc.lost:
                log.error("%s: not committing; rewinding to the last snapshots", exc)
                return Outcome.REWIND
            log.error("%s: not checkpointing now", exc)
            return Outcome.RETRY
        offsets = {}
        for shard in shards:
            if shard.next_offset is None:
                continue
            self.store.save(shard.name, shard.snapshot())
            offsets[shard.tp] = OffsetAndMetadata(shard.next_offset, "", -1)
        if offsets:
            try:
                commit(offsets)
            except KafkaError as exc:  # the snapshot is durable; the commit only lags
                log.warning("offset commit failed (%s); snapshots are durable", exc)
        self.events_since = 0
        self.metrics.checkpoint_done(time.perf_counter() - t0)
        return Outcome.OK
