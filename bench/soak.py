"""Soak: run ``streamseq run`` for a long time at a steady rate with key churn.

``python -m bench.soak [--minutes 10] [--rate 1000] [--active-keys 2000] [--churn 5]
[--idle-ttl 60] [--max-keys 5000] [--report bench/results/soak.md]``

What it does:

* starts an embedded broker (Tansu, in memory) and creates the input, prediction and
  dead-letter topics;
* starts the service as a subprocess (``python -m streamseq run``) with ``--max-keys`` and
  ``--idle-ttl`` so idle keys are evicted, and a local checkpoint directory;
* produces sensor events at ``--rate`` events/s (event time = wall clock) from a sliding
  window of ``--active-keys`` keys that moves by ``--churn`` keys per second: new keys keep
  appearing and old ones go idle for good. Without eviction the keys held (and memory)
  would grow by ``churn`` keys/s for the whole run; with it they plateau at about
  ``active + churn * idle_ttl`` keys. A small share of the messages is hostile
  (``--bad-rate``: not JSON, NaN, missing key ... -> dead letters) or an exact duplicate
  (``--dup-rate`` -> dropped as ``duplicate``);
* every ``--sample-every`` seconds records the service's RSS (``/proc/PID/status``), keys
  held, events consumed, predictions, dead letters, dropped, lag (produced minus consumed,
  and the service's own lag gauge), the event-to-prediction latency histogram (p50/p99 of
  the interval), checkpoint count/failures and the checkpoint directory's size;
* at the end stops the service with SIGTERM (exit code must be 0), checks that every
  produced message is accounted for (predictions + dead letters + dropped == produced ==
  consumed) and writes a Markdown report with the time series and a verdict on memory
  (slope of RSS over the second half of the run, in MB/hour).

The figures are a function of this machine's load: the report says what else was running
(load average) so a reader can judge.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from streamseq.broker import EmbeddedBroker, free_port
from streamseq.top import Snapshot, bucket_deltas, bucket_quantile, parse_metrics

ROOT = Path(__file__).resolve().parents[1]
LATENCY = "streamseq_event_to_prediction_seconds"

# A few kinds of bad input, each with the dead-letter reason it must get.
BAD_PAYLOADS: tuple[tuple[bytes, str], ...] = (
    (b"{not json", "not_json"),
    (b"\xff\xfe\x00garbage", "not_utf8"),
    (b'{"key": "%(k)s", "ts": %(ts)d, "values": {"temp": NaN}}', "non_finite"),
    (b'{"ts": %(ts)d, "values": {"temp": 1.0}}', "missing_key"),
    (b'{"key": "%(k)s", "ts": -5, "values": {"temp": 1.0}}', "bad_time"),
    (b'{"key": "%(k)s", "ts": %(ts)d, "values": {"temp": "warm"}}', "non_numeric"),
)


@dataclass
class Sample:
    """One observation of the running service."""

    t: float  # seconds since the service started
    rss_mb: float
    keys: float
    produced: int
    consumed: float
    predictions: float
    dead_letters: float
    dropped: float
    lag_gauge: float
    p50_ms: float
    p99_ms: float
    checkpoints: float
    checkpoints_failed: float
    checkpoint_dir_mb: float
    evicted: float
    cpu_s: float
    load1: float


@dataclass
class Producer:
    """Paced producer with key churn, in a thread of this process."""

    bootstrap: str
    topic: str
    rate: float
    active_keys: int
    churn: float
    bad_rate: float
    dup_rate: float
    seed: int = 7
    sent: int = 0
    bad: dict[str, int] = field(default_factory=dict)
    duplicates: int = 0
    failed: int = 0
    keys_seen: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        from kafka import KafkaProducer

        rng = random.Random(self.seed)
        producer = KafkaProducer(bootstrap_servers=self.bootstrap, acks="all", linger_ms=10,
                                 client_id="streamseq-soak-producer")
        t0 = time.monotonic()
        next_t = t0
        newest = 0
        lock = threading.Lock()

        def failed(_exc: BaseException) -> None:
            with lock:
                self.failed += 1

        def send(key: str, payload: bytes) -> None:
            producer.send(self.topic, key=key.encode(), value=payload).add_errback(failed)
            self.sent += 1

        while not self._stop.is_set():
            now = time.monotonic()
            if now < next_t:
                time.sleep(min(next_t - now, 0.05))
                continue
            next_t = max(next_t + 1.0 / self.rate, now - 0.05)
            first = int((now - t0) * self.churn)
            idx = first + rng.randrange(self.active_keys)
            newest = max(newest, idx)
            key = f"k-{idx:07d}"
            ts = int(time.time() * 1000)
            u = rng.random()
            if u < self.bad_rate:
                payload, reason = rng.choice(BAD_PAYLOADS)
                if b"%(" in payload:
                    payload = payload % {b"k": key.encode(), b"ts": ts}
                self.bad[reason] = self.bad.get(reason, 0) + 1
                send(key, payload)
                continue
            phase = (idx % 97) / 97.0 * 2 * math.pi
            value = 20.0 + 5.0 * math.sin(ts / 60_000.0 + phase) + rng.gauss(0.0, 0.3)
            payload = json.dumps({"key": key, "ts": ts, "values": {"temp": round(value, 4)}},
                                 separators=(",", ":")).encode()
            send(key, payload)
            if u < self.bad_rate + self.dup_rate:
                send(key, payload)  # an exact duplicate: same key, time and values
                self.duplicates += 1
        producer.flush(timeout=60)
        producer.close(timeout=60)
        self.keys_seen = newest + 1

    def stop(self) -> None:
        self._stop.set()


# ---------------------------------------------------------------------------- observation
def rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return math.nan


def dir_mb(path: Path) -> float:
    total = 0
    for p in path.rglob("*"):
        with contextlib.suppress(OSError):
            total += p.stat().st_size if p.is_file() else 0
    return total / 1e6


def scrape(port: int) -> Snapshot | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            return parse_metrics(r.read().decode(), t=time.monotonic())
    except OSError:
        return None


def _v(s: Snapshot, name: str, **match: str) -> float:
    return s.value(name, **match) or 0.0


def quantiles_ms(before: Snapshot | None, after: Snapshot) -> tuple[float, float]:
    b = bucket_deltas(before, after, LATENCY)
    return bucket_quantile(0.5, b) * 1000.0, bucket_quantile(0.99, b) * 1000.0


def slope_per_hour(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of ``(t seconds, y)`` in y per hour."""
    pts = [(t, y) for t, y in points if not math.isnan(y)]
    if len(pts) < 2:
        return math.nan
    n = len(pts)
    mt = sum(t for t, _ in pts) / n
    my = sum(y for _, y in pts) / n
    var = sum((t - mt) ** 2 for t, _ in pts)
    if var == 0:
        return math.nan
    return sum((t - mt) * (y - my) for t, y in pts) / var * 3600.0


# ---------------------------------------------------------------------------- the run
def run(a: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="streamseq-soak-"))
    ckpt = work / "checkpoints"
    log_path = Path(a.service_log) if a.service_log else work / "service.log"
    port = free_port()
    topics = {"in": "soak-sensors", "pred": "soak-predictions", "dlq": "soak-dead-letters"}
    result: dict[str, Any] = {"args": vars(a), "work": str(work), "service_log": str(log_path)}
    with EmbeddedBroker() as broker:
        broker.create_topics({topics["in"]: a.partitions, topics["pred"]: a.partitions,
                              topics["dlq"]: 1})
        cmd = [sys.executable, "-m", "streamseq", "--log-level", "INFO", "run",
               "--bootstrap", broker.bootstrap, "--sensor-topic", topics["in"],
               "--prediction-topic", topics["pred"], "--dead-letter-topic", topics["dlq"],
               "--group", "soak", "--checkpoint-dir", str(ckpt),
               "--checkpoint-every-seconds", str(a.checkpoint_every_seconds),
               "--metrics-host", "127.0.0.1", "--metrics-port", str(port),
               "--session-timeout-ms", "10000", "--heartbeat-interval-ms", "2000",
               "--max-keys", str(a.max_keys), "--idle-ttl", str(a.idle_ttl),
               "--hidden", str(a.hidden)]
        env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMSEQ_")}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        with open(log_path, "ab") as out:
            svc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT,
                                   start_new_session=True)
        try:
            result.update(_observe(a, broker.bootstrap, topics, svc, port, ckpt, log_path))
        finally:
            if svc.poll() is None:
                svc.kill()
                svc.wait(30)
    return result


def _wait_ready(svc: subprocess.Popen[bytes], port: int, timeout: float = 120.0) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if svc.poll() is not None:
            raise RuntimeError(f"service exited with {svc.returncode} before it was ready")
        s = scrape(port)
        if s is not None and _v(s, "streamseq_shards_assigned") >= 1:
            return time.monotonic() - t0
        time.sleep(0.5)
    raise RuntimeError(f"service not ready (no partition assigned) after {timeout:.0f}s")


def _observe(a: argparse.Namespace, bootstrap: str, topics: dict[str, str],
             svc: subprocess.Popen[bytes], port: int, ckpt: Path, log_path: Path
             ) -> dict[str, Any]:
    t_start = time.monotonic()
    ready_s = _wait_ready(svc, port)
    print(f"service ready after {ready_s:.1f}s (pid {svc.pid}, metrics :{port}); producing "
          f"{a.rate:.0f} ev/s for {a.minutes:.0f} min", flush=True)
    prod = Producer(bootstrap, topics["in"], a.rate, a.active_keys, a.churn, a.bad_rate,
                    a.dup_rate, seed=a.seed)
    thread = threading.Thread(target=prod.run, name="soak-producer", daemon=True)
    thread.start()
    samples: list[Sample] = []
    prev: Snapshot | None = None
    first: Snapshot | None = None
    end = time.monotonic() + a.minutes * 60.0
    while time.monotonic() < end and svc.poll() is None:
        time.sleep(min(a.sample_every, max(0.0, end - time.monotonic())))
        s = scrape(port)
        if s is None:
            continue
        first = first or s
        samples.append(_sample(s, prev, svc.pid, prod.sent, ckpt, t_start))
        prev = s
        last = samples[-1]
        print(f"  t={last.t:7.0f}s rss={last.rss_mb:6.1f}MB keys={last.keys:6.0f} "
              f"consumed={last.consumed:9.0f} lag={last.produced - last.consumed:6.0f} "
              f"p50={last.p50_ms:6.1f}ms p99={last.p99_ms:7.1f}ms dlq={last.dead_letters:.0f} "
              f"dropped={last.dropped:.0f} evicted={last.evicted:.0f}", flush=True)
    crashed = svc.poll()
    prod.stop()
    thread.join(120)
    # drain: wait until the service has consumed everything produced
    drained = False
    deadline = time.monotonic() + a.drain_seconds
    final = prev
    while crashed is None and time.monotonic() < deadline:
        s = scrape(port)
        if s is not None:
            final = s
            if _v(s, "streamseq_events_consumed_total") >= prod.sent:
                drained = True
                break
        time.sleep(1.0)
    drain_s = a.drain_seconds - max(0.0, deadline - time.monotonic())
    if final is not None and svc.poll() is None:
        samples.append(_sample(final, prev, svc.pid, prod.sent, ckpt, t_start))
    exit_code: int | None = crashed
    if crashed is None:
        svc.send_signal(signal.SIGTERM)
        try:
            exit_code = svc.wait(120)
        except subprocess.TimeoutExpired:
            svc.kill()
            exit_code = svc.wait(30)
    log_text = log_path.read_text(errors="replace")
    error_lines = [ln for ln in log_text.splitlines()
                   if " ERROR " in ln or " CRITICAL " in ln or ln.startswith("Traceback")]
    warning_lines = [ln for ln in log_text.splitlines() if " WARNING " in ln]
    assert final is not None, "never scraped the service"
    overall = bucket_deltas(None, final, LATENCY)
    totals = {
        "produced": prod.sent,
        "produce_failed": prod.failed,
        "bad_sent": dict(prod.bad),
        "duplicates_sent": prod.duplicates,
        "distinct_keys": prod.keys_seen,
        "consumed": _v(final, "streamseq_events_consumed_total"),
        "predictions": _v(final, "streamseq_predictions_published_total"),
        "dead_letters": _v(final, "streamseq_dead_letters_total"),
        "dropped": {k[0]: v for k, v in
                    final.sum_by("streamseq_events_dropped_total", ["reason"]).items() if v},
        "rejected": {k[0]: v for k, v in
                     final.sum_by("streamseq_events_rejected_total", ["reason"]).items() if v},
        "keys_evicted": _v(final, "streamseq_keys_evicted_total"),
        "checkpoints_ok": _v(final, "streamseq_checkpoints_total", outcome="ok"),
        "checkpoints_failed": _v(final, "streamseq_checkpoints_total", outcome="failed"),
        "latency_p50_ms": bucket_quantile(0.5, overall) * 1000.0,
        "latency_p99_ms": bucket_quantile(0.99, overall) * 1000.0,
        "latency_p999_ms": bucket_quantile(0.999, overall) * 1000.0,
        "latency_count": overall.get(math.inf, 0.0),
        "drained": drained,
        "drain_seconds": drain_s,
        "exit_code": exit_code,
        "error_lines": error_lines[:20],
        "error_count": len(error_lines),
        "warning_count": len(warning_lines),
        "ready_seconds": ready_s,
    }
    accounted = (totals["predictions"] + totals["dead_letters"]
                 + sum(totals["dropped"].values()))
    totals["accounted"] = accounted
    totals["all_accounted"] = drained and accounted == totals["consumed"] == prod.sent
    return {"samples": [asdict(s) for s in samples], "totals": totals}


def _sample(s: Snapshot, prev: Snapshot | None, pid: int, produced: int, ckpt: Path,
            t_start: float) -> Sample:
    p50, p99 = quantiles_ms(prev, s)
    return Sample(
        t=s.t - t_start, rss_mb=rss_mb(pid), keys=_v(s, "streamseq_keys_held"),
        produced=produced, consumed=_v(s, "streamseq_events_consumed_total"),
        predictions=_v(s, "streamseq_predictions_published_total"),
        dead_letters=_v(s, "streamseq_dead_letters_total"),
        dropped=_v(s, "streamseq_events_dropped_total"),
        lag_gauge=_v(s, "streamseq_consumer_lag_messages"), p50_ms=p50, p99_ms=p99,
        checkpoints=_v(s, "streamseq_checkpoints_total", outcome="ok"),
        checkpoints_failed=_v(s, "streamseq_checkpoints_total", outcome="failed"),
        checkpoint_dir_mb=dir_mb(ckpt), evicted=_v(s, "streamseq_keys_evicted_total"),
        cpu_s=_v(s, "process_cpu_seconds_total"), load1=os.getloadavg()[0])


# ---------------------------------------------------------------------------- the report
def verdict(samples: list[dict[str, Any]], a: argparse.Namespace) -> dict[str, Any]:
    """Memory and keys: do they plateau? Judged on the second half of the run."""
    if not samples:
        return {"plateau": False, "why": "no samples"}
    t_end = samples[-1]["t"]
    half = [s for s in samples if s["t"] >= t_end / 2]
    rss = [(s["t"], s["rss_mb"]) for s in half]
    keys = [(s["t"], s["keys"]) for s in half]
    rss_slope = slope_per_hour(rss)
    keys_slope = slope_per_hour(keys)
    expected_keys = a.active_keys + a.churn * a.idle_ttl
    # without eviction the keys would grow by churn * 3600 per hour
    no_evict_growth = a.churn * 3600.0
    rss_vals = [y for _, y in rss if not math.isnan(y)]
    plateau = (not math.isnan(rss_slope) and abs(keys_slope) < 0.05 * no_evict_growth
               and rss_slope < max(20.0, 0.05 * (max(rss_vals) if rss_vals else 0.0)))
    return {"rss_slope_mb_per_h": rss_slope, "keys_slope_per_h": keys_slope,
            "keys_expected": expected_keys, "keys_growth_without_eviction_per_h":
            no_evict_growth, "rss_min_mb": min(rss_vals) if rss_vals else math.nan,
            "rss_max_mb": max(rss_vals) if rss_vals else math.nan, "plateau": plateau}


def _f(x: float, digits: int = 1) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:,.{digits}f}"


def markdown(result: dict[str, Any], a: argparse.Namespace) -> str:
    s, tot = result["samples"], result["totals"]
    v = verdict(s, a)
    lines = [
        "# Soak: `streamseq run` under steady load with key churn",
        "",
        f"Run `python -m bench.soak {' '.join(result['argv'])}` on "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(result['started']))}, "
        f"{result['elapsed_s'] / 60:.1f} min wall time, embedded Tansu broker, "
        f"{os.cpu_count()} CPUs shared with other work (1-min load average "
        f"{_f(min(x['load1'] for x in s) if s else math.nan, 2)} .. "
        f"{_f(max(x['load1'] for x in s) if s else math.nan, 2)} during the run).",
        "",
        f"Offered load: {a.rate:,.0f} sensor events/s on {a.partitions} partitions; "
        f"{a.active_keys:,} active keys in a window that moves by {a.churn:g} keys/s "
        f"({tot['distinct_keys']:,} distinct keys over the run); service flags "
        f"`--max-keys {a.max_keys} --idle-ttl {a.idle_ttl:g} --hidden {a.hidden}`; hostile "
        f"messages {a.bad_rate:.2%}, exact duplicates {a.dup_rate:.2%}.",
        "",
        "## Verdict",
        "",
        f"- **Memory {'plateaus' if v['plateau'] else 'does NOT plateau'}**: RSS "
        f"{_f(v['rss_min_mb'])}..{_f(v['rss_max_mb'])} MB over the second half, slope "
        f"{_f(v['rss_slope_mb_per_h'])} MB/h; keys held slope {_f(v['keys_slope_per_h'])}/h "
        f"(without eviction: +{v['keys_growth_without_eviction_per_h']:,.0f}/h); "
        f"expected about {v['keys_expected']:,.0f} keys held "
        f"(active + churn x idle TTL), {tot['keys_evicted']:,.0f} evicted.",
        f"- **Latency** (event-to-prediction, whole run, {tot['latency_count']:,.0f} "
        f"predictions): p50 {_f(tot['latency_p50_ms'])} ms, p99 {_f(tot['latency_p99_ms'])} ms, "
        f"p99.9 {_f(tot['latency_p999_ms'])} ms (interpolated in the histogram's buckets).",
        f"- **Accounting**: produced {tot['produced']:,}, consumed {tot['consumed']:,.0f}, "
        f"predictions {tot['predictions']:,.0f} + dead letters {tot['dead_letters']:,.0f} + "
        f"dropped {sum(tot['dropped'].values()):,.0f} {tot['dropped']} = "
        f"{tot['accounted']:,.0f}: {'all accounted for' if tot['all_accounted'] else 'MISMATCH'}"
        f" (drained in {tot['drain_seconds']:.0f}s). Dead letters by reason "
        f"{tot['rejected']} vs hostile sent {tot['bad_sent']}; duplicates sent "
        f"{tot['duplicates_sent']}.",
        f"- **Errors**: exit code after SIGTERM {tot['exit_code']}; {tot['error_count']} ERROR "
        f"lines, {tot['warning_count']} WARNING lines in the service log; checkpoints ok "
        f"{tot['checkpoints_ok']:.0f}, failed {tot['checkpoints_failed']:.0f}; producer "
        f"failures {tot['produce_failed']}.",
        f"- **Lag** (produced minus consumed at each sample): max "
        f"{_f(max((x['produced'] - x['consumed'] for x in s), default=math.nan), 0)}, median "
        f"{_f(_median([x['produced'] - x['consumed'] for x in s]), 0)} messages.",
        "",
        "## Over time",
        "",
        "| t (min) | RSS MB | keys held | evicted | consumed | lag | p50 ms | p99 ms | "
        "dead letters | dropped | checkpoints | ckpt dir MB | CPU s | load |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    step = max(1, len(s) // 40)
    shown = s[::step] + ([s[-1]] if s and (len(s) - 1) % step else [])
    for x in shown:
        lines.append(
            f"| {x['t'] / 60:.1f} | {_f(x['rss_mb'])} | {x['keys']:,.0f} | {x['evicted']:,.0f} "
            f"| {x['consumed']:,.0f} | {x['produced'] - x['consumed']:,.0f} | "
            f"{_f(x['p50_ms'])} | {_f(x['p99_ms'])} | {x['dead_letters']:,.0f} | "
            f"{x['dropped']:,.0f} | {x['checkpoints']:,.0f} | {_f(x['checkpoint_dir_mb'], 2)} | "
            f"{_f(x['cpu_s'])} | {_f(x['load1'], 2)} |")
    lines += ["", "Latency per row is over the interval since the previous sample; lag is "
              "produced minus consumed (the service's own lag gauge relies on the broker's "
              "end offsets, which the embedded broker reports unreliably).", ""]
    if tot["error_lines"]:
        lines += ["## Error lines (first 20)", "", "```", *tot["error_lines"], "```", ""]
    lines += [f"Service log: `{result['service_log']}`.", ""]
    return "\n".join(lines)


def _median(xs: list[float]) -> float:
    xs = sorted(xs)
    return xs[len(xs) // 2] if xs else math.nan


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split("\n")[0])
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--rate", type=float, default=1000.0, help="events/s offered")
    p.add_argument("--active-keys", type=int, default=2000)
    p.add_argument("--churn", type=float, default=5.0, help="new keys per second")
    p.add_argument("--idle-ttl", type=float, default=60.0, help="service --idle-ttl (s)")
    p.add_argument("--max-keys", type=int, default=5000, help="service --max-keys per shard")
    p.add_argument("--hidden", type=int, default=32)
    p.add_argument("--partitions", type=int, default=2)
    p.add_argument("--bad-rate", type=float, default=0.001)
    p.add_argument("--dup-rate", type=float, default=0.001)
    p.add_argument("--checkpoint-every-seconds", type=float, default=30.0)
    p.add_argument("--sample-every", type=float, default=15.0, help="seconds")
    p.add_argument("--drain-seconds", type=float, default=120.0)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--service-log", help="service log file (default: in the work dir)")
    p.add_argument("--report", type=Path, default=ROOT / "bench" / "results" / "soak.md")
    p.add_argument("--json", type=Path, help="also write the raw samples and totals")
    a = p.parse_args(argv)
    started = time.time()
    result = run(a)
    result["argv"] = list(argv if argv is not None else sys.argv[1:])
    result["started"] = started
    result["elapsed_s"] = time.time() - started
    a.report.parent.mkdir(parents=True, exist_ok=True)
    a.report.write_text(markdown(result, a))
    if a.json:
        a.json.write_text(json.dumps(result, indent=1, default=str))
    tot = result["totals"]
    v = verdict(result["samples"], a)
    print(f"report: {a.report}; plateau={v['plateau']} accounted={tot['all_accounted']} "
          f"exit={tot['exit_code']} errors={tot['error_count']}", flush=True)
    ok = v["plateau"] and tot["all_accounted"] and tot["exit_code"] == 0
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
