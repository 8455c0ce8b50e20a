"""The Kafka checkpoint store with deltas, on the real embedded broker: a replica reading the
topic restores the complete snapshot and its chain of deltas bit for bit, skips a corrupt or
unfinished delta, and compaction keys keep every link of the newest chain."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from streamseq.service.checkpoints import Outcome
from streamseq.state.kafka_store import KafkaCheckpointStore
from tests.unit.test_incremental import NAME, CheckpointedShard, differences


def _keys(bootstrap: str, topic: str) -> list[str]:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                             consumer_timeout_ms=3000)
    try:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        consumer.seek_to_beginning(tp)
        return [r.key.decode() for r in consumer]
    finally:
        consumer.close()


def test_a_replica_restores_complete_plus_deltas_bit_for_bit(broker: Any, unique: str,
                                                             tmp_path: Path) -> None:
    topic = f"checkpoints-{unique}"
    broker.create_topics({topic: 1})
    writer = KafkaCheckpointStore(broker.bootstrap, topic, chunk_bytes=16 * 1024)
    replica = KafkaCheckpointStore(broker.bootstrap, topic, chunk_bytes=16 * 1024)
    try:
        svc = CheckpointedShard(tmp_path, full_every=3, store=writer)
        svc.run(0, new=24)
        links = []
        for i in range(6):
            svc.run(3, new=4 if i % 3 == 1 else 0)  # evictions under the key cap too
            assert svc.checkpoint() == Outcome.OK
            links.append(svc.shard.deltas)
            restored = replica.load(NAME)
            assert restored is not None and restored["offset"] == svc.offset
            diffs = differences(restored["engine"], svc.live())
            assert not diffs, (i, links, diffs[:5])
        assert links == [0, 1, 2, 3, 0, 1]  # complete, three deltas, complete, a delta
        keys = set(_keys(broker.bootstrap, topic))
        assert {f"{NAME}#0", f"{NAME}#d1#0", f"{NAME}#d2#0", f"{NAME}#d3#0"} <= keys

        # a newer delta that fails its digest, and one whose chunks are not all there:
        # neither is applied, the state is the last good link's
        good = {"offset": svc.offset, "engine": svc.live()}
        producer = KafkaProducer(bootstrap_servers=broker.bootstrap)
        try:
            for gen, n in ((2**62, 1), (2**62 + 1, 2)):
                headers = [("gen", str(gen).encode()), ("n", str(n).encode()),
                           ("i", b"0"), ("sha256", b"0" * 64), ("name", NAME.encode()),
                           ("delta", b"1")]
                producer.send(topic, key=f"{NAME}#d2#0".encode(), value=b"garbage",
                              headers=headers)
            producer.flush(timeout=30)
        finally:
            producer.close()
        restored = replica.load(NAME)
        assert restored is not None and restored["offset"] == good["offset"]
        assert not differences(restored["engine"], good["engine"])
    finally:
        writer.close()
        replica.close()
