"""End-to-end speed of the Kafka service, against a bare relay, in one run on one broker.

``python -m bench.e2e [--events 60000] [--keys 200] [--rates 1000,5000] [--seconds 15]
[--profile] [--report bench/results/e2e.md]``

What it measures, on the local embedded broker (Tansu) and this machine, all in one run
(the machine is shared: figures are read as ratios to the relay of the same run):

1. **Kafka client costs.** The input topic is filled with ``--events`` sensor events of
   ``--keys`` keys and read back with a bare consumer: µs per record for each.
2. **The service's own work without Kafka.** The pipeline step (decode, engine, prediction
   records) on the same records, per partition in polls of ``max_poll_records``, with and
   without learning; decoding alone and building the records alone.
3. **Throughput.** On the filled topic, each drains it into its own output topic: (a) a
   bare kafka-python consume -> produce relay (``bench.relay``: the limit), (b) the service
   with ``--no-learn``, (c) the service with its defaults (checkpoints on, their defaults),
   (d) ``--workers 2`` when ``streamseq run`` has that flag. Throughput = output records /
   (last - first output record timestamp), best of ``--repeat`` runs.
4. **Latency at fixed offered rates** (``--rates``, each for ``--seconds``), the relay and
   the service with defaults, each rate of each runner on an input topic of its own filled
   with the same ``--events`` and caught up beforehand (on Tansu a fetch costs more the more
   batches the topic holds: a shared topic would hand a later phase a slower broker): per
   event, the output record's timestamp (set when the relay or service hands it to its producer) minus the input
   record's (set when the bench hands it to its producer), and the time the output record
   reached a consumer of the output topic (``fetch_max_wait_ms=5``) minus the same.
5. ``--profile``: a further drain of (a), (b) and (c) under py-spy (all threads): µs per
   event by part (consumer, decode, engine, learning, records, producer, metrics), the
   relay's classified like the service's so that their kafka-python parts compare.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.common import cpu_model  # noqa: E402
from streamseq.config import LearnerConfig  # noqa: E402
from streamseq.service.config import ServiceConfig  # noqa: E402
from tests.integration.harness import (  # noqa: E402
    Message,
    ServiceProcess,
    ServiceTopics,
    TopicReader,
    TopicRecord,
    produce,
    reference_config,
    sensor_stream,
    service_args,
    wait_until,
)

REPORT = ROOT / "bench" / "results" / "e2e.md"
NOTES = ROOT / "bench" / "e2e_notes.md"  # measured by hand, dated: appended to the report
_LC = LearnerConfig()  # the service's learner defaults
_SC = ServiceConfig()  # the service's defaults (client settings, checkpoints)


# ---------------------------------------------------------------------------- machine
def machine() -> dict[str, str]:
    import kafka
    import torch

    return {"cpu": cpu_model(), "cores": str(os.cpu_count()),
            "python": platform.python_version(), "torch": torch.__version__,
            "kafka-python": kafka.__version__, "os": platform.platform()}


def load() -> str:
    try:
        return " ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "?"


def pct(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile of sorted ``values`` (nearest rank)."""
    return float(values[min(len(values) - 1, int(q * len(values)))])


# ---------------------------------------------------------------------------- stages
def produce_timed(bootstrap: str, topic: str, messages: Sequence[Message]) -> float:
    """Produce as fast as possible; seconds."""
    t0 = time.perf_counter()
    n = produce(bootstrap, topic, messages, linger_ms=20)
    assert n == len(messages)
    return time.perf_counter() - t0


def consume_timed(bootstrap: str, topic: str, n: int) -> tuple[list[TopicRecord], float]:
    """Read the whole topic back with a bare consumer; (records, seconds)."""
    t0 = time.perf_counter()
    with TopicReader(bootstrap, topic) as reader:
        reader.read_until(lambda recs: len(recs) >= n, 120, f"{n} records")
        records = list(reader.records)
    return records, time.perf_counter() - t0


def by_partition(records: Sequence[TopicRecord]) -> dict[int, list[TopicRecord]]:
    parts: dict[int, list[TopicRecord]] = defaultdict(list)
    for r in records:
        parts[r.partition].append(r)
    for recs in parts.values():
        recs.sort(key=lambda r: r.offset)
    return dict(sorted(parts.items()))


def in_process(records: Sequence[TopicRecord], args: Sequence[str], chunk: int,
               repeat: int) -> dict[str, float]:
    """µs per event of the service's own work without Kafka, per partition in polls of
    ``chunk`` records: ``step`` (the whole pipeline step: decode, engine, records),
    ``decode`` (the record decoder alone), ``records`` (building the prediction records
    alone, from the engine outputs of the step); best of ``repeat``."""
    import torch

    from streamseq.pipeline import apply
    from streamseq.predictions import PredictionEncoder
    from streamseq.service.shards import ShardFactory

    torch.set_num_threads(1)
    factory = ShardFactory(reference_config(args))
    parts = by_partition(records)
    n = len(records)
    best: dict[str, float] = defaultdict(lambda: float("inf"))
    for _ in range(repeat):
        t0 = time.perf_counter()
        for recs in parts.values():
            shard = factory.engine("sensor")
            decoder = factory.decoders[recs[0].topic]
            for lo in range(0, len(recs), chunk):
                apply(recs[lo:lo + chunk], decoder, shard)
        best["step"] = min(best["step"], time.perf_counter() - t0)
        # decoding alone, per poll as the step does (a whole poll at once when it is plain)
        decoder = factory.decoders[records[0].topic]
        polls = [recs[lo:lo + chunk] for recs in parts.values()
                 for lo in range(0, len(recs), chunk)]
        t0 = time.perf_counter()
        decoded = [decoder.decode_many(poll) for poll in polls]
        best["decode"] = min(best["decode"], time.perf_counter() - t0)
        # the records alone: one engine pass, then the encoder on its outputs
        shard = factory.engine("sensor")
        engine = shard.engine  # type: ignore[attr-defined]
        calls = [(evs, engine.process(evs), kept) for evs, kept, _ in decoded]
        encoder = PredictionEncoder("sensor")
        t0 = time.perf_counter()
        for evs, out, kept in calls:
            encoder.encode(evs, out, engine.target_names, kept)
        best["records"] = min(best["records"], time.perf_counter() - t0)
    del decoded, calls
    return {k: 1e6 * v / n for k, v in best.items()}


# ---------------------------------------------------------------------------- processes
def cpu_tree(pid: int | None) -> dict[str, float]:
    """CPU seconds (user + system) so far of a process: its main thread, and its other
    threads plus its child processes (``--workers``)."""
    out = {"main": 0.0, "other": 0.0}
    if pid is None:
        return out
    tick = os.sysconf("SC_CLK_TCK")
    todo = [(pid, True)]
    while todo:
        p, root = todo.pop()
        try:
            tasks = list(Path(f"/proc/{p}/task").iterdir())
        except OSError:
            continue
        for task in tasks:
            try:
                stat = (task / "stat").read_text()
                todo += [(int(c), False) for c in (task / "children").read_text().split()]
            except OSError:
                continue
            fields = stat[stat.rfind(")") + 2:].split()
            seconds = (int(fields[11]) + int(fields[12])) / tick
            out["main" if root and task.name == str(p) else "other"] += seconds
    return out


def broker_pid() -> int | None:
    """Pid of the embedded broker (our child running the Tansu binary)."""
    for task in Path("/proc/self/task").iterdir():
        for pid in (task / "children").read_text().split():
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if b"--listener-url" in cmd:
                return int(pid)
    return None


@dataclass(frozen=True)
class Variant:
    """One thing measured: the relay, or ``streamseq run`` with ``flags``."""

    key: str
    name: str
    flags: tuple[str, ...] = ()
    relay: bool = False

    @property
    def label(self) -> str:
        what = "bare kafka-python relay" if self.relay else (
            f"service, `{' '.join(self.flags)}`" if self.flags else "service, defaults")
        return f"({self.key}) {what}"


RELAY = Variant("a", "relay", relay=True)
NO_LEARN = Variant("b", "no-learn", ("--no-learn",))
DEFAULTS = Variant("c", "defaults")
WORKERS = Variant("d", "workers-2", ("--workers", "2"))


def has_workers_flag() -> bool:
    """Whether ``streamseq run`` has ``--workers`` (point 4 of issue 12, another branch)."""
    out = subprocess.run([sys.executable, "-m", "streamseq", "run", "--help"],
                         capture_output=True, text=True, cwd=ROOT)
    return "--workers" in out.stdout


class Runner:
    """The relay or the service as a child process, on the shared input topic with its own
    group and output topic."""

    def __init__(self, variant: Variant, broker: Any, topics: ServiceTopics, tag: str,
                 workdir: Path, hidden: int, wrapper: Sequence[str] = ()) -> None:
        self.variant = variant
        self.output = f"{topics.prediction}-{tag}"
        broker.create_topics({self.output: topics.partitions})
        group = f"bench-{tag}"
        log = self.log = workdir / f"{tag}.log"
        self.svc: ServiceProcess | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        if variant.relay:
            self.status = workdir / f"{tag}.count"
            cmd = [*wrapper, sys.executable, "-m", "bench.relay", "--bootstrap",
                   broker.bootstrap, "--input", topics.sensor, "--output", self.output,
                   "--group", group, "--status", str(self.status),
                   "--fetch-max-wait-ms", str(_SC.fetch_max_wait_ms),
                   "--max-poll-records", str(_SC.max_poll_records),
                   "--poll-timeout-ms", str(_SC.poll_timeout_ms),
                   "--linger-ms", str(_SC.producer_linger_ms),
                   "--batch-bytes", str(_SC.producer_batch_bytes)]
            with open(log, "ab") as out:
                self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                             cwd=ROOT, start_new_session=True)
        else:
            own = ServiceTopics(topics.sensor, self.output, topics.dead_letter,
                                topics.partitions)
            args = service_args(broker.bootstrap, own, group, workdir / f"ckpt-{tag}",
                                checkpoint_every_events=_SC.checkpoint_every_events,
                                checkpoint_every_seconds=_SC.checkpoint_every_seconds,
                                hidden=hidden, extra=variant.flags)
            self.svc = ServiceProcess(args, log, log_level="WARNING", wrapper=wrapper).start()

    def count(self) -> int:
        """Records written so far (the service's counter, the relay's status file)."""
        if self.svc is not None:
            return int(self.svc.metric("streamseq_predictions_published_total"))
        return int(self._status()[0])

    def gc_seconds(self) -> float:
        """Seconds the process has spent in Python's cyclic garbage collector so far."""
        if self.svc is not None:
            return self.svc.metric("streamseq_gc_seconds_total")
        return self._status()[1]

    def _status(self) -> tuple[float, float]:
        try:
            count, gc_s = self.status.read_text().split()
            return float(count), float(gc_s)
        except (OSError, ValueError):
            return 0.0, 0.0

    @property
    def poll_interval(self) -> float:
        """Seconds between progress checks: a service's counter is read from ``/metrics``,
        and a scrape costs it ~25 ms of CPU (a Prometheus server scrapes every 15 s)."""
        return 1.0 if self.svc is not None else 0.25

    @property
    def pid(self) -> int | None:
        if self.svc is not None:
            return self.svc.service_pid
        assert self.proc is not None
        if self.proc.args[0] == sys.executable:
            return self.proc.pid
        kids = (Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text()
                .split())  # under a wrapper (py-spy)
        return int(kids[0]) if kids else None

    def alive(self) -> bool:
        """True while the process runs (raises with its log's tail once it has exited)."""
        running = self.svc.running if self.svc is not None else (
            self.proc is not None and self.proc.poll() is None)
        if not running:
            raise RuntimeError(f"{self.variant.name} exited: {self.log.read_text()[-2000:]}")
        return True

    def stop(self) -> None:
        if self.svc is not None:
            self.svc.terminate()
        elif self.proc is not None and self.proc.poll() is None:
            import signal

            pid = self.pid
            os.kill(pid if pid is not None else self.proc.pid, signal.SIGTERM)
            self.proc.wait(60)

    def kill(self) -> None:
        if self.svc is not None:
            self.svc.kill()
        elif self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)


@dataclass
class Drain:
    """One drain of the filled input topic."""

    rate: float
    wall_s: float
    cpu: dict[str, float]
    gc_s: float = 0.0  # seconds in the garbage collector, first to last output
    events: int = 1  # records written while the CPU was measured


@dataclass
class Throughput:
    variant: Variant
    runs: list[Drain] = field(default_factory=list)
    note: str = ""

    @property
    def best(self) -> Drain | None:
        return max(self.runs, key=lambda d: d.rate) if self.runs else None

    @property
    def rate(self) -> float:
        return self.best.rate if self.best else 0.0


def drain(runner: Runner, n: int, bootstrap: str, timeout: float = 1800) -> Drain:
    """Wait until ``runner`` has written ``n`` output records; throughput from their
    timestamps, CPU of the process (and the broker) from its first output to its last."""
    wait_until(lambda: runner.alive() and runner.count() > 0, 180,
               f"first output of {runner.variant.name}", interval=0.1)
    t0 = time.monotonic()
    cpu0, b0, gc0 = cpu_tree(runner.pid), cpu_tree(broker_pid()), runner.gc_seconds()
    done0 = runner.count()
    wait_until(lambda: runner.alive() and runner.count() >= n, timeout,
               f"{n} outputs of {runner.variant.name}", interval=runner.poll_interval)
    cpu1, b1, gc1 = cpu_tree(runner.pid), cpu_tree(broker_pid()), runner.gc_seconds()
    wall = time.monotonic() - t0
    with TopicReader(bootstrap, runner.output) as reader:
        reader.read_until(lambda recs: len(recs) >= n, 300, f"{n} outputs")
        stamps = [r.timestamp for r in reader.records]
    span = (max(stamps) - min(stamps)) / 1000.0
    cpu = {"main": cpu1["main"] - cpu0["main"], "other": cpu1["other"] - cpu0["other"],
           "broker": sum(b1.values()) - sum(b0.values())}
    return Drain(len(stamps) / span if span else 0.0, wall, cpu, gc1 - gc0,
                 max(1, n - done0))


# ---------------------------------------------------------------------------- latency
class PacedProducer(threading.Thread):
    """Produces ``messages`` at ``rate`` per second (linger 2 ms) and keeps each record's
    (partition, offset) -> timestamp and value -> timestamp."""

    def __init__(self, bootstrap: str, topic: str, messages: Sequence[Message],
                 rate: float) -> None:
        super().__init__(name="bench-paced-producer", daemon=True)
        self.args = (bootstrap, topic, messages, rate)
        self.by_offset: dict[tuple[int, int], int] = {}
        self.by_value: dict[bytes, int] = {}
        self.seconds = 0.0

    def run(self) -> None:
        from kafka import KafkaProducer

        bootstrap, topic, messages, rate = self.args
        producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=2,
                                 client_id="bench-paced")
        sent = []
        t0 = time.monotonic()
        for i, (key, payload, _ts) in enumerate(messages):
            ahead = t0 + i / rate - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
            sent.append((payload, producer.send(topic, value=payload, key=key.encode())))
        producer.flush(60)
        self.seconds = time.monotonic() - t0
        producer.close(10)
        for payload, fut in sent:
            md = fut.get(0)
            self.by_offset[(md.partition, md.offset)] = md.timestamp
            self.by_value[payload] = md.timestamp


class ArrivalReader(threading.Thread):
    """Reads an output topic from its end and notes when each record arrived (epoch ms),
    with ``fetch_max_wait_ms=5`` (on Tansu a fetch waits about that long)."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        super().__init__(name="bench-arrivals", daemon=True)
        from kafka import KafkaConsumer, TopicPartition

        self.consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None,
                                      enable_auto_commit=False, fetch_max_wait_ms=5,
                                      client_id="bench-arrivals")
        parts = wait_until(lambda: self.consumer.partitions_for_topic(topic), 30, "metadata")
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        self.consumer.assign(tps)
        self.consumer.seek_to_end(*tps)
        for tp in tps:
            self.consumer.position(tp)
        self.records: list[tuple[bytes, int, float]] = []  # value, timestamp, arrival
        self.stop = threading.Event()

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                for recs in self.consumer.poll(timeout_ms=100).values():
                    now = time.time() * 1000.0
                    self.records.extend((r.value, r.timestamp, now) for r in recs)
        finally:
            self.consumer.close()


def histogram(svc: ServiceProcess | None, name: str) -> dict[float, float]:
    """Cumulative bucket counts ``le -> count`` of a histogram (all label sets summed)."""
    out: dict[float, float] = defaultdict(float)
    if svc is None:
        return out
    for n, labels, v in svc.samples():
        if n == name + "_bucket":
            out[float(labels["le"])] += v
    return dict(sorted(out.items()))


def histogram_quantile(q: float, before: dict[float, float], after: dict[float, float]
                       ) -> float:
    """Prometheus-style quantile of the increase between two bucket snapshots."""
    les = sorted(after)
    if not les:
        return float("nan")
    counts = [after[le] - before.get(le, 0.0) for le in les]
    total = counts[-1]
    if total <= 0:
        return float("nan")
    rank = q * total
    prev_le, prev_c = 0.0, 0.0
    for le, c in zip(les, counts, strict=True):
        if c >= rank:
            if le == float("inf"):
                return prev_le
            return prev_le + (le - prev_le) * (rank - prev_c) / max(c - prev_c, 1e-12)
        prev_le, prev_c = le, c
    return les[-2]


@contextlib.contextmanager
def collector_paused() -> Any:
    """No cyclic garbage collection in this process meanwhile (collected once before).

    The bench imports torch (through the test harness), so a full collection here walks
    ~200,000 objects: measured 0.17-0.26 s, twice per 15 s phase. Its producer thread
    stamps a record when it is handed over and then stood still with it, which added
    those pauses to the latency of every runner (2026-12-02, bench/e2e_notes.md).
    """
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def latency_run(variant: Variant, broker: Any, a: argparse.Namespace,
                bulk: Sequence[Message], live: Sequence[Message], rate: float, tag: str,
                workdir: Path) -> dict[str, Any]:
    """One latency phase of one runner at one offered rate, on an input topic of its own.

    The topic is filled with ``bulk`` (the drains' events), the runner catches up, then
    :func:`latency_phase` offers ``live`` at ``rate``. Every phase gets a fresh topic because
    on Tansu a fetch costs more the more batches the topic holds and a paced phase writes
    thousands of small ones: a runner measured on a topic after another runner's phases, or
    a rate measured after another rate's phase, met a slower broker (bench/e2e_notes.md,
    2026-12-02 15:40 and 16:40)."""
    own = ServiceTopics.create(broker, tag, partitions=a.partitions)
    produce(broker.bootstrap, own.sensor, bulk)
    runner = Runner(variant, broker, own, tag, workdir, a.hidden)
    try:
        wait_until(lambda: runner.count() >= len(bulk), 600, f"{variant.name} caught up",
                   interval=0.2)
        lat = latency_phase(runner, broker.bootstrap, own.sensor, live, rate)
    except BaseException:
        runner.kill()
        raise
    runner.stop()
    print(f"latency: {json.dumps(lat)}", flush=True)
    return lat


def latency_phase(runner: Runner, bootstrap: str, topic: str, messages: Sequence[Message],
                  rate: float) -> dict[str, Any]:
    """Offer ``messages`` at ``rate`` to a caught-up runner; match each output to its
    input: hand-off latency (output record timestamp - input record timestamp) and arrival
    latency (seen by a consumer of the output topic - input record timestamp), ms."""
    svc = runner.svc
    batch0 = histogram(svc, "streamseq_batch_processing_seconds")
    hist0 = histogram(svc, "streamseq_event_to_prediction_seconds")
    cpu0 = cpu_tree(runner.pid)
    arrivals = ArrivalReader(bootstrap, runner.output)
    feeder = PacedProducer(bootstrap, topic, messages, rate)

    def arrived() -> bool:  # the reader may start a batch early (Tansu's end offsets lag)
        return sum(stamp >= start_ms for _, stamp, _ in arrivals.records) >= len(messages)

    with collector_paused():
        arrivals.start()
        t0 = time.monotonic()
        start_ms = int(time.time() * 1000) - 1  # record timestamps are whole ms
        feeder.start()
        feeder.join()
        try:
            wait_until(arrived, 300, f"{len(messages)} outputs at {rate:.0f}/s")
        finally:
            arrivals.stop.set()
            arrivals.join(10)
    elapsed = time.monotonic() - t0
    cpu1 = cpu_tree(runner.pid)
    batch1 = histogram(svc, "streamseq_batch_processing_seconds")
    hist1 = histogram(svc, "streamseq_event_to_prediction_seconds")
    handoff, arrival = [], []
    for value, stamp, seen in arrivals.records:
        if runner.variant.relay:
            sent = feeder.by_value.get(value)
        else:
            src = json.loads(value)["source"]
            sent = feeder.by_offset.get((src["partition"], src["offset"]))
        if sent is not None:
            handoff.append(stamp - sent)
            arrival.append(seen - sent)
    assert len(handoff) == len(messages), (len(handoff), len(messages))
    handoff.sort()
    arrival.sort()
    batches = batch1.get(float("inf"), 0.0) - batch0.get(float("inf"), 0.0)
    return {"variant": runner.variant.name, "offered": rate,
            "achieved": len(messages) / feeder.seconds, "n": len(handoff),
            **{f"handoff_p{q}": pct(handoff, q / 100) for q in (50, 90, 99)},
            "handoff_max": handoff[-1], "handoff_mean": statistics.fmean(handoff),
            **{f"arrival_p{q}": pct(arrival, q / 100) for q in (50, 90, 99)},
            "arrival_max": arrival[-1],
            "main_busy": (cpu1["main"] - cpu0["main"]) / elapsed,
            "batches": batches,
            "batch_p50_ms": 1000 * histogram_quantile(0.5, batch0, batch1),
            "batch_p99_ms": 1000 * histogram_quantile(0.99, batch0, batch1),
            "hist_p50_ms": 1000 * histogram_quantile(0.5, hist0, hist1),
            "hist_p99_ms": 1000 * histogram_quantile(0.99, hist0, hist1)}


def transport_latency(broker: Any, messages: Sequence[Message], rate: float,
                      fetch_max_wait_ms: int) -> dict[str, float]:
    """Kafka alone: a bare consumer (manual assignment) receiving ``messages`` produced at
    ``rate``; receive time - record timestamp, in ms."""
    from kafka import KafkaConsumer, TopicPartition

    topic = f"transport-{uuid.uuid4().hex[:8]}"
    broker.create_topics({topic: 2})
    consumer = KafkaConsumer(bootstrap_servers=broker.bootstrap, group_id=None,
                             enable_auto_commit=False, fetch_max_wait_ms=fetch_max_wait_ms)
    tps = [TopicPartition(topic, 0), TopicPartition(topic, 1)]
    consumer.assign(tps)
    consumer.seek_to_beginning(*tps)
    consumer.poll(timeout_ms=200)
    feeder = PacedProducer(broker.bootstrap, topic, messages, rate)
    lat: list[float] = []
    deadline = time.monotonic() + len(messages) / rate + 30
    with collector_paused():
        feeder.start()
        try:
            while len(lat) < len(messages) and time.monotonic() < deadline:
                for recs in consumer.poll(timeout_ms=200).values():
                    now = time.time() * 1000
                    lat.extend(now - r.timestamp for r in recs)
        finally:
            feeder.join(60)
            consumer.close()
    lat.sort()
    return {"fetch_max_wait_ms": fetch_max_wait_ms, "n": len(lat), "p50_ms": pct(lat, 0.5),
            "p99_ms": pct(lat, 0.99)}


# ---------------------------------------------------------------------------- profile
PARTS = (  # (label, substrings of a frame "function (file:line)"), matched leaf first
    ("start-up (imports, numba compilation, the heap's freeze), excluded", (
        "importlib", "numba/core", "service/memory")),
    ("kafka consumer: poll, fetch, records", ("kafka/consumer",)),
    ("kafka producer: send, batches", ("kafka/producer", "service/clients")),
    ("kafka record batches (build, parse, CRC)", ("kafka/record",)),
    ("kafka network and protocol (IO threads)", ("kafka/net", "kafka/client", "kafka/conn",
                                                 "kafka/protocol", "kafka/coordinator",
                                                 "kafka/cluster", "kafka/future",
                                                 "kafka/metrics", "kafka/util",
                                                 "selectors.py")),
    ("decode input JSON", ("events/decode", "events/schema", "events/time")),
    ("learning (TBPTT windows, backward, optimizer)", ("streamseq/learner",)),
    ("engine: order, features, forward, experts, scoring", (
        "streamseq/engine", "streamseq/models", "streamseq/features", "streamseq/forecast",
        "streamseq/evaluation", "streamseq/state/hidden", "streamseq/shards")),
    ("prediction records (JSON)", ("streamseq/predictions",)),
    ("pipeline step (apply)", ("streamseq/pipeline",)),
    ("metrics (reporting, Prometheus, HTTP)", ("prometheus_client", "service/reporting",
                                               "streamseq/metrics", "service/http")),
    ("checkpoint", ("state/checkpoint", "service/checkpoints", "service/shards")),
    ("service loop (the relay: its loop)", ("service/app", "service/rebalance",
                                            "service/monitor", "service/health",
                                            "bench/relay")),
)
EXCLUDED = PARTS[0][0]
OTHER = "other (interpreter, libraries called from no part above)"
WAITS = ("select (selectors.py", "Condition.wait", "Event.wait", "sleep", "_wait_for_tstate",
         "poll (selectors.py", "epoll",
         "_worker (concurrent/futures/thread.py")  # an idle pool thread in queue.get()


def pyspy_binary() -> str | None:
    import shutil

    found = shutil.which("py-spy")
    beside = Path(sys.executable).with_name("py-spy")
    return found or (str(beside) if beside.exists() else None)


def classify(frames: Sequence[str]) -> str:
    """The part a stack sample belongs to: the first frame from the leaf up that names one
    (library frames such as numpy, torch or json count for the part that called them; so
    does Python's garbage collector, invisible to py-spy: it counts for the allocation that
    set it off)."""
    if any(x in f for f in frames for x in PARTS[0][1]):
        return EXCLUDED
    for frame in reversed(frames):
        for label, needles in PARTS[1:]:
            if any(x in frame for x in needles):
                return label
    return OTHER


@dataclass
class Profile:
    """py-spy samples of one drain: CPU by part and by thread, the hottest functions."""

    rate_hz: int
    events: int
    parts: dict[str, float]
    threads: dict[str, float]
    hot: list[tuple[str, float]]

    @property
    def working(self) -> float:
        return sum(self.parts.values())

    def us_per_event(self, samples: float) -> float:
        return 1e6 * samples / self.rate_hz / self.events


def pyspy_profile(path: Path, rate_hz: int, events: int, top: int = 15) -> Profile:
    """Samples of working threads by part, from py-spy's raw (collapsed stack,
    ``--threads``) output; samples that sit in ``select()``/``poll()`` or a condition
    wait, or show no Python frame, are left out (py-spy's idle detection misses them)."""
    parts: dict[str, float] = defaultdict(float)
    leaves: dict[str, float] = defaultdict(float)
    threads: dict[str, float] = defaultdict(float)
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = float(count)
        thread, *frames = stack.split(";")
        if not frames or any(w in frames[-1] for w in WAITS):
            continue
        label = classify(frames)
        if label == EXCLUDED:
            continue
        parts[label] += n
        name = thread.split(":", 1)[-1].strip() or "MainThread"
        threads[name.split(" (")[0].strip("\" ")] += n
        leaf = frames[-1].replace(str(ROOT) + "/", "").replace(sys.prefix + "/", "")
        leaves[leaf] += n
    hot = sorted(leaves.items(), key=lambda kv: -kv[1])[:top]
    return Profile(rate_hz, events, dict(parts), dict(threads), hot)


def profile_drain(variant: Variant, broker: Any, topics: ServiceTopics, unique: str,
                  n: int, workdir: Path, hidden: int) -> Profile | None:
    """One more drain of ``variant`` under py-spy (all threads); ``None`` without py-spy."""
    spy = pyspy_binary()
    if spy is None:
        return None
    rate_hz = 200
    out = workdir / f"profile-{variant.name}.pyspy.txt"
    wrapper = [spy, "record", "--threads", "-r", str(rate_hz), "-f", "raw", "-o", str(out),
               "--"]
    runner = Runner(variant, broker, topics, f"profile-{variant.name}-{unique}", workdir,
                    hidden, wrapper=wrapper)
    try:
        drain(runner, n, broker.bootstrap)
    finally:
        runner.stop()
    wait_until(lambda: out.exists(), 60, f"py-spy output {out.name}")
    return pyspy_profile(out, rate_hz, n)


# ---------------------------------------------------------------------------- report
TARGETS = {"b": 0.70, "c": 0.50}  # share of the relay's throughput (issue 12, point 6)
LATENCY_TARGET_MS = {1000.0: 50.0, 5000.0: 100.0}  # p99 with defaults at these rates


def mark(ok: bool) -> str:
    return "met" if ok else "**not met**"


def write_report(path: Path, ctx: dict[str, Any]) -> str:
    m = ctx["machine"]
    tp: list[Throughput] = ctx["throughput"]
    relay = next(t for t in tp if t.variant.relay)
    lines = [
        "# End-to-end benchmark: the Kafka service against a bare relay",
        "",
        f"Command: `{ctx['command']}`  ",
        f"Date: {ctx['date']}  ",
        f"Machine: {m['cpu']}, {m['cores']} cores shared with other work (load average "
        f"{ctx['load_start']} at start, {ctx['load_end']} at the end); Python {m['python']}, "
        f"torch {m['torch']} (1 thread), kafka-python {m['kafka-python']}; broker: the "
        "embedded Tansu on loopback, on the same cores.  ",
        f"Workload: {ctx['events']:,} sensor events of {ctx['keys']:,} keys (1 value each), "
        f"{ctx['partitions']} partitions, one process; GRU hidden {ctx['hidden']}; service "
        f"defaults otherwise (k1 {_LC.k1}, k2 {_LC.k2}, an optimizer step per "
        f"{_LC.batch_windows} due windows; checkpoints every "
        f"{_SC.checkpoint_every_events:,} events or {_SC.checkpoint_every_seconds:.0f} s; "
        f"fetch_max_wait_ms {_SC.fetch_max_wait_ms}, max_poll_records {_SC.max_poll_records}, "
        f"producer linger {_SC.producer_linger_ms} ms, batches of "
        f"{_SC.producer_batch_bytes // 1024} KiB, compression {_SC.producer_compression}).",
        "",
        "## Throughput, against the relay",
        "",
        "Each drains the filled input topic into its own output topic. Throughput = output "
        "records / (last - first output record timestamp); best of "
        f"{ctx['repeat']} (all runs in brackets). CPU in % of one core between the first and "
        "the last output record (the machine has "
        f"{m['cores']}); the garbage collector's share is wall time in Python's cyclic "
        "collector (`streamseq_gc_seconds_total`, the relay's own hook), in whichever "
        "thread it ran.",
        "",
        "| | events/s | of (a) | target | main thread | other threads, children | of which "
        "garbage collector | broker |",
        "|---|---:|---:|---|---:|---:|---:|---:|",
    ]
    for t in tp:
        b = t.best
        if b is None:
            lines.append(f"| {t.variant.label} | not measured: {t.note} | | | | | | |")
            continue
        share = t.rate / relay.rate if relay.rate else 0.0
        target = TARGETS.get(t.variant.key)
        goal = f"≥ {100 * target:.0f}%: {mark(share >= target)}" if target else ""
        runs = ", ".join(f"{d.rate:,.0f}" for d in t.runs)
        gc_share = ("" if t.variant == WORKERS  # the workers' collectors are not exported
                    else f"{100 * b.gc_s / b.wall_s:.0f}%")
        lines.append(
            f"| {t.variant.label} | {t.rate:,.0f} ({runs}) | {100 * share:.0f}% | {goal} | "
            f"{100 * b.cpu['main'] / b.wall_s:.0f}% | {100 * b.cpu['other'] / b.wall_s:.0f}% "
            f"| {gc_share} | {100 * b.cpu['broker'] / b.wall_s:.0f}% |")
    ip, s, n = ctx["in_process"], ctx["stages"], ctx["events"]
    lines += [
        "",
        "The same events without Kafka (µs per event, in process, polls of "
        f"{_SC.max_poll_records:,} per partition, best of {ctx['repeat']}):",
        "",
        "| work | µs/event |",
        "|---|---:|",
        f"| pipeline step, `--no-learn` (decode, engine, records) | {ip['no-learn']['step']:.1f} |",
        f"| pipeline step, defaults (decode, engine with learning, records) | "
        f"{ip['defaults']['step']:.1f} |",
        f"| of which decoding the input JSON | {ip['defaults']['decode']:.1f} |",
        f"| of which building the prediction records | {ip['defaults']['records']:.1f} |",
        f"| kafka-python producer alone (filling the input topic, linger 20 ms) | "
        f"{1e6 * s['produce'] / n:.1f} |",
        f"| kafka-python consumer alone (reading it back) | {1e6 * s['consume'] / n:.1f} |",
        "",
        "## Event-to-prediction latency at fixed offered rates",
        "",
        "Each phase (a runner at a rate) ran on a fresh input topic filled with the "
        "drains' events (on the embedded broker a fetch costs more the more batches a topic "
        "holds, and a paced phase writes thousands of small ones: see the notes at the "
        "end); the runner caught up first, then was offered the rate for "
        f"{ctx['seconds']:.0f} s (the bench's producer, linger 2 ms). Hand-off = output "
        "record timestamp (set when the relay or the service hands the record to its "
        "producer) - input record timestamp (set when the bench hands the event to its "
        "producer): broker, fetch, poll, decode, engine, records. Arrival = when a consumer "
        "of the output topic (`fetch_max_wait_ms=5`) received the record - the same: adds "
        "the producer's linger, the broker and that consumer's own fetch (~half of 5 ms on "
        "Tansu). ms.",
        "",
        "| offered | runner | hand-off p50 / p90 / p99 / max | arrival p50 / p99 | "
        "target (p99) | service histogram p50 / p99 | polled batches: n, p50 / p99 ms | "
        "main thread busy |",
        "|---:|---|---:|---:|---|---:|---:|---:|",
    ]
    for lat in ctx["latency"]:
        svc = lat["variant"] != "relay"
        target = LATENCY_TARGET_MS.get(lat["offered"]) if svc else None
        goal = (f"≤ {target:.0f} ms: hand-off {mark(lat['handoff_p99'] <= target)}, arrival "
                f"{mark(lat['arrival_p99'] <= target)}" if target else "")
        hist = (f"{lat['hist_p50_ms']:.0f} / {lat['hist_p99_ms']:.0f}" if svc else "")
        batches = (f"{lat['batches']:,.0f}, {lat['batch_p50_ms']:.1f} / "
                   f"{lat['batch_p99_ms']:.0f}" if svc else "")
        lines.append(
            f"| {lat['offered']:,.0f}/s (achieved {lat['achieved']:,.0f}) | {lat['variant']} | "
            f"{lat['handoff_p50']:.0f} / {lat['handoff_p90']:.0f} / {lat['handoff_p99']:.0f} / "
            f"{lat['handoff_max']:.0f} | {lat['arrival_p50']:.0f} / {lat['arrival_p99']:.0f} | "
            f"{goal} | {hist} | {batches} | {100 * lat['main_busy']:.0f}% |")
    lines.append("")
    for t in ctx.get("transport", []):
        lines.append(
            f"- Kafka alone (a bare kafka-python consumer, `fetch_max_wait_ms="
            f"{t['fetch_max_wait_ms']}`, {t['n']:,} events produced at "
            f"{ctx['rates'][0]:,.0f}/s): p50 {t['p50_ms']:.0f} ms, p99 {t['p99_ms']:.0f} ms.")
    profiles: list[tuple[Variant, Profile]] = ctx.get("profiles", [])
    if profiles:
        labels = [label for label, _ in PARTS[1:]] + [OTHER]
        lines += [
            "",
            "## Where each microsecond per event goes",
            "",
            "One more drain of each under py-spy (200 samples/s, all threads, CPU samples "
            "only; start-up, imports, numba compilation, the heap's freeze and waiting left "
            "out): CPU µs per event by part, over the whole process (its main thread and "
            "Kafka's IO threads), the relay classified like the service. Library frames "
            "(numpy, torch, json) count for the part that called them, and so does Python's "
            "garbage collector (py-spy cannot see it: its time counts for the allocation "
            "that set it off; the throughput table gives its share). py-spy slows the "
            "process down somewhat; the split is what counts.",
            "",
            "| part | " + " | ".join(f"{v.label}" for v, _ in profiles) + " |",
            "|---|" + "---:|" * len(profiles),
        ]
        for label in labels:
            if all(p.parts.get(label, 0.0) / max(p.working, 1) < 0.005 for _, p in profiles):
                continue
            cells = [f"{p.us_per_event(p.parts.get(label, 0.0)):.1f} "
                     f"({100 * p.parts.get(label, 0.0) / p.working:.0f}%)" for _, p in profiles]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        lines.append("| **total** | " + " | ".join(
            f"**{p.us_per_event(p.working):.1f}**" for _, p in profiles) + " |")
        for v, p in profiles:
            threads = ", ".join(f"{k} {100 * x / p.working:.0f}%" for k, x in
                                sorted(p.threads.items(), key=lambda kv: -kv[1])
                                if x / p.working >= 0.01)
            hot = "\n".join(f"{100 * x / p.working:5.1f}%  {k}" for k, x in p.hot)
            lines += ["", f"<details><summary>{v.label}: threads and hottest functions (own "
                      "time)</summary>", "", "```", f"by thread: {threads}", "", hot, "```",
                      "", "</details>"]
    lines += ["", "## Findings", "", *ctx["analysis"], ""]
    if NOTES.exists():
        lines += [NOTES.read_text().rstrip(), ""]
    text = "\n".join(lines)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return text


CPU = ("main", "other", "broker")


def cpu_per_event(d: Drain) -> dict[str, float]:
    """µs of CPU per event of a drain, by where it ran (and the garbage collector's, which
    is inside the others): CPU seconds over the records written while they were measured
    (from the first progress seen to the last)."""
    return {**{k: 1e6 * d.cpu[k] / d.events for k in CPU}, "gc": 1e6 * d.gc_s / d.events}


def analysis(ctx: dict[str, Any]) -> list[str]:
    """Findings computed from the run's numbers."""
    tp = {t.variant.key: t for t in ctx["throughput"]}
    out = []
    if all(k in tp and tp[k].rate for k in "abc"):
        us = {k: 1e6 / t.rate for k, t in tp.items() if t.rate}
        ip = ctx["in_process"]
        out.append(
            f"- **Per event, end to end**: the relay spends {us['a']:.0f} µs (kafka-python in "
            f"and out, the broker, on these shared cores), the service without learning "
            f"{us['b']:.0f} µs and with its defaults {us['c']:.0f} µs. The service's own work "
            f"measured without Kafka is {ip['no-learn']['step']:.0f} µs and "
            f"{ip['defaults']['step']:.0f} µs: {us['b'] - us['a']:.0f} and "
            f"{us['c'] - us['a']:.0f} µs more than the relay end to end.")
    cpu = {k: cpu_per_event(t.best) for k, t in tp.items() if t.best and k in "abc"}
    if "a" in cpu and len(cpu) > 1:
        cells = "; ".join(
            f"{tp[k].variant.label}: main thread {c['main']:.1f}, other threads "
            f"{c['other']:.1f}, broker {c['broker']:.1f}, in the garbage collector "
            f"{c['gc']:.1f}" for k, c in sorted(cpu.items()))
        out.append(f"- **CPU per event of the best drains** (CPU seconds / records written "
                   f"meanwhile, µs): {cells}.")
        for k in sorted(cpu.keys() - {"a"}):
            c, r = cpu[k], cpu["a"]
            total, relay_total = sum(c[x] for x in CPU), sum(r[x] for x in CPU)
            target = TARGETS.get(k)
            text = (f"- {tp[k].variant.label} costs {total:.0f} µs of CPU per event against "
                    f"the relay's {relay_total:.0f} ({relay_total / total:.0%}), of which its "
                    f"main thread {c['main'] - r['main']:+.1f} µs (the pipeline step in "
                    f"process: {ctx['in_process']['no-learn' if k == 'b' else 'defaults']['step']:.1f})"
                    f"; its main thread alone allows {1e6 / c['main']:,.0f} events/s.")
            best, relay_best = tp[k].best, tp["a"].best
            assert best is not None and relay_best is not None
            busy, relay_busy = (d.cpu["main"] / d.wall_s for d in (best, relay_best))
            text += (f" Its throughput is {tp[k].rate / tp['a'].rate:.0%} of the relay's while "
                     f"the relay's CPU per event is {relay_total / total:.0%} of its own: its main "
                     f"thread worked {busy:.0%} of the drain (the relay's {relay_busy:.0%}) and "
                     "waited the rest (for a core, the GIL or a fetch: not told apart here).")
            if target:
                text += (f" For {target:.0%} of the relay's throughput it may cost at most "
                         f"{relay_total / target:.0f} µs per event when throughput follows CPU "
                         "per event (saturated cores), and its main thread must allow "
                         f"{target * tp['a'].rate:,.0f} events/s when that thread is the limit.")
            out.append(text)
    profiles = dict((v.key, p) for v, p in ctx.get("profiles", []))
    relay = profiles.get("a")
    for key, p in sorted(profiles.items()):
        kafka = sum(x for label, x in p.parts.items() if label.startswith("kafka"))
        own = {label: x for label, x in p.parts.items() if not label.startswith("kafka")}
        top = sorted(own.items(), key=lambda kv: -kv[1])[:5]
        parts = ", ".join(f"{label} {p.us_per_event(x):.1f}" for label, x in top)
        text = (f"- **{tp[key].variant.label}** under py-spy: "
                f"{p.us_per_event(p.working):.0f} µs of CPU per event, of which kafka-python "
                f"{p.us_per_event(kafka):.0f} µs and the rest "
                f"{p.us_per_event(p.working - kafka):.0f} µs: {parts} µs.")
        if relay is not None and p is not relay:
            more = sorted(((label, p.us_per_event(p.parts.get(label, 0.0))
                            - relay.us_per_event(relay.parts.get(label, 0.0)))
                           for label in set(p.parts) | set(relay.parts)
                           if label.startswith("kafka")),
                          key=lambda kv: -kv[1])
            text += (" Against the relay's kafka-python parts: " + ", ".join(f"{label} {d:+.1f}" for label, d in more)
                     + " µs per event.")
        out.append(text)
    for lat in ctx["latency"]:
        if lat["variant"] == "relay":
            continue
        floor = next((x for x in ctx["latency"] if x["variant"] == "relay"
                      and x["offered"] == lat["offered"]), None)
        text = (f"- At {lat['offered']:,.0f} events/s the service hands a prediction to its "
                f"producer p50 {lat['handoff_p50']:.0f} ms, p99 {lat['handoff_p99']:.0f} ms "
                "after the event was produced")
        if floor:
            text += (f" (the relay: p50 {floor['handoff_p50']:.0f}, p99 "
                     f"{floor['handoff_p99']:.0f} ms)")
        text += (f"; a polled batch took p50 {lat['batch_p50_ms']:.1f} ms, p99 "
                 f"{lat['batch_p99_ms']:.0f} ms to process, and the main thread was busy "
                 f"{100 * lat['main_busy']:.0f}% of the time.")
        out.append(text)
    return out


# ---------------------------------------------------------------------------- main
def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.e2e", description=__doc__.split("\n")[0])
    p.add_argument("--events", type=int, default=60_000)
    p.add_argument("--keys", type=int, default=200)
    p.add_argument("--partitions", type=int, default=2)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--rates", default="1000,5000", help="offered rates of the latency "
                   "phases (events/s, comma-separated)")
    p.add_argument("--seconds", type=float, default=15.0, help="length of each latency phase")
    p.add_argument("--variants", default="a,b,c,d", help="which of (a) relay, (b) no-learn, "
                   "(c) defaults, (d) --workers 2 to run")
    p.add_argument("--profile", action="store_true", help="profile (a), (b) and (c) with "
                   "py-spy in a further drain each")
    p.add_argument("--repeat", type=int, default=2, help="best of this many drains and "
                   "in-process measurements (the machine is shared)")
    p.add_argument("--report", type=Path, default=REPORT)
    p.add_argument("--workdir", type=Path, help="keep logs, checkpoints and profiles here")
    a = p.parse_args(argv)
    if a.profile and pyspy_binary() is None:
        p.error("--profile needs py-spy on PATH or beside this Python (pip install py-spy)")
    sys.setswitchinterval(0.0005)  # this process's threads time events: hand off often

    from streamseq.broker import EmbeddedBroker

    rates = [float(x) for x in a.rates.split(",") if x]
    chosen = set(a.variants.split(","))
    variants = [v for v in (RELAY, NO_LEARN, DEFAULTS, WORKERS) if v.key in chosen | {"a"}]
    workdir = a.workdir or Path(tempfile.mkdtemp(prefix="streamseq-e2e-"))
    workdir.mkdir(parents=True, exist_ok=True)
    unique = uuid.uuid4().hex[:8]
    ctx: dict[str, Any] = {
        "command": "python -m bench.e2e " + " ".join(argv if argv is not None else sys.argv[1:]),
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(), "load_start": load(), "events": a.events, "keys": a.keys,
        "partitions": a.partitions, "hidden": a.hidden, "repeat": a.repeat,
        "seconds": a.seconds, "rates": rates, "latency": [], "transport": []}
    print(f"workdir {workdir}", flush=True)
    n_live = [int(r * a.seconds) for r in rates]
    latency_variants = [v for v in (RELAY, DEFAULTS) if v in variants]
    messages = sensor_stream(a.events + len(latency_variants) * sum(n_live), n_keys=a.keys,
                             seed=11)
    bulk = messages[:a.events]
    lives: dict[str, list[list[Message]]] = {}  # fresh events for each phase
    at = a.events
    for v in latency_variants:
        for k in n_live:
            lives.setdefault(v.key, []).append(messages[at:at + k])
            at += k
    with EmbeddedBroker(log_path=workdir / "broker.log") as broker:
        topics = ServiceTopics.create(broker, unique, partitions=a.partitions)
        stages: dict[str, float] = {}
        stages["produce"] = produce_timed(broker.bootstrap, topics.sensor, bulk)
        records, stages["consume"] = consume_timed(broker.bootstrap, topics.sensor, a.events)
        ctx["stages"] = stages
        print(f"kafka-python: produce {1e6 * stages['produce'] / a.events:.1f} µs/record, "
              f"consume {1e6 * stages['consume'] / a.events:.1f} µs/record", flush=True)
        base = service_args(broker.bootstrap, topics, "x", workdir / "x", hidden=a.hidden)
        in_process(records[:4000], base, _SC.max_poll_records, 1)  # warm-up
        ctx["in_process"] = {
            "no-learn": in_process(records, [*base, "--no-learn"], _SC.max_poll_records,
                                   a.repeat),
            "defaults": in_process(records, base, _SC.max_poll_records, a.repeat)}
        print(f"in process: {json.dumps(ctx['in_process'])}", flush=True)
        del records

        results = [Throughput(v) for v in variants]
        if WORKERS in variants and not has_workers_flag():
            results[variants.index(WORKERS)].note = (
                "`streamseq run` has no `--workers` flag on this branch yet (issue 12, "
                "point 4, is another branch's)")
        for rep in range(a.repeat):
            for t in results:
                if t.note:
                    continue
                tag = f"{t.variant.name}-{rep}-{unique}"
                runner = Runner(t.variant, broker, topics, tag, workdir, a.hidden)
                try:
                    t.runs.append(drain(runner, a.events, broker.bootstrap))
                except BaseException:
                    runner.kill()
                    raise
                runner.stop()
                print(f"{t.variant.label}: {t.runs[-1].rate:,.0f} ev/s "
                      f"(load {load()})", flush=True)
        ctx["throughput"] = results

        for variant in latency_variants:
            for rate, live in zip(rates, lives[variant.key], strict=True):
                ctx["latency"].append(latency_run(variant, broker, a, bulk, live, rate,
                                                  f"latency-{variant.name}-{rate:.0f}-{unique}",
                                                  workdir))
        probe = bulk[:int(5 * rates[0])]  # its own topic
        ctx["transport"] = [transport_latency(broker, probe, rates[0], wait)
                            for wait in sorted({_SC.fetch_max_wait_ms, 500})]
        print(f"transport: {json.dumps(ctx['transport'])}", flush=True)

        ctx["profiles"] = []
        if a.profile:
            for variant in (RELAY, NO_LEARN, DEFAULTS):  # the shared topic holds the bulk
                prof = profile_drain(variant, broker, topics, unique, a.events, workdir,
                                     a.hidden)
                if prof is not None:
                    ctx["profiles"].append((variant, prof))
    ctx["load_end"] = load()
    ctx["analysis"] = analysis(ctx)
    print(write_report(a.report, ctx))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
