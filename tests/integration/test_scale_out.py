"""The scale-out variant of deploy/k8s/scale-out: replicas without a shared volume, each
with a directory of its own, hand shards over through the Kafka checkpoint store
(``--checkpoint-store kafka``) and continue exactly."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from streamseq.state.kafka_store import KafkaCheckpointStore
from tests.integration.harness import (
    ServiceTopics,
    TopicReader,
    committed_offsets,
    produce,
    read_topic,
    reference_run,
    sensor_stream,
    service_args,
    state_differences,
    wait_for_predictions,
    wait_until,
)
from tests.integration.test_service import (  # noqa: F401 - spawn is a fixture
    PREDICTION_TIMEOUT,
    RTOL,
    assert_predictions_match,
    next_offsets,
    spawn,
    split,
)

pytestmark = pytest.mark.integration


def test_replicas_without_a_shared_volume_take_over_through_the_kafka_store(
        broker: Any, unique: str, tmp_path: Path, spawn: Any) -> None:  # noqa: F811
    topics = ServiceTopics.create(broker, unique)
    checkpoint_topic = f"checkpoints-{unique}"
    broker.create_topics({checkpoint_topic: 1})
    events = sensor_stream(2400, n_keys=8, seed=5)
    part1, part2 = split(events, 0.5)

    def args(name: str) -> list[str]:  # a checkpoint directory per replica, never shared
        return service_args(broker.bootstrap, topics, f"g-{unique}", tmp_path / name,
                            checkpoint_every_events=300,
                            extra=["--checkpoint-store", "kafka",
                                   "--checkpoint-topic", checkpoint_topic])

    with TopicReader(broker.bootstrap, topics.prediction) as reader:
        a, b = spawn(args("a"), "a"), spawn(args("b"), "b")
        a.wait_ready()
        b.wait_ready()
        wait_until(lambda: a.metric("streamseq_shards_assigned") == 1
                   and b.metric("streamseq_shards_assigned") == 1, 60,
                   "one partition each", on_timeout=lambda: a.log_tail() + b.log_tail())
        produce(broker.bootstrap, topics.sensor, part1)
        wait_until(lambda: a.metric("streamseq_events_consumed_total")
                   + b.metric("streamseq_events_consumed_total") >= len(part1), 60,
                   "part 1 consumed by the pair", on_timeout=lambda: a.log_tail() + b.log_tail())
        assert b.metric("streamseq_events_consumed_total") > 0
        assert b.terminate() == 0  # its final snapshot goes to the topic, not to a's disk
        a.wait_until(lambda: a.metric("streamseq_shards_assigned") == 2, 60,
                     "the survivor owns both partitions")
        produce(broker.bootstrap, topics.sensor, part2)
        inputs = read_topic(broker.bootstrap, topics.sensor, len(events))
        ref = reference_run(inputs, args("ref"))
        wait_for_predictions(reader, ref.predictions, PREDICTION_TIMEOUT, a.log_tail)
        assert a.terminate() == 0
        reader.drain()
        assert_predictions_match(reader.records, ref, duplicates=False)
    ends = next_offsets(inputs)
    assert committed_offsets(broker.bootstrap, f"g-{unique}", topics.sensor, range(2)) == ends
    assert "restored" in a.log_path.read_text(), "the survivor restored the other's shard"
    assert not any((tmp_path / name).exists() and any((tmp_path / name).iterdir())
                   for name in ("a", "b")), "a local snapshot was written"
    store = KafkaCheckpointStore(broker.bootstrap, checkpoint_topic)
    try:
        for p in range(topics.partitions):
            snap = store.load(f"{topics.sensor}-{p}")
            assert snap is not None and snap["offset"] == ends[p], p
            diff = state_differences(snap["engine"], ref.state(p), rtol=RTOL)
            assert not diff, f"partition {p}: state differs from the uninterrupted run: {diff}"
    finally:
        store.close()
