"""The limit the service is measured against: a bare kafka-python consume -> produce relay.

``python -m bench.relay --bootstrap HOST:PORT --input TOPIC --output TOPIC --group G
--status FILE``

It copies each input record (key and value bytes) to the same partition of the output
topic, with the service's client settings (:class:`streamseq.service.config.ServiceConfig`
defaults: ``fetch_max_wait_ms``, ``max_poll_records``, producer linger and batch size,
``acks=all`` with idempotence), and does nothing else: no decoding, no model, no metrics,
no checkpoints, no commits. Every half second it writes the number of records relayed to
``--status`` (end offsets are no progress probe on Tansu: they lag by a batch); SIGTERM
flushes and exits 0. What the service adds on top of this loop is its
own work; what this loop costs is kafka-python's and the broker's.
"""

from __future__ import annotations

import argparse
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
    a = p.parse_args(argv)

    import logging
    import os

    from kafka import KafkaConsumer, KafkaProducer

    from streamseq.service.config import ServiceConfig

    logging.basicConfig(level=os.environ.get("RELAY_LOG_LEVEL", "WARNING"))
    cfg = ServiceConfig()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    consumer = KafkaConsumer(
        a.input, bootstrap_servers=a.bootstrap, group_id=a.group, client_id="relay",
        enable_auto_commit=False, auto_offset_reset="earliest",
        max_poll_records=cfg.max_poll_records, fetch_max_wait_ms=cfg.fetch_max_wait_ms,
        session_timeout_ms=6000, heartbeat_interval_ms=1000)
    producer = KafkaProducer(
        bootstrap_servers=a.bootstrap, client_id="relay-producer", acks="all",
        enable_idempotence=True, linger_ms=cfg.producer_linger_ms,
        batch_size=cfg.producer_batch_bytes)
    relayed = 0
    written = time.monotonic()
    try:
        while not stop.is_set():
            batch = consumer.poll(timeout_ms=cfg.poll_timeout_ms,
                                  max_records=cfg.max_poll_records)
            send, out = producer.send, a.output
            for tp, records in batch.items():
                part = tp.partition
                for r in records:
                    send(out, key=r.key, value=r.value, partition=part)
                relayed += len(records)
            if time.monotonic() - written >= 0.5:
                a.status.write_text(str(relayed))
                written = time.monotonic()
        producer.flush(60)
        a.status.write_text(str(relayed))
    finally:
        consumer.close(autocommit=False)
        producer.close(timeout=10)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
