"""Simulators and replay produce into the real embedded broker (Tansu)."""

from __future__ import annotations

import io
import time
from collections import Counter, defaultdict

import pytest

from simulators.faults import FaultInjector, FaultRates
from simulators.output import dry_run, produce
from simulators.prices import PriceSimulator
from simulators.sensors import SensorSimulator
from streamseq.cli import main
from streamseq.events import EventDecoder

pytestmark = pytest.mark.integration

DECODER = EventDecoder()


def read_topic(bootstrap: str, topic: str, partitions: int, expected: int,
               timeout: float = 30.0) -> list[tuple[int, bytes, bytes]]:
    """All records of ``topic`` as (partition, key, value), partitions assigned by hand."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                             enable_auto_commit=False, group_id=None,
                             consumer_timeout_ms=1000)
    try:
        consumer.assign([TopicPartition(topic, p) for p in range(partitions)])
        out: list[tuple[int, bytes, bytes]] = []
        deadline = time.monotonic() + timeout
        while len(out) < expected and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=500).values():
                out.extend((r.partition, r.key, r.value) for r in records)
        # anything beyond the expected count would show up now
        for records in consumer.poll(timeout_ms=300).values():
            out.extend((r.partition, r.key, r.value) for r in records)
        return out
    finally:
        consumer.close()


def by_partition_order(records: list[tuple[int, bytes, bytes]]) -> dict[bytes, list[bytes]]:
    per_key: dict[bytes, list[bytes]] = defaultdict(list)
    partition_of: dict[bytes, int] = {}
    for part, key, value in records:
        assert partition_of.setdefault(key, part) == part, "a key's events share a partition"
        per_key[key].append(value)
    return per_key


def test_sensor_simulator_cli_lands_in_topic(broker, unique, capsysbinary):
    topic = f"sensors-{unique}"
    broker.create_topics({topic: 3})
    argv = ["simulate", "sensors", "--sensors", "7", "--values", "temp,hum", "--count", "500",
            "--seed", "3"]
    assert main([*argv, "--bootstrap", broker.bootstrap, "--topic", topic]) == 0
    capsysbinary.readouterr()
    assert main([*argv, "--dry-run"]) == 0
    expected = capsysbinary.readouterr().out.splitlines()

    records = read_topic(broker.bootstrap, topic, 3, 500)
    assert len(records) == 500
    keys = {k.decode() for _, k, _ in records}
    assert keys == {f"s-{i:04d}" for i in range(7)}
    assert Counter(v for _, _, v in records) == Counter(expected)
    per_key = by_partition_order(records)
    for key, values in per_key.items():  # a key's order survives the broker
        assert values == [v for v in expected if DECODER.decode(v).key == key.decode()]
        assert all(DECODER.decode(v).key == key.decode() for v in values)


def test_replay_cli_lands_in_topic(broker, unique, data_dir):
    topic = f"replay-{unique}"
    broker.create_topics({topic: 2})
    folder = data_dir / "price/lean_equity_ticks"
    assert main(["replay", str(folder), "--limit", "150", "--bootstrap", broker.bootstrap,
                 "--topic", topic, "--rate", "5000"]) == 0
    records = read_topic(broker.bootstrap, topic, 2, 600)
    assert len(records) == 600
    per_key = by_partition_order(records)
    assert {k.decode() for k in per_key} == {"AIG", "BAC", "IBM", "SPY"}
    for key, values in per_key.items():
        events = [EventDecoder(kind="price").decode(v) for v in values]
        assert len(events) == 150 and all(e.key == key.decode() for e in events)
        stamps = [e.ts_ms for e in events]
        assert stamps == sorted(stamps)


def test_produce_api_with_faults(broker, unique):
    topic = f"prices-{unique}"
    broker.create_topics({topic: 4})

    def messages() -> object:
        sim = PriceSimulator(5, seed=9)
        return FaultInjector(FaultRates(duplicate=0.05, malformed=0.02), seed=9).apply(
            sim.messages())

    n = produce(messages(), broker.bootstrap, topic, count=2000, linger_ms=5)
    assert n == 2000
    local = io.BytesIO()
    dry_run(messages(), local, count=2000)
    records = read_topic(broker.bootstrap, topic, 4, 2000)
    assert Counter(v for _, _, v in records) == Counter(local.getvalue().splitlines())
    assert {k.decode() for _, k, _ in records} == {f"SYM{i}" for i in range(5)}


def test_produce_api_respects_rate(broker, unique):
    topic = f"rate-{unique}"
    broker.create_topics({topic: 1})
    t0 = time.monotonic()
    n = produce(SensorSimulator(3, seed=1).messages(), broker.bootstrap, topic, count=301,
                rate=300)
    elapsed = time.monotonic() - t0
    assert n == 301
    assert 0.9 < elapsed < 15.0, elapsed  # 300 intervals at 300/s, plus connect and flush
    assert len(read_topic(broker.bootstrap, topic, 1, 301)) == 301
