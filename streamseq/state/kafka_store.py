"""A checkpoint store in a Kafka topic, so a replica on another machine can restore a shard.

Each snapshot is split into chunks (``chunk_bytes``, default 512 KiB, under the default
1 MB message limit) with headers holding the generation, the chunk count and the SHA-256
of the whole snapshot. Chunk ``i`` of a complete snapshot of shard ``name`` is keyed
``name#i``, chunk ``i`` of the ``k``-th delta after it ``name#dk#i``, so log compaction
keeps the newest generation of every chunk of the newest complete snapshot and of each
link of its chain (an older chain's longer links may stay; they name bases that are gone
and are skipped). Loading reads the topic, takes the generations whose chunks are all
present, and restores the newest complete one whose digest matches with its chain of
deltas (:func:`~streamseq.state.checkpoint.restore_newest`). Create the topic with
``cleanup.policy=compact`` in production.
"""

from __future__ import annotations

import hashlib
import logging
import time
from typing import Any

from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from streamseq.exceptions import CheckpointError
from streamseq.state.checkpoint import (
    SnapshotEntry,
    SnapshotRef,
    dumps,
    loads,
    restore_newest,
)

__all__ = ["KafkaCheckpointStore"]

log = logging.getLogger(__name__)


class KafkaCheckpointStore:
    """Snapshots as chunked, digest-checked records of one topic.

    Parameters
    ----------
    bootstrap
        Kafka bootstrap servers.
    topic
        The checkpoint topic (one partition is enough; compaction recommended).
    chunk_bytes
        Largest chunk value.
    client_config
        Extra kafka-python settings (security) for the producer and the reader.
    """

    def __init__(self, bootstrap: str, topic: str, chunk_bytes: int = 512 * 1024,
                 **client_config: Any) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.chunk_bytes = chunk_bytes
        self.client_config = client_config
        self._producer = KafkaProducer(bootstrap_servers=bootstrap.split(","), acks="all",
                                       max_request_size=max(2 * chunk_bytes, 1_048_576),
                                       **client_config)
        # name -> gen -> {"n": int, "sha": str, "delta": bool, "chunks": {i: bytes}}
        self._index: dict[str, dict[int, dict[str, Any]]] = {}
        self._positions: dict[TopicPartition, int] = {}
        self._gen: dict[str, int] = {}
        self._last: dict[str, tuple[SnapshotRef, int]] = {}  # name -> (ref, link in chain)

    incremental = True

    def save(self, name: str, state: dict[str, Any],
             base: SnapshotRef | None = None) -> SnapshotRef:
        link = 0
        if base is not None:
            last = self._last.get(name)
            if last is None or last[0] != base:
                raise CheckpointError(f"{name}: a delta must follow the last snapshot this "
                                      "store wrote")
            link = last[1] + 1
            state = {**state, "base": {"gen": base.gen, "sha256": base.sha256}}
        data = dumps(state)
        sha = hashlib.sha256(data).hexdigest()
        gen = max(self._gen.get(name, 0) + 1, time.time_ns())
        self._gen[name] = gen
        prefix = f"{name}#d{link}#" if link else f"{name}#"
        chunks = [data[i:i + self.chunk_bytes] for i in range(0, len(data), self.chunk_bytes)]
        futures = []
        for i, chunk in enumerate(chunks or [b""]):
            headers = [("gen", str(gen).encode()), ("n", str(len(chunks)).encode()),
                       ("i", str(i).encode()), ("sha256", sha.encode()),
                       ("name", name.encode()), ("delta", b"1" if link else b"0")]
            futures.append(self._producer.send(self.topic, key=f"{prefix}{i}".encode(),
                                               value=chunk, headers=headers))
        self._producer.flush(timeout=60)
        for f in futures:
            f.get(timeout=60)  # raises if a chunk was not delivered: the snapshot is not durable
        ref = SnapshotRef(gen, sha, len(data))
        self._last[name] = (ref, link)
        return ref

    def _refresh(self, timeout: float = 10.0) -> None:
        consumer = KafkaConsumer(bootstrap_servers=self.bootstrap.split(","),
                                 enable_auto_commit=False, **self.client_config)
        try:
            parts = consumer.partitions_for_topic(self.topic) or set()
            tps = [TopicPartition(self.topic, p) for p in sorted(parts)]
            if not tps:
                return
            consumer.assign(tps)
            for tp in tps:
                if tp in self._positions:
                    consumer.seek(tp, self._positions[tp])
                else:
                    consumer.seek_to_beginning(tp)
            deadline = time.monotonic() + timeout
            idle = 0
            while time.monotonic() < deadline and idle < 3:
                batch = consumer.poll(timeout_ms=300)
                if not batch:
                    idle += 1
                    continue
                idle = 0
                for tp, records in batch.items():
                    for r in records:
                        self._add(r)
                        self._positions[tp] = r.offset + 1
        finally:
            consumer.close()

    def _add(self, record: Any) -> None:
        h = {k: v.decode() for k, v in (record.headers or [])}
        try:
            name, gen, n, i = h["name"], int(h["gen"]), int(h["n"]), int(h["i"])
        except (KeyError, ValueError):
            return
        gens = self._index.setdefault(name, {})
        entry = gens.setdefault(gen, {"n": n, "sha": h.get("sha256", ""),
                                      "delta": h.get("delta") == "1", "chunks": {}})
        entry["chunks"][i] = record.value or b""
        # keep a few complete generations in memory, and every delta after the oldest kept
        complete = sorted((g for g, e in gens.items() if not e["delta"]), reverse=True)
        if len(complete) > 3:
            for old in [g for g in gens if g < complete[2]]:
                del gens[old]

    def load(self, name: str) -> dict[str, Any] | None:
        """The newest complete, digest-valid snapshot of ``name`` with its chain of deltas,
        or ``None`` when there is none; :class:`SnapshotsUnreadableError` when every
        complete generation found is bad. A generation whose chunks are not all there is a
        write that never completed (not durable, so nothing was committed after it): left
        out."""
        self._refresh()
        gens = self._index.get(name, {})

        def read(e: SnapshotEntry) -> tuple[dict[str, Any], str]:
            entry = gens[e.gen]
            data = b"".join(entry["chunks"][i] for i in range(entry["n"]))
            if hashlib.sha256(data).hexdigest() != entry["sha"]:
                raise CheckpointError("digest mismatch")
            return loads(data), entry["sha"]

        return restore_newest(name, [SnapshotEntry(g, e["delta"], f"gen {g}")
                                     for g, e in gens.items() if len(e["chunks"]) == e["n"]],
                              read)

    def set_aside(self, name: str) -> list[str]:
        """Nothing to move in a topic: the records stay until compaction replaces them with
        the next snapshot's chunks (copy them out first to inspect them)."""
        return []

    def close(self) -> None:
        self._producer.close(timeout=10)
