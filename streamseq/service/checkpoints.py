"""Checkpoints of the service: flush -> durable snapshot -> commit, in the background.

The order is what makes restarts exact: a snapshot may only cover predictions that were
delivered (the producer is flushed first, and any undelivered record fails the checkpoint),
and offsets are committed only after the snapshots that cover them are durable. The snapshot
(with its offset) is the source of truth for restores; the committed offset follows it and
serves lag monitoring and tools. A crash anywhere in between re-processes from the last
durable snapshot, with the same prediction ids.

The stream stops only for the copy: :meth:`Checkpointer.start` takes each shard's
``state_dict()`` (copies of the engine's arrays, no memory shared with the live engine) at
its stream position, between two batches, and hands them to a writer thread, which flushes
the producer, serialises and writes the snapshots while the loop goes on; the loop commits
the offsets when it sees the write finished (:meth:`Checkpointer.poll`; the consumer is
not shared across threads). One checkpoint is in flight at a time. A revocation and the
final checkpoint wait for it, then write synchronously (:meth:`Checkpointer.checkpoint`).

Snapshots are proportional to what changed: when the store takes deltas, a shard's snapshot
holds the weights, optimizer, pending windows and counters plus only the rows of the keys
changed since its previous snapshot, which it names as its base. A complete snapshot is
written first (after a start or a restore), after ``full_every`` deltas, when more than
``delta_share`` of the keys changed, when the deltas since the last complete snapshot would
hold more keys than it (so a restore reads at most about two complete snapshots' worth, and
the store holds at most one more), and after any checkpoint that failed (its change marks
were cleared by the copy, so the next snapshot must not rely on them).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from kafka import TopicPartition
from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata

from streamseq.metrics import ServiceMetrics
from streamseq.service.clients import DeliveryError, Sender
from streamseq.service.shards import Shard
from streamseq.state.checkpoint import CheckpointStore, SnapshotRef

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


@dataclass(frozen=True)
class _Copy:
    """One shard's state at its stream position, taken by :meth:`Checkpointer.start`
    (complete, or a delta on top of ``base``)."""

    shard: Shard
    offset: int
    state: dict[str, Any]
    base: SnapshotRef | None
    share: float  # keys changed per key held


_Written = tuple[str, dict[TopicPartition, Any], list[SnapshotRef]]


class Checkpointer:
    """Decides when a checkpoint is due and writes it in the background.

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
    full_every
        A shard's snapshot is complete after this many deltas (0: always complete).
    delta_share
        A shard's snapshot is complete when more than this share of its keys changed.
    """

    def __init__(self, store: CheckpointStore, sender: Sender, metrics: ServiceMetrics,
                 every_events: int, every_seconds: float, full_every: int = 8,
                 delta_share: float = 0.5) -> None:
        self.store = store
        self.sender = sender
        self.metrics = metrics
        self.every_events = every_events
        self.every_seconds = every_seconds
        self.full_every = full_every if store.incremental else 0
        self.delta_share = delta_share
        self.events_since = 0
        self.last = time.monotonic()
        self.disabled = False
        self._pending: tuple[float, list[_Copy], Future[_Written]] | None = None

    def note(self, records: int) -> None:
        """``records`` more input records were applied."""
        self.events_since += records

    @property
    def writing(self) -> bool:
        """The writer thread is at work on a checkpoint."""
        return self._pending is not None and not self._pending[2].done()

    def due(self) -> bool:
        """A checkpoint is due (and none is in flight: written but not committed yet)."""
        return self._pending is None and (self.events_since >= self.every_events
                                          or time.monotonic() - self.last >= self.every_seconds)

    def start(self, shards: Sequence[Shard]) -> float:
        """Copy the state of every shard in ``shards`` that applied anything, now (the only
        pause of the stream), and write it in the background. Returns the seconds the copy
        took. Call :meth:`poll` to commit when the write is done."""
        if self._pending is not None:
            raise RuntimeError("a checkpoint is already in flight")
        t0 = time.perf_counter()
        self.last = time.monotonic()
        self.events_since = 0
        copies = [self._copy(s, s.next_offset) for s in shards if s.next_offset is not None]
        paused = time.perf_counter() - t0
        self.metrics.checkpoint_pause_seconds.observe(paused)
        future: Future[_Written] = Future()

        def write() -> None:
            try:
                future.set_result(self._write(copies))
            except BaseException as exc:  # noqa: BLE001 - handed to poll()
                future.set_exception(exc)

        # a daemon: an exit during a broker outage does not wait for a flush that cannot
        # succeed (a write cut short leaves a temporary file, never a torn snapshot)
        threading.Thread(target=write, name="streamseq-checkpoint", daemon=True).start()
        self._pending = (t0, copies, future)
        return paused

    def _copy(self, shard: Shard, offset: int) -> _Copy:
        """``shard``'s snapshot: a delta on its last durable one when allowed and small."""
        share = shard.changed_share()
        delta = (shard.deltas < self.full_every and share <= self.delta_share
                 and shard.chain_share + share <= 1.0)
        return _Copy(shard, offset, shard.snapshot(delta), shard.base if delta else None, share)

    def _write(self, copies: list[_Copy]) -> _Written:
        """The writer thread: flush -> snapshots durable; the offsets they cover and the
        snapshots' references."""
        try:
            self.sender.flush(timeout=60)
        except DeliveryError as exc:
            if exc.lost:
                log.error("%s: not committing; rewinding to the last snapshots", exc)
                return Outcome.REWIND, {}, []
            log.error("%s: not checkpointing now", exc)
            return Outcome.RETRY, {}, []
        offsets, refs = {}, []
        for c in copies:
            refs.append(self.store.save(c.shard.name, c.state, base=c.base))
            offsets[c.shard.tp] = OffsetAndMetadata(c.offset, "", -1)
        return Outcome.OK, offsets, refs

    def poll(self, commit: Commit, wait: bool = False) -> str | None:
        """When the checkpoint being written is done (or, with ``wait``, once it is): commit
        its offsets on this thread and return its outcome; ``None`` if none finished."""
        if self._pending is None:
            return None
        t0, copies, future = self._pending
        if not wait and not future.done():
            return None
        self._pending = None
        for c in copies:  # until a write succeeds, the next snapshot is complete
            c.shard.base = None
        try:
            outcome, offsets, refs = future.result()
        except Exception as exc:  # noqa: BLE001 - the store failed: count, retry when due
            self.metrics.checkpoints.labels(outcome="failed").inc()
            log.error("checkpoint failed writing a snapshot (%s: %s); the previous snapshots "
                      "stay the truth, retrying when the next one is due",
                      type(exc).__name__, exc)
            return Outcome.RETRY
        if outcome != Outcome.OK:
            self.metrics.checkpoints.labels(outcome="failed").inc()
            return outcome
        for c, ref in zip(copies, refs, strict=True):
            kind = "complete" if c.base is None else "delta"
            self.metrics.snapshots.labels(kind=kind).inc()
            self.metrics.snapshot_bytes.labels(kind=kind).inc(ref.size)
            c.shard.base = ref
            c.shard.deltas = c.shard.deltas + 1 if c.base is not None else 0
            c.shard.chain_share = c.shard.chain_share + c.share if c.base is not None else 0.0
        if offsets:
            try:
                commit(offsets)
            except KafkaError as exc:  # the snapshot is durable; the commit only lags
                log.warning("offset commit failed (%s); snapshots are durable", exc)
        self.metrics.checkpoint_done(time.perf_counter() - t0)
        return Outcome.OK

    def checkpoint(self, shards: Sequence[Shard], commit: Commit) -> str:
        """A checkpoint now, synchronously (a revocation, the final one): the one being
        written is finished first; then flush -> snapshot ``shards`` -> commit."""
        if self.disabled:
            log.warning("not checkpointing %d shards (after a failure, or the broker is "
                        "unreachable): the last durable snapshots stay the truth", len(shards))
            return Outcome.DISABLED
        earlier = self.poll(commit, wait=True)
        if earlier == Outcome.REWIND:
            return earlier
        self.start(shards)
        outcome = self.poll(commit, wait=True)
        assert outcome is not None
        return outcome

    def close(self, wait: bool = True) -> None:
        """Let a write in flight finish (its snapshot is consistent; never committed now)
        unless ``wait`` is false (the broker is unreachable: its flush cannot succeed)."""
        if self._pending is not None and wait:
            with contextlib.suppress(Exception):
                self._pending[2].result()
