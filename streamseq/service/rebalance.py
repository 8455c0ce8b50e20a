"""Partitions coming and going: the shards a process owns, restored and let go with their state.

On assignment a shard is restored from its last durable snapshot and the consumer seeks to
the snapshot's offset; on revocation the shard is checkpointed before it is let go. kafka-
python runs these callbacks inside ``poll()`` on the loop's thread, so they may use the
consumer (but must not block on it: the revocation's commit is sent without waiting).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from kafka import ConsumerRebalanceListener, TopicPartition
from kafka.errors import KafkaError

from streamseq.metrics import ServiceMetrics
from streamseq.service.health import Health
from streamseq.service.shards import ServiceError, Shard, ShardFactory
from streamseq.state.checkpoint import CheckpointStore, SnapshotsUnreadableError

__all__ = ["Assignment"]

log = logging.getLogger(__name__)


class Assignment(ConsumerRebalanceListener):
    """The owned shards, kept in step with the group's assignment.

    Parameters
    ----------
    factory
        Builds and restores shards.
    store
        The checkpoint store shards are restored from.
    metrics
        ``streamseq_shards_assigned`` and the lag series of revoked partitions.
    health
        Told when the group has assigned this replica its partitions (readiness).
    let_go
        Called with the shards being revoked, before they are dropped (the final checkpoint).
    on_fatal
        Called with the error when a partition cannot be restored (an incompatible snapshot).
    """

    def __init__(self, factory: ShardFactory, store: CheckpointStore, metrics: ServiceMetrics,
                 health: Health, let_go: Callable[[list[Shard]], Any],
                 on_fatal: Callable[[ServiceError], None]) -> None:
        self.factory = factory
        self.store = store
        self.metrics = metrics
        self.health = health
        self.let_go = let_go
        self.on_fatal = on_fatal
        self.shards: dict[TopicPartition, Shard] = {}
        self.consumer: Any = None  # set once the consumer exists (it is built with us)

    # -- kafka-python's callbacks
    def on_partitions_revoked(self, revoked: Any) -> None:
        gone = [self.shards[tp] for tp in revoked if tp in self.shards]
        log.info("partitions revoked: %s", [s.name for s in gone])
        if gone:
            self.let_go(gone)
        for s in gone:
            self.shards.pop(s.tp, None)
            self.metrics.forget_partition(s.tp.topic, s.tp.partition)
        self._count()

    def on_partitions_assigned(self, assigned: Any) -> None:
        log.info("partitions assigned: %s", [f"{tp.topic}-{tp.partition}" for tp in assigned])
        self.metrics.rebalances.inc()
        for tp in assigned:
            if tp in self.shards:
                continue
            try:
                shard = self.shards[tp] = self.restore(tp)
            except ServiceError as exc:  # an incompatible or unreadable snapshot: stop
                if isinstance(exc.__cause__, SnapshotsUnreadableError):
                    self.metrics.checkpoint_restores.labels(topic=tp.topic,
                                                            outcome="failed").inc()
                log.critical("%s", exc)
                self.on_fatal(exc)
                return
            self.metrics.checkpoint_restores.labels(topic=tp.topic, outcome=shard.origin).inc()
        self._count()
        self.health.joined = True  # even with nothing assigned: an idle replica is ready

    def _count(self) -> None:
        self.metrics.shards.set(len(self.shards))
        self.health.shards = len(self.shards)

    # -- state
    def restore(self, tp: TopicPartition) -> Shard:
        """The shard of ``tp`` from its last durable snapshot, the consumer at its offset."""
        shard = self.factory.restore(tp, self.store)
        if shard.next_offset is not None:
            self.consumer.seek(tp, shard.next_offset)
            log.info("restored %s at offset %d", shard.name, shard.next_offset)
        return shard

    def rewind(self) -> None:
        """Every shard back to its last durable snapshot (after records were lost)."""
        for tp, old in list(self.shards.items()):
            shard = self.restore(tp)
            if shard.next_offset is None and old.first_offset is not None:
                # no snapshot yet: the fresh engine replays the shard from where it began
                self.consumer.seek(tp, old.first_offset)
                shard.first_offset = old.first_offset
            self.shards[tp] = shard

    def track_positions(self) -> None:
        """Note the consumer's position of shards that have applied nothing yet (called by
        the loop after a poll: the consumer is not shared with the monitor's thread)."""
        for tp, s in list(self.shards.items()):
            if s.next_offset is None:
                try:
                    s.position = self.consumer.position(tp, timeout_ms=0)
                except KafkaError as exc:  # not assigned (any more), position unknown
                    log.debug("position of %s: %s", s.name, exc)

    def positions(self) -> dict[TopicPartition, int | None]:
        """Next offset to apply of every owned shard (read by the broker monitor): before
        its first record, where the consumer stands (``None`` while unknown)."""
        return {tp: s.next_offset if s.next_offset is not None else s.position
                for tp, s in list(self.shards.items())}
