"""A real Prometheus scrapes the real service fed by the simulators; every PromQL expression
of the dashboard and the alert rules is then run against it.

Dashboard expressions must return data, except the few listed in :data:`MAY_BE_EMPTY` (rare
events a healthy 30-second run need not produce). Alert expressions must be silent (no result,
alert inactive) in a healthy run, except those in :data:`MAY_BE_PENDING`, which a young
service can legitimately trip for a while; no alert may be firing. Every series the alert
rules watch must exist, except the failure-only ones in :data:`FAILURE_ONLY_SERIES` and
those of metrics the service does not expose yet (``prom.PENDING_METRICS``).

A second test runs two replicas of one group on a one-partition topic, so that one owns the
partition without consuming anything and the other is idle, and reads the alert states
Prometheus computes from rules rendered by the mixin with a short checkpoint threshold.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from prom import (
    ALERTS,
    DASHBOARDS,
    PENDING_METRICS,
    PrometheusError,
    PrometheusServer,
    alert_expressions,
    dashboard_expressions,
    load_mixin,
    prometheus_binary,
    promql_selectors,
    substitute_grafana_variables,
)

from streamseq.broker import free_port
from tests.integration.harness import (
    ServiceProcess,
    ServiceTopics,
    produce,
    sensor_stream,
    service_args,
    wait_until,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

EVENTS_PER_SIMULATOR = 3000
FEED_RATE = 1000
SCRAPE_FOR = 20.0  # seconds of scraping before the expressions are checked

#: Dashboard targets that may return nothing in a short healthy run, and why.
MAY_BE_EMPTY = {
    "Drift detections / A": "ADWIN need not detect drift in 3000 events",
    "Drift": "annotation: only drift detections",
    "Keys held and evicted / B": "no key is idle or over max_keys in a short run",
    "Checkpoint duration and outcome / C": "no checkpoint may fall due within the run",
}

#: Alerts whose condition a young, healthy service can meet for a while (never firing here:
#: their for: durations are far longer than the test).
MAY_BE_PENDING = {
    "StreamseqLatencyHigh": "events produced before the group formed wait seconds in Kafka",
    "StreamseqModelWorseThanPersistence": "an untrained model can trail persistence at first",
}

#: Series that exist only once something went wrong (a labelled counter is born at its first
#: increment; the service pre-creates them at 0).
FAILURE_ONLY_SERIES = {
    'streamseq_updates_total{outcome="skipped_nonfinite"}',
    'streamseq_checkpoints_total{outcome="failed"}',
}


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("true", "1", "yes")


@pytest.fixture(scope="module")
def prometheus_bin() -> str:
    path = prometheus_binary()
    if path:
        return path
    if _in_ci():
        pytest.fail("the prometheus binary is missing in CI: .ci/run must install it")
    pytest.skip("prometheus is not installed (apt-get install prometheus)")


def _http_status(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return int(r.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except OSError:
        return None


@dataclass
class Service:
    proc: subprocess.Popen[bytes]
    port: int
    log: Path
    topics: dict[str, str]

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def url(self, path: str) -> str:
        return f"http://{self.target}{path}"

    def log_tail(self, lines: int = 40) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def wait_for(self, path: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"streamseq run exited with {self.proc.returncode}:\n"
                            f"{self.log_tail()}")
            if _http_status(self.url(path)) == 200:
                return
            time.sleep(0.2)
        pytest.fail(f"{path} not 200 after {timeout:.0f}s:\n{self.log_tail()}")


@pytest.fixture()
def service(request: pytest.FixtureRequest, broker: Any, unique: str, tmp_path: Path
            ) -> Iterator[Service]:
    """``streamseq run`` as a subprocess, exactly as docs/CONTRACTS.md specifies it; with
    ``--workers N`` where a test parametrizes it (``indirect``) with N."""
    topics = {"sensor": f"sensors-{unique}", "price": f"prices-{unique}",
              "prediction": f"predictions-{unique}", "dead_letter": f"dead-letters-{unique}"}
    broker.create_topics({topics["sensor"]: 2, topics["price"]: 2, topics["prediction"]: 2,
                          topics["dead_letter"]: 1})
    port = free_port()
    log = tmp_path / "service.log"
    cmd = [sys.executable, "-m", "streamseq", "run",
           "--bootstrap", broker.bootstrap,
           "--sensor-topic", topics["sensor"], "--price-topic", topics["price"],
           "--prediction-topic", topics["prediction"],
           "--dead-letter-topic", topics["dead_letter"],
           "--group", f"streamseq-{unique}",
           "--checkpoint-dir", str(tmp_path / "checkpoints"),
           "--metrics-host", "127.0.0.1", "--metrics-port", str(port)]
    workers = getattr(request, "param", 1)
    if workers > 1:
        cmd += ["--workers", str(workers)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMSEQ_")}
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
    svc = Service(proc=proc, port=port, log=log, topics=topics)
    try:
        svc.wait_for("/healthz", timeout=90)
        yield svc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


def _simulate(kind: str, bootstrap: str, topic: str, seed: int, *faults: str
              ) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "streamseq", "simulate", kind, "--bootstrap", bootstrap,
           "--topic", topic, "--count", str(EVENTS_PER_SIMULATOR), "--rate", str(FEED_RATE),
           "--seed", str(seed), "--no-progress", *faults]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _selector_text(name: str, matchers: dict[str, str]) -> str:
    inner = ", ".join(f"{label}{op_value}" for label, op_value in sorted(matchers.items()))
    return f"{name}{{{inner}}}" if inner else name


# two workers on one host (streamseq run --workers 2): one target whose series are the
# workers' merge, for which the same dashboards and alerts must hold
@pytest.mark.parametrize("service", [1, 2], ids=["one process", "two workers"], indirect=True)
def test_dashboards_and_alerts_against_a_real_prometheus(
        prometheus_bin: str, broker: Any, service: Service) -> None:
    with PrometheusServer(service.target, binary=prometheus_bin) as prom:
        try:
            prom.wait_for_target(timeout=30)
        except PrometheusError as exc:
            pytest.fail(f"{exc}\nstreamseq run exit status {service.proc.poll()}:\n"
                        f"{service.log_tail()}")
        t_up = time.monotonic()
        service.wait_for("/readyz", timeout=90)  # broker reachable, partitions assigned

        # Feed both kinds, with faults on the sensors: malformed (rejected, dead letters),
        # NaN values (rejected non_finite) and duplicates (dropped).
        sims = [
            _simulate("sensors", broker.bootstrap, service.topics["sensor"], 1,
                      "--malformed-rate", "0.01", "--nan-rate", "0.01",
                      "--duplicate-rate", "0.01"),
            _simulate("prices", broker.bootstrap, service.topics["price"], 2),
        ]
        for sim in sims:
            _, err = sim.communicate(timeout=120)
            assert sim.returncode == 0, err.decode(errors="replace")[-2000:]

        # Wait until the service has consumed it all (lag 0, counters near the total).
        deadline = time.monotonic() + 120
        consumed = lag = None
        while time.monotonic() < deadline:
            consumed = prom.value('sum(streamseq_events_consumed_total{job="streamseq"})')
            lag = prom.value('sum(streamseq_consumer_lag_messages{job="streamseq"})')
            if consumed and consumed >= 0.95 * 2 * EVENTS_PER_SIMULATOR and lag == 0:
                break
            time.sleep(1)
        else:
            pytest.fail(f"not drained: consumed={consumed} lag={lag}\n{service.log_tail()}")
        time.sleep(max(5.0, SCRAPE_FOR - (time.monotonic() - t_up)))
        assert service.proc.poll() is None, service.log_tail()

        # -- every dashboard expression returns data
        failures, empty = [], []
        for path in sorted(DASHBOARDS.glob("*.json")):
            for e in dashboard_expressions(path):
                result = prom.query(substitute_grafana_variables(e.expr))
                if not result:
                    (empty if e.name in MAY_BE_EMPTY else failures).append(e.name)
        assert not failures, f"dashboard expressions without data: {failures}"
        print(f"empty as allowed: {empty}")

        # -- template variables find their values
        for var, label in [("job", "job"), ("instance", "instance"), ("kind", "kind")]:
            metric = ("streamseq_events_consumed_total" if var == "kind"
                      else "streamseq_build_info")
            values = {r["metric"].get(label) for r in prom.query(f"group by ({label}) ({metric})")}
            assert values - {None}, f"${var} would have no values"
        kinds = {r["metric"]["kind"] for r in prom.query(
            "group by (kind) (streamseq_events_consumed_total)")}
        assert kinds == {"sensor", "price"}

        # -- alert rules: loaded, evaluated without error, healthy run silent
        rules = prom.rules_loaded()
        expected = {e.name for e in alert_expressions(ALERTS)}
        assert {r["name"] for r in rules} == expected
        broken = {r["name"]: r.get("lastError") for r in rules if r.get("health") != "ok"}
        assert not broken, f"rules failing to evaluate: {broken}"
        active = {a["labels"]["alertname"]: a["state"] for a in prom.alerts()}
        firing = {name for name, state in active.items() if state == "firing"}
        assert not firing, f"alerts firing in a healthy run: {firing}"
        for e in alert_expressions(ALERTS):
            if e.name in MAY_BE_PENDING:
                continue
            result = prom.query(e.expr)
            assert not result, f"{e.name} condition holds in a healthy run: {result}"
            assert e.name not in active, f"{e.name} is {active[e.name]}"

        # -- every series the alerts watch exists (else the alert can never fire)
        missing = set()
        for e in alert_expressions(ALERTS):
            for name, matchers in promql_selectors(e.expr):
                selector = _selector_text(name, matchers)
                if name in PENDING_METRICS or selector in FAILURE_ONLY_SERIES:
                    continue
                if not prom.query(f"count({selector})"):
                    missing.add(f"{e.name}: {selector}")
        assert not missing, f"alerts watch series that do not exist: {sorted(missing)}"

        # -- the service's own figures are plausible
        assert prom.value('sum(rate(streamseq_events_rejected_total[1m])) > 0') is not None
        assert prom.value("sum(streamseq_predictions_published_total)") > 0
        assert prom.value("min(streamseq_broker_connected)") == 1
        assert prom.value("sum(streamseq_shards_assigned)") == 4


def _mixin_rules(directory: Path, **config: Any) -> Path:
    """alerts.yml rendered by deploy/mixin/build.py with ``config`` (thresholds)."""
    mixin = load_mixin()
    path = directory / "alerts.yml"
    path.write_text(mixin.render_alerts(mixin.MixinConfig(**config)))
    return path


def _active(prom: PrometheusServer, alertname: str) -> dict[str, str]:
    """instance -> state (pending/firing) of one alert."""
    return {a["labels"].get("instance", ""): a["state"] for a in prom.alerts()
            if a["labels"]["alertname"] == alertname}


def _corrupt_snapshots(directory: Path, name: str) -> None:
    """Two snapshots of shard ``name`` in ``directory``, both cut short (torn)."""
    from streamseq.state.checkpoint import LocalCheckpointStore

    store = LocalCheckpointStore(directory)
    for step in range(2):
        store.save(name, {"format": "streamseq-shard/1", "step": step})
    for path in directory.glob(f"{name}.*.ckpt"):
        path.write_bytes(path.read_bytes()[:60])


def test_alerts_spare_an_idle_replica_and_a_partition_not_yet_consumed(
        prometheus_bin: str, broker: Any, unique: str, tmp_path: Path) -> None:
    """Two replicas, one partition holding records from before the group existed, read from
    ``latest``, whose snapshots are all unreadable (``--on-corrupt-state fresh``): the owner
    starts the partition fresh and consumes nothing, the other owns nothing.

    - StreamseqCheckpointRestoreFailed fires for the owner, at once;
    - before the first record the owner's lag is measured from its position (0 here), not
      from offset 0 (the backlog of 50), so StreamseqConsumerFarBehind never sees an
      infinite drain time;
    - with a 3-second checkpoint threshold the owner's StreamseqCheckpointStale and
      StreamseqNoEventsConsumed become pending; the idle replica's, whose checkpoint age
      grows as well, do not, and it is ready (a standby)."""
    topics = ServiceTopics.create(broker, unique, partitions=1)
    # unbatched: the embedded broker reports end offsets of batched writes wrongly
    produce(broker.bootstrap, topics.sensor, sensor_stream(50, n_keys=2, seed=1), rate=500,
            linger_ms=0)
    _corrupt_snapshots(tmp_path / "ckpt", f"{topics.sensor}-0")
    args = service_args(broker.bootstrap, topics, f"g-{unique}", tmp_path / "ckpt",
                        checkpoint_every_seconds=600.0,
                        extra=["--auto-offset-reset", "latest", "--on-corrupt-state", "fresh"])
    replicas = [ServiceProcess(args, tmp_path / f"{name}.log").start() for name in "ab"]
    try:
        for svc in replicas:
            svc.wait_until(lambda s=svc: s.status("/healthz") == 200, 90, "/healthz 200")
        wait_until(lambda: [s.metric("streamseq_shards_assigned") for s in replicas]
                   in ([1, 0], [0, 1]), 90, "one owner and one idle replica",
                   on_timeout=lambda: "\n".join(s.log_tail() for s in replicas))
        owner, idle = sorted(replicas, key=lambda s: -s.metric("streamseq_shards_assigned"))
        # an idle replica is a ready standby once the group has handed it its (empty) share
        wait_until(lambda: idle.status("/readyz") == 200 and owner.status("/readyz") == 200,
                   60, "both replicas ready", on_timeout=lambda: "\n".join(
                       s.log_tail() for s in replicas))
        assert owner.metric("streamseq_checkpoint_restores_total", outcome="failed") == 1
        assert idle.metric("streamseq_checkpoint_restores_total") == 0
        assert "its learned state is lost" in owner.log_path.read_text()
        rules = _mixin_rules(tmp_path, checkpoint_stale_seconds=3)
        targets = [f"127.0.0.1:{s.port}" for s in (owner, idle)]
        with PrometheusServer(targets, binary=prometheus_bin, rules=(rules,)) as prom:
            prom.wait_for_target(timeout=30)
            o, i = targets
            assert prom.wait_for('ALERTS{alertname="StreamseqCheckpointRestoreFailed", '
                                 f'alertstate="firing", instance="{o}"}}', timeout=20)
            pending = prom.wait_for('ALERTS{alertname="StreamseqCheckpointStale", '
                                    f'instance="{o}"}}', timeout=40)
            assert pending, f"the owner's stale checkpoint raised nothing\n{prom.log}"
            # the idle replica's checkpoint age is past the threshold too ...
            assert prom.value(f'streamseq_checkpoint_age_seconds{{instance="{i}"}}') > 3
            assert prom.value(f'streamseq_shards_assigned{{instance="{i}"}}') == 0
            prom.wait_for('ALERTS{alertname="StreamseqNoEventsConsumed", '
                          f'instance="{o}"}}', timeout=20)
            drain = prom.wait_for(
                f'sum without (partition) (streamseq_consumer_lag_messages{{instance="{o}"}}) '
                f'/ sum without (kind) (rate(streamseq_events_consumed_total{{instance="{o}"}}'
                '[5m]))', timeout=20)
            lag = prom.value(f'sum(streamseq_consumer_lag_messages{{instance="{o}"}})')
            print(f"owner lag {lag}, raw drain time {drain}")
            assert lag == 0, "the lag before the first record counts from offset 0"
            # ... yet only the owner is reported, and nothing is far behind
            assert _active(prom, "StreamseqCheckpointStale") == {o: "pending"}
            assert _active(prom, "StreamseqNoEventsConsumed") == {o: "pending"}
            assert _active(prom, "StreamseqConsumerFarBehind") == {}
            assert _active(prom, "StreamseqCheckpointRestoreFailed") == {o: "firing"}
            rules_state = {r["name"]: r for r in prom.rules_loaded()}
            assert rules_state["StreamseqConsumerFarBehind"]["health"] == "ok"
    finally:
        for svc in replicas:
            if svc.running:
                svc.kill()
