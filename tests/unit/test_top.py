"""``streamseq top`` against a real ``ServiceMetrics`` registry served over HTTP."""

from __future__ import annotations

import math
import re
import time
from collections.abc import Iterator

import pytest
from prometheus_client import start_http_server

from streamseq.broker import free_port
from streamseq.cli import main
from streamseq.metrics import ServiceMetrics
from streamseq.top import bucket_quantile, parse_metrics, render, summarize


@pytest.fixture()
def served() -> Iterator[tuple[ServiceMetrics, str]]:
    """A ServiceMetrics registry on a free loopback port; yields (metrics, url)."""
    metrics = ServiceMetrics(version="9.8.7", cell="lstm", hidden=32)
    port = free_port()
    server, thread = start_http_server(port, addr="127.0.0.1", registry=metrics.registry)
    try:
        yield metrics, f"http://127.0.0.1:{port}/metrics"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def _set_gauges(m: ServiceMetrics) -> None:
    m.up.set(1)
    m.shards.set(3)
    for partition, lag in enumerate((5, 10, 20)):
        m.lag.labels(topic="sensors", partition=str(partition)).set(lag)
    m.lag.labels(topic="prices", partition="0").set(7)
    m.keys.labels(kind="sensor").set(250)
    m.keys.labels(kind="price").set(12)
    m.mae.labels(kind="sensor", forecaster="model").set(0.25)
    m.mae.labels(kind="sensor", forecaster="persistence").set(0.5)
    m.train_loss.labels(kind="sensor").set(0.0625)
    m.grad_norm.labels(kind="sensor").set(2.5)
    # Counters that exist before the first scrape: only their increase must count.
    m.events_consumed.labels(topic="sensors", kind="sensor").inc(10_000)
    m.predictions.labels(kind="sensor").inc(9_000)


def _bump(m: ServiceMetrics) -> None:
    """What happens during the interval between the two scrapes."""
    m.events_consumed.labels(topic="sensors", kind="sensor").inc(300)
    m.events_consumed.labels(topic="prices", kind="price").inc(100)
    m.predictions.labels(kind="sensor").inc(200)
    m.events_rejected.labels(topic="sensors", reason="not_json").inc(20)
    m.events_rejected.labels(topic="prices", reason="non_finite").inc(5)
    for _ in range(100):  # all in the (0.01, 0.025] bucket: p50 17.5 ms, p99 24.85 ms
        m.latency.labels(kind="sensor").observe(0.02)
    m.abs_error.labels(kind="sensor", forecaster="model").inc(30)
    m.abs_error.labels(kind="sensor", forecaster="persistence").inc(60)
    m.scored.labels(kind="sensor").inc(100)
    m.updates.labels(kind="sensor", outcome="applied").inc(40)
    m.updates.labels(kind="sensor", outcome="skipped_nonfinite").inc(4)


def _line(out: str, prefix: str) -> str:
    lines = [ln for ln in out.splitlines() if ln.startswith(prefix)]
    assert lines, f"no line starting with {prefix!r} in:\n{out}"
    return lines[0]


def _figure(line: str, pattern: str) -> float:
    match = re.search(pattern, line)
    assert match, f"{pattern!r} not in {line!r}"
    return float(match.group(1))


def test_top_once_prints_interval_figures(served: tuple[ServiceMetrics, str],
                                          capsys: pytest.CaptureFixture[str],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    metrics, url = served
    _set_gauges(metrics)
    interval = 0.5
    real_sleep = time.sleep
    slept = []

    def bump_then_sleep(seconds: float) -> None:
        """The pause between the two scrapes: the service moves on meanwhile."""
        slept.append(seconds)
        _bump(metrics)
        real_sleep(seconds)

    monkeypatch.setattr("streamseq.top.time.sleep", bump_then_sleep)
    rc = main(["top", "--url", url, "--interval", str(interval), "--once"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert slept == [interval]

    # Rates are increases over the measured time between the scrapes: the interval plus
    # one loopback scrape.
    def rate_ok(value: float, increase: float) -> bool:
        return increase / (interval + 0.25) <= value <= increase / interval * 1.001

    assert "version 9.8.7 lstm/32" in _line(out, "streamseq top")
    assert "connected" in _line(out, "broker") and "shards 3" in _line(out, "broker")
    events = _line(out, "events/s")
    assert rate_ok(_figure(events, r"consumed ([\d.]+)"), 400)
    assert rate_ok(_figure(events, r"published ([\d.]+)"), 200)
    rejected = _line(out, "rejected/s")
    assert rate_ok(_figure(rejected, r"not_json ([\d.]+)"), 20)
    assert rate_ok(_figure(rejected, r"non_finite ([\d.]+)"), 5)
    assert rejected.index("not_json") < rejected.index("non_finite")  # largest first
    lag = _line(out, "lag")
    assert "total 42" in lag and "sensors 35 [0:5 1:10 2:20]" in lag and "prices 7 [0:7]" in lag
    latency = _line(out, "latency")
    assert _figure(latency, r"p50 ([\d.]+) ms") == pytest.approx(17.5, abs=0.05)
    assert _figure(latency, r"p99 ([\d.]+) ms") == pytest.approx(24.85, abs=0.06)
    assert "n=100" in latency
    accuracy = _line(out, "            sensor")
    assert re.search(r"0\.2500\s+0\.5000\s+0\.50\s+\(0\.3000 / 0\.6000\)", accuracy), accuracy
    state = _line(out, "state")
    assert "sensor 250" in state and "price 12" in state
    assert 0 <= _figure(state, r"checkpoint age ([\d.]+)s") < 60
    training = _line(out, "training")
    assert "loss sensor 0.0625" in training and "grad norm sensor 2.5" in training
    assert rate_ok(_figure(training, r"steps/s sensor ([\d.]+)"), 40)
    assert rate_ok(_figure(training, r"SKIPPED/s sensor ([\d.]+)"), 4)
    # The test process's own resident memory: megabytes alone, a gigabyte after a long suite.
    rss = re.search(r"rss ([\d.]+)([MG])B", _line(out, "process"))
    assert rss, _line(out, "process")
    assert float(rss.group(1)) * {"M": 1e6, "G": 1e9}[rss.group(2)] > 1e6


def test_top_once_unreachable_endpoint_fails_cleanly(capsys: pytest.CaptureFixture[str]) -> None:
    port = free_port()
    rc = main(["top", "--url", f"127.0.0.1:{port}", "--interval", "0.01", "--once",
               "--timeout", "1"])
    err = capsys.readouterr().err
    assert rc == 1
    assert f"cannot scrape http://127.0.0.1:{port}/metrics" in err


def test_summary_of_an_idle_service_has_no_rates_and_no_latency() -> None:
    m = ServiceMetrics(version="0", cell="gru", hidden=8)
    text = m.render().decode()
    a, b = parse_metrics(text, t=0.0), parse_metrics(text, t=2.0)
    s = summarize(a, b)
    assert (s.consumed, s.published, s.rejected, s.latency, s.lag) == (0.0, 0.0, {}, {}, {})
    out = render(s)
    assert "no prediction in the interval" in out
    assert "DISCONNECTED" in out  # streamseq_broker_connected starts at 0


def test_counter_reset_between_scrapes_counts_from_zero() -> None:
    a = parse_metrics('streamseq_predictions_published_total{kind="price"} 500\n', t=0.0)
    b = parse_metrics('streamseq_predictions_published_total{kind="price"} 30\n', t=3.0)
    assert summarize(a, b).published == pytest.approx(10.0)


def test_bucket_quantile_matches_promql_on_the_service_buckets() -> None:
    # Same layout as streamseq.metrics.LATENCY_BUCKETS: 30 observations at 3 ms, 70 at 40 ms.
    m = ServiceMetrics(version="0", cell="gru", hidden=8)
    for _ in range(30):
        m.latency.labels(kind="price").observe(0.003)
    for _ in range(70):
        m.latency.labels(kind="price").observe(0.04)
    snap = parse_metrics(m.render().decode())
    buckets = {float(dict(lbl)["le"]): v for lbl, v in
               snap.series("streamseq_event_to_prediction_seconds_bucket").items()}
    # rank 50 lies in (0.025, 0.05] holding 70 (cumulative 30 -> 100).
    assert bucket_quantile(0.5, buckets) == pytest.approx(0.025 + 0.025 * 20 / 70)
    assert bucket_quantile(0.2, buckets) == pytest.approx(0.0025 + 0.0025 * 20 / 30)
    assert bucket_quantile(1.0, buckets) == pytest.approx(0.05)
    assert math.isnan(bucket_quantile(0.5, {math.inf: 0.0}))
