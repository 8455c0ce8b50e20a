"""The limit the service is measured against: a bare kafka-python consume -> produce relay.

``python -m bench.relay --bootstrap HOST:PORT --input TOPIC --output TOPIC --group G
--status FILE [--fetch-max-wait-ms 10 --max-poll-records 2000 --poll-timeout-ms 200
--linger-ms 2 --batch-bytes 1048576]``

It copies each input record (key and value bytes) to the same partition of the output
topic, with the client settings it is given (``bench.e2e`` passes the service's defaults
from :class:`streamseq.service.config.ServiceConfig`; ``acks=all`` with idempotence), and
does nothing else: no decoding, no model, no metrics, no checkpoints, no commits. It imports
kafka-python only: reading the settings from ``streamseq`` would import torch, and the
relay would then carry torch's ~150,000 Python objects through every full collection of
Python's garbage collector (measured by hand, 2026-12-02: 17-18 µs of main-thread CPU per
event instead of 9-10 with that heap kept out of the collector), a cost no bare relay has.

Every tenth of a second it writes the number of records relayed and the seconds spent so
far in Python's cyclic garbage collector to ``--status`` (end offsets are no progress probe
on Tansu: they lag by a batch); SIGTERM flushes and exits 0. What the service adds on top
of this loop is its own work; what this loop costs is kafka-python's and the broker's.
"""

from __future__ import annotations

import argparse
import gc
import signal
import threading
import time
from collections.abc import Sequence
from pathlib import Path


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.relay", description=__doc__.split("\n")[0])
    p.add_argument("--bootstrap", required=True)
    p.add_argument("--input", required=True)
    p.add_argument("--output", required=True)
    p.add_argument("--group", required=True)
    p.add_argument("--status", type=Path, required=True)
    p.add_argument("--fetch-max-wait-ms", type=int, default=10)
    p.add_argument("--max-poll-records", type=int, default=2000)
    p.add_argument("--poll-timeout-ms", type=int, default=200)
    p.add_argument("--linger-ms", type=int, default=2)
    p.add_argument("--batch-bytes", type=int, default=1_048_576)
    a = p.parse_args(argv)

    import logging
    import os

    from kafka import KafkaConsumer, KafkaProducer

    logging.basicConfig(level=os.environ.get("RELAY_LOG_LEVEL", "WARNING"))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    consumer = KafkaConsumer(
        a.input, bootstrap_servers=a.bootstrap, group_id=a.group, client_id="relay",
        enable_auto_commit=False, auto_offset_reset="earliest",
        max_poll_records=a.max_poll_records, fetch_max_wait_ms=a.fetch_max_wait_ms,
        session_timeout_ms=6000, heartbeat_interval_ms=1000)
    producer = KafkaProducer(
        bootstrap_servers=a.bootstrap, client_id="relay-producer", acks="all",
        enable_idempotence=True, linger_ms=a.linger_ms, batch_size=a.batch_bytes)
    collector = [0.0, 0.0]  # seconds in the garbage collector, start of the current one

    def timed(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            collector[1] = time.perf_counter()
        else:
            collector[0] += time.perf_counter() - collector[1]

    gc.callbacks.append(timed)
    relayed = 0
    written = time.monotonic()
    try:
        while not stop.is_set():
            batch = consumer.poll(timeout_ms=a.poll_timeout_ms, max_records=a.max_poll_records)
            send, out = producer.send, a.output
            for tp, records in batch.items():
                part = tp.partition
                for r in records:
                    send(out, key=r.key, value=r.value, partition=part)
                relayed += len(records)
            if time.monotonic() - written >= 0.1:  # the bench reads progress from it
                a.status.write_text(f"{relayed} {collector[0]:.6f}")
                written = time.monotonic()
        producer.flush(60)
        a.status.write_text(f"{relayed} {collector[0]:.6f}")
    finally:
        consumer.close(autocommit=False)
        producer.close(timeout=10)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
