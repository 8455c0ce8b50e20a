"""A checkpoint store in a Kafka topic, so a replica on another machine can restore a shard.

Each snapshot is split into chunks (``chunk_bytes``, default 512 KiB, under the default
1 MB message limit); chunk ``i`` of shard ``name`` is keyed ``name#i`` (so log compaction
keeps the newest generation of every chunk) and carries headers with the generation, the
chunk count and the SHA-256 of the whole snapshot. Loading reads the topic, assembles the
newest generation whose chunks are all present and whose digest matches, and ignores torn
ones. Create the topic with ``cleanup.policy=compact`` in production.

This store takes complete snapshots only (``incremental`` is false): compaction keeps one
record per chunk key, so a chain of deltas would need keys per link and a retention that
knows which complete snapshot they build on. The service writes every snapshot complete
when its store is this one.
"""

from __future__ import annotations

import hashlib
import logging
import time
from typing import Any

from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from streamseq.exceptions import CheckpointError
from streamseq.state.checkpoint import SnapshotRef, SnapshotsUnreadableError, dumps, loads

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
        # name -> gen -> {"n": int, "sha": str, "chunks": {i: bytes}}
        self._index: dict[str, dict[int, dict[str, Any]]] = {}
        self._positions: dict[TopicPartition, int] = {}
        self._gen: dict[str, int] = {}

    incremental = False

    def save(self, name: str, state: dict[str, Any],
             base: SnapshotRef | None = None) -> SnapshotRef:
        if base is not None:
            raise CheckpointError("the Kafka checkpoint store takes complete snapshots only")
        data = dumps(state)
        sha = hashlib.sha256(data).hexdigest()
        gen = max(self._gen.get(name, 0) + 1, time.time_ns())
        self._gen[name] = gen
        chunks = [data[i:i + self.chunk_bytes] for i in range(0, len(data), self.chunk_bytes)]
        futures = []
        for i, chunk in enumerate(chunks or [b""]):
            headers = [("gen", str(gen).encode()), ("n", str(len(chunks)).encode()),
                       ("i", str(i).encode()), ("sha256", sha.encode()),
                       ("name", name.encode())]
            futures.append(self._producer.send(self.topic, key=f"{name}#{i}".encode(),
                                               value=chunk, headers=headers))
        self._producer.flush(timeout=60)
        for f in futures:
            f.get(timeout=60)  # raises if a chunk was not delivered: the snapshot is not durable
        return SnapshotRef(gen, sha)

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
        entry = gens.setdefault(gen, {"n": n, "sha": h.get("sha256", ""), "chunks": {}})
        entry["chunks"][i] = record.value or b""
        for old in sorted(gens)[:-3]:  # keep a few generations in memory
            del gens[old]

    def load(self, name: str) -> dict[str, Any] | None:
        """The newest complete, digest-valid snapshot of ``name``, or ``None`` when there is
        none; :class:`SnapshotsUnreadableError` when every generation found is torn or bad."""
        self._refresh()
        reasons = []
        for gen in sorted(self._index.get(name, {}), reverse=True):
            entry = self._index[name][gen]
            if len(entry["chunks"]) != entry["n"]:  # a write that never completed (not durable,
                continue                             # so nothing was committed after it)
            data = b"".join(entry["chunks"][i] for i in range(entry["n"]))
            if hashlib.sha256(data).hexdigest() != entry["sha"]:
                log.warning("checkpoint %s gen %d fails its digest; trying an older one",
                            name, gen)
                reasons.append(f"gen {gen}: digest mismatch")
                continue
            try:
                return loads(data)
            except CheckpointError as exc:
                log.warning("checkpoint %s gen %d unreadable: %s", name, gen, exc)
                reasons.append(f"gen {gen}: {exc}")
        if reasons:
            raise SnapshotsUnreadableError(name, reasons)
        return None

    def set_aside(self, name: str) -> list[str]:
        """Nothing to move in a topic: the records stay until compaction replaces them with
        the next snapshot's chunks (copy them out first to inspect them)."""
        return []

    def close(self) -> None:
        self._producer.close(timeout=10)
