"""End-to-end speed of the Kafka service: produce -> ``streamseq run`` -> prediction topic.

``python -m bench.e2e [--events 60000] [--keys 1000] [--rate 2000] [--profile]
[--report bench/results/e2e.md]``

What it measures, on the local embedded broker (Tansu) and this machine:

1. **Kafka client costs.** The input topic is filled with ``--events`` sensor events of
   ``--keys`` keys (kafka-python producer, keyed by sensor id) and read back once with a bare
   consumer: microseconds per record for each, in this process.
2. **The same events without Kafka.** (a) the engine alone on pre-decoded events, (b) the
   service's per-event work without Kafka (decode, engine, prediction records, JSON
   encoding), both per partition in chunks of ``--max-poll-records`` as the service polls,
   and (c) the file backtest (``read_events`` + ``Backtest``, predictions written as JSON
   lines) over the same events in a JSONL file.
3. **End-to-end throughput.** ``streamseq run`` (a subprocess) is started on the filled
   topic, once per variant (the configured model learning online, and ``--no-learn``), and
   drains it; throughput = predictions / (last - first prediction record timestamp), and
   the wall time from the group's assignment to the last prediction.
4. **Latency at a fixed offered rate.** With the learning service caught up, ``--rate``
   events/s are produced for ``--seconds``; each prediction's record timestamp (set when the
   service hands it to its producer) minus its input record's timestamp (set when the bench
   hands it to its producer) gives event-to-prediction latency p50/p90/p99; the service's own
   ``streamseq_event_to_prediction_seconds`` histogram is reported beside it, and so is the
   latency of Kafka alone (a bare consumer, two ``fetch_max_wait_ms`` settings).
5. ``--profile``: one more run of each variant under py-spy (all threads; cProfile of the
   main thread when py-spy is not installed); the share of CPU by part (Kafka consumer,
   producer, network threads, decode, engine, learning ...) goes into the report.
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import os
import platform
import pstats
import statistics
import sys
import tempfile
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
)

REPORT = ROOT / "bench" / "results" / "e2e.md"
_LC = LearnerConfig()  # the service's learner defaults


# ---------------------------------------------------------------------------- machine
def machine() -> dict[str, str]:
    cpu = cpu_model()
    import kafka
    import torch

    return {"cpu": cpu, "cores": str(os.cpu_count()), "python": platform.python_version(),
            "torch": torch.__version__, "kafka-python": kafka.__version__,
            "os": platform.platform()}


def load() -> str:
    try:
        return " ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "?"


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


def service_work(records: Sequence[TopicRecord], args: Sequence[str], chunk: int,
                 engine_only: bool = False) -> float:
    """Seconds for the service's per-event work without Kafka: the pipeline step (decode,
    engine, serialised prediction records), per partition in polls of ``chunk`` records
    (``engine_only``: the engine alone on events decoded beforehand)."""
    import torch

    from streamseq.engine import Engine
    from streamseq.pipeline import apply
    from streamseq.service.shards import ShardFactory

    torch.set_num_threads(1)
    cfg = reference_config(args)
    factory = ShardFactory(cfg)
    parts = by_partition(records)
    if engine_only:
        decoder = factory.decoders[records[0].topic]
        decoded = {p: [decoder.decode(r) for r in recs] for p, recs in parts.items()}
        t0 = time.perf_counter()
        for evs in decoded.values():
            engine = Engine(cfg.engine.replace(kind="sensor"))
            for lo in range(0, len(evs), chunk):
                engine.process(evs[lo:lo + chunk])
        return time.perf_counter() - t0
    t0 = time.perf_counter()
    for recs in parts.values():
        shard = factory.engine("sensor")
        decoder = factory.decoders[recs[0].topic]
        for lo in range(0, len(recs), chunk):
            apply(recs[lo:lo + chunk], decoder, shard)
    return time.perf_counter() - t0


def file_backtest(messages: Sequence[Message], args: Sequence[str], workdir: Path) -> float:
    """Seconds for ``streamseq backtest``'s path over the events in a JSONL file."""
    import torch

    from streamseq.backtest import Backtest
    from streamseq.io.files import FileLayout, read_events

    torch.set_num_threads(1)
    cfg = reference_config(args)
    path = workdir / "events.jsonl"
    with open(path, "wb") as fh:
        for _key, payload, _ts in messages:
            fh.write(payload + b"\n")
    t0 = time.perf_counter()
    with open(workdir / "predictions.jsonl", "w") as out:
        bt = Backtest(cfg.engine.replace(kind="sensor"), predictions_out=out)
        bt.run(read_events([path], FileLayout(kind="sensor")))
    return time.perf_counter() - t0


# ---------------------------------------------------------------------------- the service
@dataclass
class E2E:
    name: str
    flags: list[str]
    events: int = 0
    predictions: int = 0
    span_s: float = 0.0
    wall_s: float = 0.0
    in_process_s: float = 0.0
    cpu: dict[str, float] = field(default_factory=dict)
    runs: list[float] = field(default_factory=list)

    @property
    def in_process_rate(self) -> float:
        return self.events / self.in_process_s if self.in_process_s else 0.0

    @property
    def rate(self) -> float:
        return self.predictions / self.span_s if self.span_s else 0.0


def histogram(svc: ServiceProcess, name: str) -> dict[float, float]:
    """Cumulative bucket counts ``le -> count`` of a histogram (all label sets summed)."""
    out: dict[float, float] = defaultdict(float)
    for n, labels, v in svc.samples():
        if n == name + "_bucket":
            out[float(labels["le"])] += v
    return dict(sorted(out.items()))


def histogram_quantile(q: float, before: dict[float, float], after: dict[float, float]
                       ) -> float:
    """Prometheus-style quantile of the increase between two bucket snapshots."""
    les = sorted(after)
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


def cpu_seconds(pid: int | None) -> dict[str, float]:
    """CPU seconds (user + system) of a process so far: its main thread and the others."""
    out = {"main": 0.0, "other": 0.0}
    if pid is None:
        return out
    tick = os.sysconf("SC_CLK_TCK")
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            stat = (task / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2:].split()
        seconds = (int(fields[11]) + int(fields[12])) / tick
        out["main" if task.name == str(pid) else "other"] += seconds
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


def run_service(name: str, broker: Any, topics: ServiceTopics, unique: str,
                flags: Sequence[str], n: int, workdir: Path, hidden: int,
                python_args: Sequence[str] = (), wrapper: Sequence[str] = (),
                keep: bool = False) -> tuple[E2E, ServiceProcess, TopicReader, list[str]]:
    """Start a service (own group, prediction topic, checkpoint dir) on the filled input
    topic and wait until it has published ``n`` predictions."""
    bootstrap = broker.bootstrap
    prediction = f"{topics.prediction}-{name}"
    broker.create_topics({prediction: topics.partitions})
    own = ServiceTopics(topics.sensor, prediction, topics.dead_letter, topics.partitions)
    args = service_args(bootstrap, own, f"bench-{name}-{unique}", workdir / f"ckpt-{name}",
                        checkpoint_every_events=50_000, checkpoint_every_seconds=30.0,
                        hidden=hidden, extra=flags)
    result = E2E(name, list(flags), events=n)
    svc = ServiceProcess(args, workdir / f"service-{name}.log", log_level="WARNING",
                         python_args=python_args, wrapper=wrapper).start()
    reader = TopicReader(bootstrap, prediction)
    try:
        svc.wait_ready(timeout=120, shards=topics.partitions)
        t0 = time.monotonic()
        cpu0 = cpu_seconds(svc.service_pid), cpu_seconds(broker_pid())
        svc.wait_until(lambda: svc.metric("streamseq_predictions_published_total") >= n,
                       1800, f"{n} predictions")
        cpu1 = cpu_seconds(svc.service_pid), cpu_seconds(broker_pid())
        result.wall_s = time.monotonic() - t0
        result.cpu = {
            "service main thread": cpu1[0]["main"] - cpu0[0]["main"],
            "service other threads": cpu1[0]["other"] - cpu0[0]["other"],
            "broker": sum(cpu1[1].values()) - sum(cpu0[1].values())}
        reader.read_until(lambda recs: len(recs) >= n, 300, f"{n} predictions")
        stamps = [r.timestamp for r in reader.records]
        result.predictions = len({r.json()["id"] for r in reader.records})
        result.span_s = (max(stamps) - min(stamps)) / 1000.0
    except BaseException:
        svc.kill()
        reader.close()
        raise
    if not keep:
        svc.terminate()
        reader.close()
    return result, svc, reader, args


def latency_phase(svc: ServiceProcess, reader: TopicReader, bootstrap: str, topic: str,
                  messages: Sequence[Message], rate: float, already: int) -> dict[str, Any]:
    """Produce ``messages`` at ``rate``; match each prediction to its input record."""
    hist0 = histogram(svc, "streamseq_event_to_prediction_seconds")
    batch0 = histogram(svc, "streamseq_batch_processing_seconds")
    start_ms = int(time.time() * 1000)
    cpu0 = cpu_seconds(svc.service_pid)["main"]
    t0 = time.perf_counter()
    produce(bootstrap, topic, messages, rate=rate, linger_ms=5)
    produce_s = time.perf_counter() - t0
    want = already + len(messages)
    svc.wait_until(lambda: svc.metric("streamseq_predictions_published_total") >= want, 600,
                   f"{want} predictions")
    reader.read_until(lambda recs: len(recs) >= want, 120, "latency predictions")
    busy = (cpu_seconds(svc.service_pid)["main"] - cpu0) / (time.perf_counter() - t0)
    hist1 = histogram(svc, "streamseq_event_to_prediction_seconds")
    batch1 = histogram(svc, "streamseq_batch_processing_seconds")
    batches = batch1[float("inf")] - batch0.get(float("inf"), 0.0)
    inputs: dict[tuple[int, int], int] = {}
    with TopicReader(bootstrap, topic) as inp:
        inp.read_until(lambda recs: len(recs) >= want, 120, "inputs")
        for r in inp.records:
            if r.timestamp >= start_ms:  # produced in this phase
                inputs[(r.partition, r.offset)] = r.timestamp
    lat = []
    for r in reader.records:
        src = r.json()["source"]
        sent = inputs.get((src["partition"], src["offset"]))
        if sent is not None:
            lat.append(r.timestamp - sent)
    assert len(lat) == len(messages), (len(lat), len(messages))
    lat.sort()

    def pct(q: float) -> float:
        return float(lat[min(len(lat) - 1, int(q * len(lat)))])

    return {"offered": rate, "achieved_offer": len(messages) / produce_s,
            "n": len(lat), "p50_ms": pct(0.50), "p90_ms": pct(0.90), "p99_ms": pct(0.99),
            "max_ms": float(lat[-1]), "mean_ms": statistics.fmean(lat),
            "hist_p50_ms": 1000 * histogram_quantile(0.50, hist0, hist1),
            "hist_p99_ms": 1000 * histogram_quantile(0.99, hist0, hist1),
            "main_thread_busy": busy, "batches": batches, "events_per_batch": len(messages) / max(batches, 1.0),
            "batch_p50_ms": 1000 * histogram_quantile(0.50, batch0, batch1),
            "batch_p99_ms": 1000 * histogram_quantile(0.99, batch0, batch1)}


def transport_latency(broker: Any, messages: Sequence[Message], rate: float,
                      fetch_max_wait_ms: int) -> dict[str, float]:
    """Kafka alone: a bare consumer (manual assignment) receiving ``messages`` produced at
    ``rate``; receive time - record timestamp, in ms."""
    import threading

    from kafka import KafkaConsumer, TopicPartition

    topic = f"transport-{uuid.uuid4().hex[:8]}"
    broker.create_topics({topic: 2})
    consumer = KafkaConsumer(bootstrap_servers=broker.bootstrap, group_id=None,
                             enable_auto_commit=False, fetch_max_wait_ms=fetch_max_wait_ms)
    tps = [TopicPartition(topic, 0), TopicPartition(topic, 1)]
    consumer.assign(tps)
    consumer.seek_to_beginning(*tps)
    consumer.poll(timeout_ms=200)
    feeder = threading.Thread(target=produce, args=(broker.bootstrap, topic, messages),
                              kwargs={"rate": rate}, daemon=True)
    feeder.start()
    lat: list[float] = []
    deadline = time.monotonic() + len(messages) / rate + 30
    try:
        while len(lat) < len(messages) and time.monotonic() < deadline:
            for recs in consumer.poll(timeout_ms=200).values():
                now = time.time() * 1000
                lat.extend(now - r.timestamp for r in recs)
    finally:
        feeder.join(60)
        consumer.close()
    lat.sort()
    return {"fetch_max_wait_ms": fetch_max_wait_ms, "n": len(lat),
            "p50_ms": lat[len(lat) // 2], "p99_ms": lat[min(len(lat) - 1, int(0.99 * len(lat)))]}


# ---------------------------------------------------------------------------- profile
PARTS = (  # (label, substrings of a frame "function (file:line)"), matched leaf first
    ("start-up (imports), excluded", ("importlib",)),
    ("kafka consumer: fetch, parse records", ("kafka/consumer", "kafka/record")),
    ("kafka producer: send, batches", ("kafka/producer",)),
    ("kafka network and protocol (IO threads)", ("kafka/net", "kafka/client", "kafka/conn",
                                                 "kafka/protocol", "kafka/coordinator",
                                                 "kafka/cluster", "kafka/future",
                                                 "selectors.py")),
    ("engine: learning (backward, optimizer step)", ("learner/tbptt", "torch/optim",
                                                     "autograd/graph", "autograd/__init__",
                                                     "_engine_run_backward")),
    ("engine: features, forward, hidden state", ("streamseq/engine", "models/recurrent",
                                                 "state/hidden", "streamseq/features",
                                                 "streamseq/evaluation", "torch/",
                                                 "river/", "numpy/")),
    ("decode input JSON", ("events/decode",)),
    ("prediction records and JSON", ("streamseq/predictions",)),
    ("checkpoint", ("state/checkpoint",)),
    ("service loop, metrics, HTTP", ("service/app", "prometheus_client", "service/http")),
)
EXCLUDED = PARTS[0][0]
WAITING = "waiting (select, condition, no Python frame), excluded"


def pyspy_binary() -> str | None:
    import shutil

    found = shutil.which("py-spy")
    beside = Path(sys.executable).with_name("py-spy")
    return found or (str(beside) if beside.exists() else None)


def classify(frames: Sequence[str]) -> str:
    if any("importlib" in f for f in frames):
        return EXCLUDED
    for frame in reversed(frames):
        for label, needles in PARTS:
            if any(x in frame for x in needles):
                return label
    return "other (start-up, interpreter)"


WAITS = ("select (selectors.py", "Condition.wait", "Event.wait", "sleep", "_wait_for_tstate")


def pyspy_summary(path: Path, top: int = 15) -> tuple[list[tuple[str, float]], str, float]:
    """Share of the samples of working threads by part, the hottest leaf functions, and
    the sample count, from py-spy's raw (collapsed stack, ``--threads``) output.

    Samples that sit in ``select()`` or a condition wait, or that show no Python frame,
    are counted apart as waiting (py-spy's idle detection does not catch them here), so
    the shares are of the remaining, working samples."""
    parts: dict[str, float] = defaultdict(float)
    leaves: dict[str, float] = defaultdict(float)
    threads: dict[str, float] = defaultdict(float)
    total = 0.0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = float(count)
        thread, *frames = stack.split(";")
        if not frames or any(w in frames[-1] for w in WAITS):
            parts[WAITING] += n
            continue
        label = classify(frames)
        parts[label] += n
        if label == EXCLUDED:
            continue
        total += n
        name = thread.split(":", 1)[-1].strip() or "MainThread"
        threads[name.split(" (")[0]] += n
        leaf = frames[-1].replace(str(ROOT) + "/", "").replace(sys.prefix + "/", "")
        leaves[leaf] += n
    hot = sorted(leaves.items(), key=lambda kv: -kv[1])[:top]
    by_thread = ", ".join(f"{k} {100 * v / total:.0f}%" for k, v in
                          sorted(threads.items(), key=lambda kv: -kv[1]) if v / total >= 0.01)
    table = (f"working samples by thread: {by_thread}\n\n"
             + "\n".join(f"{100 * v / total:5.1f}%  {k}" for k, v in hot))
    return sorted(parts.items(), key=lambda kv: -kv[1]), table, total


def cprofile_summary(path: Path, top: int = 15) -> tuple[list[tuple[str, float]], str, float]:
    """Own time by part and the top functions (cProfile sees the main thread only)."""
    stats = pstats.Stats(str(path))
    total = 0.0
    parts: dict[str, float] = defaultdict(float)
    for (file, line, func), (_cc, _nc, tt, _ct, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        label = classify([f"{func} ({file}:{line})"])
        parts[label] += tt
        total += 0.0 if label == EXCLUDED else tt
    buf = io.StringIO()
    pstats.Stats(str(path), stream=buf).sort_stats("tottime").print_stats(top)
    text = buf.getvalue()
    body = text[text.find("   ncalls"):] if "   ncalls" in text else text
    lines = [ln.replace(str(ROOT) + "/", "").replace(sys.prefix + "/", "")
             for ln in body.splitlines() if ln.strip()]
    return sorted(parts.items(), key=lambda kv: -kv[1]), "\n".join(lines), total


def profile_run(name: str, flags: Sequence[str], broker: Any, topics: ServiceTopics,
                unique: str, n: int, workdir: Path, hidden: int
                ) -> tuple[str, tuple[list[tuple[str, float]], str, float]]:
    """A service run under py-spy (all threads, native time included) or, without it,
    cProfile (main thread only); returns the tool and its summary."""
    spy = pyspy_binary()
    if spy:
        out = workdir / f"service-{name}.pyspy.txt"
        wrapper = [spy, "record", "--threads", "-r", "200", "-f", "raw", "-o", str(out), "--"]
        run_service(f"profile-{name}", broker, topics, unique, flags, n, workdir, hidden,
                    wrapper=wrapper)
        tool = "py-spy (200 samples/s, all threads, CPU samples only)"
        summary = pyspy_summary
    else:
        out = workdir / f"service-{name}.prof"
        run_service(f"profile-{name}", broker, topics, unique, flags, n, workdir, hidden,
                    python_args=("-m", "cProfile", "-o", str(out)))
        tool = "cProfile (main thread only; about 1.5x slower)"
        summary = cprofile_summary
    deadline = time.monotonic() + 60
    while not out.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    return tool, summary(out)


# ---------------------------------------------------------------------------- report
def us(seconds: float, n: int) -> str:
    return f"{1e6 * seconds / n:,.1f}"


VARIANTS = (  # name, service flags, what it shows
    ("learning", [], "the service as configured by default: predict, then learn"),
    ("learning, fewer steps", ["--batch-windows", "256"],
     "one optimizer step per 256 due TBPTT windows instead of 16"),
    ("no-learn", ["--no-learn"], "forecasts with fixed weights: the Kafka path's ceiling"),
)


def write_report(path: Path, ctx: dict[str, Any]) -> str:
    n = ctx["events"]
    s = ctx["stages"]
    m = ctx["machine"]
    lines = [
        "# End-to-end benchmark: Kafka service",
        "",
        f"Command: `{ctx['command']}`  ",
        f"Date: {ctx['date']}  ",
        f"Machine: {m['cpu']}, {m['cores']} cores shared with other work (load average "
        f"{ctx['load_start']} at start, {ctx['load_end']} at the end); Python {m['python']}, "
        f"torch {m['torch']} (1 thread), kafka-python {m['kafka-python']} with crc32c; "
        "broker: the embedded Tansu on loopback, on the same 2 cores.  ",
        f"Workload: {n:,} sensor events of {ctx['keys']:,} keys (1 value each, "
        f"~{n // ctx['keys']} per key), {ctx['partitions']} partitions, one service process, "
        f"GRU hidden {ctx['hidden']}, service defaults otherwise (max.poll.records 2000; "
        f"k1 {_LC.k1}, k2 {_LC.k2}, an optimizer step every {_LC.batch_windows} due windows).",
        "",
        "## Throughput",
        "",
        "The input topic is filled first; the service then drains it. End to end = distinct "
        "prediction ids / (last - first prediction record timestamp). In process = the "
        "service's own per-event work on the same records without Kafka (decode, engine, "
        "prediction records, JSON), per partition in polls of 2,000; in process best of "
        f"{ctx['repeat']}; end to end, best of {ctx['repeat']} runs (all runs in brackets).",
        "",
        "| service variant | end to end, events/s | in process, events/s | Kafka's share, "
        "µs/event |",
        "|---|---:|---:|---:|",
    ]
    for r in ctx["e2e"]:
        over = 1e6 / r.rate - 1e6 / r.in_process_rate if r.rate and r.in_process_rate else 0
        runs = ", ".join(f"{x:,.0f}" for x in r.runs)
        lines.append(f"| {r.name} (`{' '.join(r.flags) or 'defaults'}`) | {r.rate:,.0f} "
                     f"({runs}) | {r.in_process_rate:,.0f} | {over:,.0f} |")
    lines += [
        "",
        "| the same events elsewhere | events/s | µs/event |",
        "|---|---:|---:|",
    ]
    for name, sec in (
            ("engine alone, learning (pre-decoded events, polls of 2,000)", s["engine"]),
            ("file backtest, learning (JSONL -> `Backtest` -> predictions JSONL)",
             s["backtest"]),
            ("kafka-python producer alone (filling the input topic, linger 20 ms)",
             s["produce"]),
            ("kafka-python consumer alone (reading the input topic back)", s["consume"])):
        lines.append(f"| {name} | {n / sec:,.0f} | {1e6 * sec / n:,.1f} |")
    lines += [
        "",
        "Where the CPU went while the service drained the topic (from /proc, between the "
        "group's assignment and the last prediction counted by /metrics), in % of one core; "
        "the machine has 2:",
        "",
        "| service variant | wall | service main thread | service other threads (Kafka IO, "
        "producer sender, HTTP) | broker |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in ctx["e2e"]:
        c = r.cpu
        lines.append(f"| {r.name} | {r.wall_s:.1f} s | "
                     f"{100 * c['service main thread'] / r.wall_s:.0f}% | "
                     f"{100 * c['service other threads'] / r.wall_s:.0f}% | "
                     f"{100 * c['broker'] / r.wall_s:.0f}% |")
    lines.append("")
    lat = ctx.get("latency")
    if lat:
        lines += [
            "## Event-to-prediction latency at a fixed offered rate",
            "",
            f"{lat['n']:,} events offered at {lat['offered']:,.0f} events/s (achieved "
            f"{lat['achieved_offer']:,.0f}/s) to the learning service (defaults), caught up "
            "beforehand. Latency = prediction record timestamp (the service hands it to its "
            "producer) - input record timestamp (the bench hands it to its producer, linger "
            "5 ms): broker, fetch, decode, engine and encoding, in ms resolution. The "
            "service's own histogram (`streamseq_event_to_prediction_seconds`, interpolated "
            "in its buckets) measures the same span.",
            "",
            "| p50 | p90 | p99 | max | mean | service histogram p50 / p99 |",
            "|---:|---:|---:|---:|---:|---:|",
            f"| {lat['p50_ms']:.0f} ms | {lat['p90_ms']:.0f} ms | {lat['p99_ms']:.0f} ms | "
            f"{lat['max_ms']:.0f} ms | {lat['mean_ms']:.0f} ms | {lat['hist_p50_ms']:.0f} / "
            f"{lat['hist_p99_ms']:.0f} ms |",
            "",
            f"Meanwhile the service processed {lat['batches']:,.0f} polled batches "
            f"(~{lat['events_per_batch']:,.0f} events each); processing one batch "
            f"(`streamseq_batch_processing_seconds`) took p50 {lat['batch_p50_ms']:.0f} ms, "
            f"p99 {lat['batch_p99_ms']:.0f} ms; the service's main thread was busy "
            f"{100 * lat['main_thread_busy']:.0f}% of the time.",
            "",
        ]
        for t in ctx.get("transport", []):
            lines.append(
                f"- Kafka alone (a bare kafka-python consumer, `fetch_max_wait_ms="
                f"{t['fetch_max_wait_ms']}`, reading {t['n']:,} events produced at the same "
                f"rate): p50 {t['p50_ms']:.0f} ms, p99 {t['p99_ms']:.0f} ms.")
        lines.append("")
    for title, tool, prof in ctx.get("profiles", []):
        parts, table, total = prof
        lines += [f"## Profile of the service: {title}", "",
                  f"{tool}, over the whole run; start-up imports and waiting samples left "
                  "out, shares of the working samples of all threads.", "",
                  "| part | share |", "|---|---:|"]
        for label, t in parts:
            if label not in (EXCLUDED, WAITING) and t / total >= 0.005:
                lines.append(f"| {label} | {100 * t / total:.0f}% |")
        lines += ["", "<details><summary>hottest functions (own time)</summary>", "", "```",
                  table, "```", "", "</details>", ""]
    lines += ["## Bottleneck", "", *ctx["analysis"], ""]
    text = "\n".join(lines)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return text


def analysis(ctx: dict[str, Any]) -> list[str]:
    n = ctx["events"]
    s = ctx["stages"]
    runs = {r.name: r for r in ctx["e2e"]}
    produce_us = 1e6 * s["produce"] / n
    consume_us = 1e6 * s["consume"] / n
    out = []
    busy = [r.cpu["service main thread"] / r.wall_s for r in ctx["e2e"] if r.wall_s]
    if busy and max(busy) < 0.9:
        out.append(
            f"- **The service did not even get a whole core.** Its main thread (where polling, "
            f"decoding, the engine and producing all run) was busy only "
            f"{100 * min(busy):.0f}-{100 * max(busy):.0f}% of the drain's wall time: the 2 "
            f"cores were shared with other work (load average {ctx['load_start']}). On a "
            "quiet machine the end-to-end figures would be up to about 1 / that share higher; "
            "the per-event costs below are what limits them even then.")
    learn = runs.get("learning")
    nolearn = runs.get("no-learn")
    if learn and learn.rate and nolearn and nolearn.in_process_rate:
        work = 1e6 / learn.in_process_rate
        learning = work - 1e6 / nolearn.in_process_rate
        out.append(
            f"- **Learning is the first bottleneck.** With the default learner the service's "
            f"own work is ~{work:.0f} µs per event, ~{learning:.0f} µs of which is learning "
            "(what `--no-learn` saves: TBPTT window capture and the optimizer steps; with "
            "1,000 keys a window falls due every ~4 events of a key, so an Adam step over 16 "
            "windows x 16 steps comes every ~64 events). End to end it reaches "
            f"{learn.rate:,.0f} events/s against {learn.in_process_rate:,.0f}/s in process.")
    fewer = runs.get("learning, fewer steps")
    if fewer and fewer.rate:
        out.append(
            f"- Fewer, larger optimizer steps (`--batch-windows 256`) take the service to "
            f"{fewer.rate:,.0f} events/s end to end ({fewer.in_process_rate:,.0f}/s in "
            "process); that is a modelling choice (16x fewer weight updates), not a free "
            "speed-up.")
    if nolearn and nolearn.rate:
        work = 1e6 / nolearn.in_process_rate
        e2e = 1e6 / nolearn.rate
        out.append(
            f"- **Then kafka-python.** Without learning the service's own work is ~{work:.0f} "
            f"µs per event, yet the run reaches only {nolearn.rate:,.0f} events/s: the other "
            f"~{e2e - work:.0f} µs per event are the Kafka client's Python code (alone here: "
            f"producer {produce_us:.0f} µs and consumer {consume_us:.0f} µs per record, plus "
            "its IO threads competing for the GIL) and the broker taking CPU from the same 2 "
            "cores. One Python process cannot move more than ~1e6 / (producer + consumer) = "
            f"{1e6 / (produce_us + consume_us):,.0f} records/s in and out, whatever the model.")
    lat = ctx.get("latency")
    transport = {t["fetch_max_wait_ms"]: t for t in ctx.get("transport", [])}
    if lat and 500 in transport:
        slow, fast = transport[500], transport.get(min(transport))
        text = (f"- **Latency** at {lat['offered']:,.0f} events/s is p50 {lat['p50_ms']:.0f} ms, "
                f"p99 {lat['p99_ms']:.0f} ms, while processing a polled batch takes p50 "
                f"{lat['batch_p50_ms']:.0f} ms, p99 {lat['batch_p99_ms']:.0f} ms. Most of the "
                "wait is the fetch: a bare kafka-python consumer with the same default "
                f"`fetch_max_wait_ms=500` sees p50 {slow['p50_ms']:.0f} ms, p99 "
                f"{slow['p99_ms']:.0f} ms on this broker (Tansu answers a fetch late even when "
                "data is there)")
        if fast is not slow and fast is not None:
            text += (f", and p50 {fast['p50_ms']:.0f} ms, p99 {fast['p99_ms']:.0f} ms with "
                     f"`fetch_max_wait_ms={fast['fetch_max_wait_ms']}`. The service does not "
                     "set it: a `fetch_max_wait_ms` setting (say 50-100 ms) in ServiceConfig "
                     "would cut its latency on Tansu; on Apache Kafka a fetch returns as soon "
                     "as data is there, so the default costs nothing")
        out.append(text + ".")
    profiles = {title.split(" (")[0]: prof for title, _tool, prof in ctx.get("profiles", [])}
    if "no-learn" in profiles:
        parts, _table, total = profiles["no-learn"]
        share = {label: 100 * t / total for label, t in parts}
        kafka = sum(v for k, v in share.items() if k.startswith("kafka"))
        out.append(
            "- **Without learning, the working CPU splits** (py-spy, no-learn run) into the "
            f"service's own per-event Python code, prediction records and JSON "
            f"{share.get('prediction records and JSON', 0):.0f}%, decoding the input JSON "
            f"{share.get('decode input JSON', 0):.0f}%, engine forward and features "
            f"{share.get('engine: features, forward, hidden state', 0):.0f}%, against "
            f"kafka-python {kafka:.0f}% (producer, consumer and IO threads). "
            "`prediction_records` slices numpy once per record and target "
            "(`yhat[row, :, j].tolist()`) and `encode_record` builds a JSON encoder per "
            "record: one `tolist()` per batch and a shared encoder would save a good part of "
            "it. kafka-python also creates a future and computes a murmur2 partition in "
            "Python for every produced record, and the latency histogram is observed once "
            "per prediction.")
    out.append(
        "- **The aim of 30,000 events/s end to end is not reached** on this machine, and "
        "cannot be with kafka-python in one process: publishing one prediction per event "
        "costs more than 30 µs by itself. Getting there needs (1) a C client "
        "(confluent-kafka / librdkafka: a few µs per record) or several forecasts per "
        "Kafka record (a change of the prediction topic's contract), (2) cheaper learning "
        "per event (larger `--batch-windows`, or learning moved off the serving path), and "
        "(3) more cores: one service process per partition scales out with the consumer "
        "group, but here 2 cores carry the broker, the producer and the service together.")
    return out


# ---------------------------------------------------------------------------- main
def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.e2e", description=__doc__.split("\n")[0])
    p.add_argument("--events", type=int, default=60_000)
    p.add_argument("--keys", type=int, default=1000)
    p.add_argument("--partitions", type=int, default=2)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--rate", type=float, default=1000.0, help="offered rate of the latency "
                   "phase (events/s)")
    p.add_argument("--seconds", type=float, default=20.0, help="length of the latency phase")
    p.add_argument("--profile", action="store_true", help="profile the service (py-spy or "
                   "cProfile) in a further run of each variant")
    p.add_argument("--repeat", type=int, default=2, help="best of this many measurements "
                   "(in process and end to end; the machine is shared)")
    p.add_argument("--report", type=Path, default=REPORT)
    p.add_argument("--workdir", type=Path, help="keep logs, checkpoints and profiles here")
    a = p.parse_args(argv)

    from streamseq.broker import EmbeddedBroker

    workdir = a.workdir or Path(tempfile.mkdtemp(prefix="streamseq-e2e-"))
    workdir.mkdir(parents=True, exist_ok=True)
    unique = uuid.uuid4().hex[:8]
    n_latency = int(a.rate * a.seconds)
    ctx: dict[str, Any] = {
        "command": "python -m bench.e2e " + " ".join(argv if argv is not None else sys.argv[1:]),
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(), "load_start": load(), "events": a.events, "keys": a.keys,
        "partitions": a.partitions, "hidden": a.hidden, "repeat": a.repeat, "e2e": [],
        "profiles": []}
    print(f"workdir {workdir}", flush=True)
    messages = sensor_stream(a.events + n_latency, n_keys=a.keys, seed=11)
    bulk, live = messages[:a.events], messages[a.events:]
    with EmbeddedBroker(log_path=workdir / "broker.log") as broker:
        topics = ServiceTopics.create(broker, unique, partitions=a.partitions)
        stages: dict[str, float] = {}
        stages["produce"] = produce_timed(broker.bootstrap, topics.sensor, bulk)
        records, stages["consume"] = consume_timed(broker.bootstrap, topics.sensor, a.events)
        print(f"kafka-python: produce {us(stages['produce'], a.events)} µs/record, consume "
              f"{us(stages['consume'], a.events)} µs/record", flush=True)
        base = service_args(broker.bootstrap, topics, "x", workdir / "x", hidden=a.hidden)
        service_work(records[:4000], base, 2000)  # warm-up: torch and numpy first calls
        results = []
        for name, flags, _why in VARIANTS:
            r = E2E(name, list(flags), events=a.events)
            r.in_process_s = min(service_work(records, [*base, *flags], 2000)
                                 for _ in range(a.repeat))
            print(f"in process, {name}: {r.in_process_rate:,.0f} ev/s", flush=True)
            results.append(r)
        stages["engine"] = min(service_work(records, base, 2000, engine_only=True)
                               for _ in range(a.repeat))
        stages["backtest"] = min(file_backtest(bulk, base, workdir) for _ in range(a.repeat))
        ctx["stages"] = stages
        for r in results:
            for rep in range(a.repeat):
                keep = r.name == "learning" and rep == 0 and n_latency > 0
                tag = f"{r.name.replace(' ', '').replace(',', '-')}-{rep}"
                done, svc, reader, _ = run_service(tag, broker, topics, unique, r.flags,
                                                   a.events, workdir, a.hidden, keep=keep)
                print(f"end to end, {r.name}: {done.rate:,.0f} ev/s", flush=True)
                r.runs.append(done.rate)
                if done.rate > r.rate:
                    r.predictions, r.span_s, r.wall_s = (done.predictions, done.span_s,
                                                         done.wall_s)
                    r.cpu = done.cpu
                if keep:
                    try:
                        ctx["latency"] = latency_phase(svc, reader, broker.bootstrap,
                                                       topics.sensor, live, a.rate, a.events)
                        print(f"latency: {json.dumps(ctx['latency'])}", flush=True)
                    finally:
                        svc.terminate()
                        reader.close()
                    probe = live[:min(len(live), int(5 * a.rate))]
                    ctx["transport"] = [transport_latency(broker, probe, a.rate, wait)
                                        for wait in (500, 20)]
                    print(f"transport: {json.dumps(ctx['transport'])}", flush=True)
            ctx["e2e"].append(r)
        if a.profile:
            for name, flags, _why in VARIANTS[::2]:
                tag = name.replace(" ", "").replace(",", "-")
                tool, summary = profile_run(tag, flags, broker, topics, unique,
                                            a.events, workdir, a.hidden)
                ctx["profiles"].append((f"{name} (`{' '.join(flags) or 'defaults'}`)", tool,
                                        summary))
    ctx["load_end"] = load()
    ctx["analysis"] = analysis(ctx)
    print(write_report(a.report, ctx))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
