"""The service's shards: one per assigned partition, built fresh, warm or from a snapshot."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from kafka import TopicPartition

from streamseq.events.decode import EventDecoder
from streamseq.exceptions import CheckpointError, StreamseqError
from streamseq.pipeline import RecordDecoder, ShardEngine
from streamseq.service.config import ServiceConfig
from streamseq.shards import NumericShard, TextShard
from streamseq.state.checkpoint import CheckpointStore, SnapshotRef, SnapshotsUnreadableError

__all__ = ["Shard", "ShardFactory", "ServiceError", "SHARD_FORMAT"]

log = logging.getLogger(__name__)
SHARD_FORMAT = "streamseq-shard/1"


class ServiceError(StreamseqError):
    """The service cannot continue (configuration, incompatible checkpoint)."""


@dataclass
class Shard:
    """One assigned partition: its engine, its decoder and the next offset it will apply.

    ``first_offset`` is where a shard without a snapshot began (a rewind replays from it);
    ``position`` is where the consumer stands before the shard's first record (the lag
    gauge's reference until ``next_offset`` is known); ``origin`` how its state was found (``streamseq.metrics.RESTORE_OUTCOMES``): ``ok`` a
    snapshot, ``none`` no snapshot (new), ``failed`` unreadable snapshots (started fresh).
    ``base`` is the shard's last durable snapshot taken by this process, the one a delta
    builds on (``None``: the next snapshot is complete), ``deltas`` how many deltas were
    written since the last complete one and ``chain_share`` how many keys they hold, per key
    held.
    """

    tp: TopicPartition
    engine: ShardEngine
    decoder: RecordDecoder
    next_offset: int | None = None
    first_offset: int | None = None
    origin: str = "none"
    position: int | None = None  # the consumer's position before the first record applied
    base: SnapshotRef | None = None
    deltas: int = 0
    chain_share: float = 0.0

    @property
    def name(self) -> str:
        return f"{self.tp.topic}-{self.tp.partition}"

    @property
    def kind(self) -> str:
        return self.engine.kind

    def changed_share(self) -> float:
        """Keys changed since the last snapshot per key held: a delta's rows against a
        complete snapshot's (1.0 when no delta can be taken: no durable snapshot of this
        shard from this process yet, or a text shard, which tracks no changes)."""
        if self.base is None or not isinstance(self.engine, NumericShard):
            return 1.0
        return self.engine.changed_share()

    def snapshot(self, delta: bool = False) -> dict[str, Any]:
        """The shard's state at :attr:`next_offset` (what a checkpoint writes): complete, or
        with ``delta`` only the keys changed since the last snapshot (a delta on top of
        :attr:`base`). Either way the next delta is relative to this snapshot."""
        engine = self.engine
        if isinstance(engine, NumericShard):
            state = engine.state_dict(changed_only=delta)
            engine.clear_changes()
        elif delta:
            raise ValueError(f"{self.kind} shards take complete snapshots only")
        else:
            state = engine.state_dict()
        return {"format": SHARD_FORMAT, "topic": self.tp.topic, "partition": self.tp.partition,
                "offset": self.next_offset, "engine": state}


class ShardFactory:
    """Builds shards for a configuration: engines by topic kind, an optional warm start.

    Parameters
    ----------
    config
        The service configuration.
    warm
        A ``streamseq backtest --save-checkpoint`` state whose weights start new numeric
        shards (``None``: fresh weights).
    """

    def __init__(self, config: ServiceConfig, warm: dict[str, Any] | None = None) -> None:
        self.config = config
        self.warm = warm
        self.decoders: dict[str, RecordDecoder] = {}
        for t in config.topics:
            payload: Any
            if t.kind == "text":
                from streamseq.text.events import TextDecoder

                payload = TextDecoder(naive_tz=config.naive_tz, max_bytes=config.max_message_bytes)
            else:
                payload = EventDecoder(kind=t.kind, naive_tz=config.naive_tz,
                                       max_bytes=config.max_message_bytes)
            self.decoders[t.name] = RecordDecoder(payload, config.max_future_ms)

    def engine(self, kind: str, warm: bool = True) -> ShardEngine:
        """A new engine for a ``kind`` shard (warm-started when configured and ``warm``)."""
        if kind == "text":
            return TextShard(self.config.text)
        shard = NumericShard(self.config.engine.replace(kind=kind))
        if warm and self.warm is not None:
            for state in self.warm.get("engines", []):
                if state.get("config", {}).get("kind") == kind:
                    shard.load_state_dict(state)
                    log.info("warm start of a %s shard from %s", kind, self.config.warm_start)
                    break
        return shard

    def check_warm_start(self) -> None:
        """Refuse an incompatible warm start before consuming anything."""
        for topic in self.config.topics:
            try:
                self.engine(topic.kind)
            except CheckpointError as exc:
                raise ServiceError(f"warm start {self.config.warm_start}: {exc}") from exc

    def restore(self, tp: TopicPartition, store: CheckpointStore) -> Shard:
        """The shard of ``tp`` from its last durable snapshot, else a new one.

        Raises :class:`ServiceError` for a snapshot of another format or architecture:
        never guess (using it, or ignoring it and skipping its events, would be wrong).
        When every snapshot is unreadable, ``on_corrupt_state`` decides: ``refuse`` raises
        :class:`ServiceError` (the learned state is not thrown away behind the operator's
        back, and the snapshots stay for a retry or an inspection); ``fresh`` logs an ERROR,
        sets the snapshots aside and starts a new shard (``origin="failed"``).
        """
        kind = self.config.kind_of(tp.topic)
        name = f"{tp.topic}-{tp.partition}"
        try:
            snap = store.load(name)
        except SnapshotsUnreadableError as exc:
            if self.config.on_corrupt_state != "fresh":
                raise ServiceError(
                    f"{exc}: refusing to start {name} from a fresh model, which would lose "
                    "its learned state (move the snapshots aside, or pass "
                    "--on-corrupt-state fresh to accept the loss)") from exc
            kept = store.set_aside(name)
            log.error("%s: starting %s from a %s model at the committed offset "
                      "(--on-corrupt-state fresh): its learned state is lost%s", exc, name,
                      "warm-start" if self.warm is not None else "fresh",
                      f"; the unreadable snapshots are kept as {kept}" if kept else "")
            return Shard(tp, self.engine(kind), self.decoders[tp.topic], origin="failed")
        if snap is None:
            return Shard(tp, self.engine(kind), self.decoders[tp.topic])
        if snap.get("format") != SHARD_FORMAT:
            raise ServiceError(f"snapshot {name} has format {snap.get('format')}")
        engine = self.engine(kind, warm=False)
        try:
            engine.load_state_dict(snap["engine"])
        except CheckpointError as exc:
            raise ServiceError(f"snapshot {name} does not fit this configuration: "
                               f"{exc}") from exc
        return Shard(tp, engine, self.decoders[tp.topic], next_offset=snap["offset"],
                     origin="ok")
