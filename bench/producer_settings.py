"""Producer settings for the prediction topic, chosen by measurement.

``python -m bench.producer_settings [--records 20000] [--rate 1000] [--seconds 4]
[--report bench/results/producer_settings.md]``

For each setting (``linger_ms``, ``batch_size``, ``compression_type``) a kafka-python
producer configured as the service's (``acks=all``, idempotence) sends prediction records
of the service's layout (200 keys, partition named as the service names it) to the
embedded broker:

1. **Burst**: ``--records`` records as fast as possible, as the service sends a polled
   batch's predictions while it drains a backlog: µs of CPU per record in the sending
   thread, in the whole process (with kafka-python's sender thread), and wall time.
2. **Paced**: ``--rate`` records per second for ``--seconds``, as the service sends them
   when caught up: latency from ``send`` to arrival at a consumer of the topic
   (``fetch_max_wait_ms=5``), p50 and p99.

Settings are measured in rounds (each setting once per round, ``--rounds`` rounds) and the
best round is kept, because the machine is shared.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.common import cpu_model  # noqa: E402
from streamseq.service.config import ServiceConfig  # noqa: E402

REPORT = ROOT / "bench" / "results" / "producer_settings.md"
VALUE = (b'{"id":"sensors:0:123456","key":"s-0001","kind":"sensor","event_ts":1704067200000,'
         b'"target_ts":[1704067260000],"horizon":1,"yhat":{"temp":[21.7123456789]},'
         b'"lo":{"temp":[21.1234567891]},"hi":{"temp":[22.4345678912]},"model_version":118,'
         b'"source":{"topic":"sensors","partition":0,"offset":123456}}')
SETTINGS = (  # linger_ms, batch_size, compression
    (0, 262_144, None), (1, 262_144, None), (2, 262_144, None), (5, 262_144, None),
    (10, 262_144, None), (2, 65_536, None), (2, 1_048_576, None), (5, 1_048_576, None),
    (2, 262_144, "gzip"), (2, 262_144, "lz4"), (2, 262_144, "zstd"), (2, 262_144, "snappy"),
)


def codec_available(name: str | None) -> bool:
    from kafka import codec

    return name is None or {"gzip": codec.has_gzip, "lz4": codec.has_lz4,
                            "zstd": codec.has_zstd, "snappy": codec.has_snappy}[name]()


def producer(bootstrap: str, linger: int, batch: int, compression: str | None) -> Any:
    from kafka import KafkaProducer

    return KafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True,
                         linger_ms=linger, batch_size=batch, compression_type=compression,
                         client_id="bench-producer-settings")


def burst(bootstrap: str, topic: str, setting: tuple[int, int, str | None],
          n: int) -> dict[str, float]:
    """Send ``n`` records as fast as possible; CPU µs per record and wall seconds."""
    from streamseq.service.clients import KeyPartitioner

    p = producer(bootstrap, *setting)
    p.send(topic, key=b"warm", value=VALUE).get(30)
    part = KeyPartitioner(p, topic)
    part.refresh()
    keys = [f"s-{i % 200:04d}".encode() for i in range(n)]
    send, of = p.send, part.of
    wall0, proc0, thread0 = time.perf_counter(), time.process_time(), time.thread_time()
    for k in keys:
        send(topic, key=k, value=VALUE, partition=of(k))
    thread1 = time.thread_time()
    p.flush(120)
    wall1, proc1 = time.perf_counter(), time.process_time()
    p.close(10)
    return {"send_us": 1e6 * (thread1 - thread0) / n, "cpu_us": 1e6 * (proc1 - proc0) / n,
            "wall_s": wall1 - wall0}


def paced(bootstrap: str, topic: str, setting: tuple[int, int, str | None], rate: float,
          seconds: float) -> dict[str, float]:
    """Send at ``rate`` for ``seconds``; send -> arrival latency (ms) at a consumer."""
    from kafka import KafkaConsumer, TopicPartition

    from streamseq.service.clients import KeyPartitioner

    p = producer(bootstrap, *setting)
    p.send(topic, key=b"warm", value=VALUE).get(30)
    part = KeyPartitioner(p, topic)
    part.refresh()
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None,
                             enable_auto_commit=False, fetch_max_wait_ms=5)
    tps = [TopicPartition(topic, q) for q in sorted(p.partitions_for(topic))]
    consumer.assign(tps)
    consumer.seek_to_end(*tps)
    start_ms = int(time.time() * 1000) - 1  # record timestamps are whole ms
    n = int(rate * seconds)
    lat: list[float] = []
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            for recs in consumer.poll(timeout_ms=50).values():
                now = time.time() * 1000
                lat.extend(now - r.timestamp for r in recs if r.timestamp >= start_ms)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    t0 = time.monotonic()
    for i in range(n):
        ahead = t0 + i / rate - time.monotonic()
        if ahead > 0:
            time.sleep(ahead)
        k = f"s-{i % 200:04d}".encode()
        p.send(topic, key=k, value=VALUE, partition=part.of(k))
    p.flush(60)
    deadline = time.monotonic() + 30
    while len(lat) < n and time.monotonic() < deadline:
        time.sleep(0.05)
    stop.set()
    reader.join(5)
    consumer.close()
    p.close(10)
    lat.sort()
    return {"p50_ms": lat[len(lat) // 2], "p99_ms": lat[min(len(lat) - 1, int(0.99 * len(lat)))],
            "n": len(lat)}


def name(setting: tuple[int, int, str | None]) -> str:
    linger, batch, compression = setting
    return f"linger {linger} ms, batch {batch // 1024} KiB, {compression or 'none'}"


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.producer_settings",
                                 description=__doc__.split("\n")[0])
    ap.add_argument("--records", type=int, default=20_000)
    ap.add_argument("--rate", type=float, default=1000.0)
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--report", type=Path, default=REPORT)
    a = ap.parse_args(argv)
    sys.setswitchinterval(0.0005)  # the reader thread times arrivals: hand off often

    from streamseq.broker import EmbeddedBroker

    load0 = " ".join(f"{x:.1f}" for x in os.getloadavg())
    settings = [s for s in SETTINGS if codec_available(s[2])]
    missing = [s[2] for s in SETTINGS if not codec_available(s[2])]
    best: dict[tuple[int, int, str | None], dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp, EmbeddedBroker(
            log_path=Path(tmp) / "broker.log") as broker:
        topic_no = 0
        for rnd in range(a.rounds):
            for s in settings:
                topic_no += 1
                topic = f"settings-{topic_no}"
                broker.create_topics({topic: 2})
                r = burst(broker.bootstrap, topic, s, a.records)
                r.update(paced(broker.bootstrap, topic, s, a.rate, a.seconds))
                print(f"round {rnd}: {name(s)}: {r}", flush=True)
                old = best.get(s)
                if old is None:
                    best[s] = r
                else:  # the best of the rounds, figure by figure
                    best[s] = {k: min(old[k], r[k]) for k in r}
    cfg = ServiceConfig()
    chosen = (cfg.producer_linger_ms, cfg.producer_batch_bytes,
              None if cfg.producer_compression == "none" else cfg.producer_compression)
    lines = [
        "# Producer settings of the prediction topic",
        "",
        f"Command: `python -m bench.producer_settings "
        f"{' '.join(argv if argv is not None else sys.argv[1:])}`  ",
        f"Date: {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M UTC}; {cpu_model()}, "
        f"{os.cpu_count()} cores shared with other work (load average {load0} at start, "
        f"{' '.join(f'{x:.1f}' for x in os.getloadavg())} at the end); the embedded "
        "broker (Tansu) on loopback.  ",
        f"Records of the prediction layout ({len(VALUE)} bytes, 200 keys, partition named "
        "per key), `acks=all` with idempotence; best of "
        f"{a.rounds} rounds. Burst: {a.records:,} records sent as fast as possible (a "
        "drain). Paced: "
        f"{a.rate:,.0f} records/s for {a.seconds:.0f} s (caught up), send -> arrival at a "
        "consumer with `fetch_max_wait_ms=5` (its own wait included).",
        "",
        "| setting | burst: send µs/record (calling thread) | burst: CPU µs/record (process) "
        "| burst: records/s | paced: p50 / p99 ms |",
        "|---|---:|---:|---:|---:|",
    ]
    for s in settings:
        r = best[s]
        mark = " (**the service's default**)" if s == chosen else ""
        lines.append(f"| {name(s)}{mark} | {r['send_us']:.1f} | {r['cpu_us']:.1f} | "
                     f"{a.records / r['wall_s']:,.0f} | {r['p50_ms']:.1f} / "
                     f"{r['p99_ms']:.1f} |")
    if missing:
        lines += ["", "Not measured (their codec libraries are not installed, and the "
                  f"service does not depend on them): {', '.join(map(str, missing))}."]
    text = "\n".join(lines) + "\n"
    a.report.parent.mkdir(parents=True, exist_ok=True)
    a.report.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
