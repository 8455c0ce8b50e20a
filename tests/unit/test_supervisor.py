"""The supervisor of ``streamseq run --workers N`` with real child processes (small Python
programs in place of the service), and the host metrics merged from real multiprocess files
written by real ``ServiceMetrics`` in other processes. The service itself under a supervisor,
against a broker, is tests/integration/test_workers.py."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Gauge
from prometheus_client.multiprocess import mark_process_dead

from streamseq.exceptions import ConfigError
from streamseq.metrics import ServiceMetrics
from streamseq.service.config import load_config
from streamseq.service.supervisor import HostCollector, RestartPolicy, Supervisor, worker_count

PROJECT_ROOT = Path(__file__).resolve().parents[2]
FAST = RestartPolicy(first_backoff=0.05, max_backoff=0.2, max_crashes=2, window=60.0)
# a worker that stops cleanly on SIGTERM (exit 0, or the code in argv[1])
POLITE = textwrap.dedent("""\
    import signal, sys, time
    code = int(sys.argv[1]) if len(sys.argv) > 1 else 0
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(code))
    time.sleep(120)
    """)


def config() -> object:
    return load_config(env={}, overrides={"bootstrap": "127.0.0.1:9", "metrics_port": 0,
                                          "metrics_host": "127.0.0.1"})


def supervise(command: object, count: int = 2) -> Supervisor:
    return Supervisor(config(), [], count, policy=FAST, command=command, every=0.05)


def python(code: str, *args: str) -> list[str]:
    return [sys.executable, "-c", code, *args]


def run_in_thread(sup: Supervisor) -> tuple[threading.Thread, list[int]]:
    result: list[int] = []
    thread = threading.Thread(target=lambda: result.append(sup.run()), daemon=True)
    thread.start()
    return thread, result


def wait_for(condition: object, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


# ---------------------------------------------------------------------------- workers
def test_workers_auto_is_the_cpu_affinity_and_the_setting_is_checked() -> None:
    assert worker_count("auto") == len(os.sched_getaffinity(0))
    assert worker_count("4") == 4
    base = {"bootstrap": "k:9092"}
    assert load_config(env={"STREAMSEQ_WORKERS": "AUTO"}, overrides=base).workers == "auto"
    assert load_config(env={}, overrides={**base, "workers": 3}).workers == "3"  # from a file
    for bad in ("0", "-1", "two", "1.5"):
        with pytest.raises(ConfigError, match="workers"):
            load_config(env={}, overrides={**base, "workers": bad})


def test_a_crash_loop_gives_up_with_exit_1_and_says_so(caplog: pytest.LogCaptureFixture
                                                       ) -> None:
    started: list[int] = []

    def command(index: int, _port_file: Path) -> list[str]:
        started.append(index)
        return python("import sys; sys.exit(1)") if index == 2 else python(POLITE)

    caplog.set_level(logging.INFO, "streamseq.service.supervisor")
    t0 = time.monotonic()
    assert supervise(command).run() == 1
    assert time.monotonic() - t0 < 30
    assert started.count(2) == FAST.max_crashes + 1 and started.count(1) == 1
    text = caplog.text
    assert "worker 2" in text and "restarting it in" in text
    assert "crashed 3 times in 60 s (last: exit code 1): giving up" in text
    assert "worker 1" in text and "stopped: exit code 0" in text  # the other, stopped cleanly


@pytest.mark.parametrize("code", [2, 3])
def test_a_worker_that_no_restart_can_mend_stops_the_rest_with_its_code(code: int) -> None:
    def command(index: int, _port_file: Path) -> list[str]:
        return python(f"import sys; sys.exit({code})") if index == 1 else python(POLITE)

    sup = supervise(command)
    assert sup.run() == code
    assert all(w.crashes == [] or w.index == 1 for w in sup.workers)
    assert len(sup.workers[0].crashes) == 1  # not restarted


def test_a_killed_worker_is_restarted_and_stop_ends_with_0(tmp_path: Path) -> None:
    pids = tmp_path / "pids"

    def command(index: int, _port_file: Path) -> list[str]:
        return python("import os, sys; open(sys.argv[2], 'a').write(f'{os.getpid()}\\n')\n"
                      + POLITE, "0", str(pids))

    sup = supervise(command)
    thread, result = run_in_thread(sup)
    wait_for(lambda: pids.exists() and len(pids.read_text().split()) == 2)
    first = [int(p) for p in pids.read_text().split()]
    os.kill(first[0], 9)
    wait_for(lambda: len(pids.read_text().split()) == 3)
    assert sup.workers[0].crashes or sup.workers[1].crashes
    sup.stop()
    thread.join(30)
    assert result == [0]
    for pid in map(int, pids.read_text().split()):  # none outlives the supervisor
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_a_worker_failing_its_clean_stop_makes_the_exit_non_zero() -> None:
    sup = supervise(lambda index, _pf: python(POLITE, "1" if index == 2 else "0"))
    thread, result = run_in_thread(sup)
    wait_for(lambda: all(w.running for w in sup.workers) and sup.workers)
    time.sleep(0.3)
    sup.stop()
    thread.join(30)
    assert result == [1]


def test_health_reflects_every_worker(tmp_path: Path) -> None:
    """Each worker answers on its own port (a port file); the host is ready only when all
    are, and its reason names each worker."""
    server = textwrap.dedent("""\
        import http.server, os, signal, sys, threading
        ready = sys.argv[2] == "ready"
        class H(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                ok = self.path == "/healthz" or ready
                body = (b"ok: 1 partitions" if ok else b"broker unreachable")
                self.send_response(200 if ok else 503); self.end_headers()
                self.wfile.write(body)
            def log_message(self, *a): pass
        s = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
        open(sys.argv[1] + ".tmp", "w").write(str(s.server_address[1]))
        os.replace(sys.argv[1] + ".tmp", sys.argv[1])
        signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
        s.serve_forever()
        """)
    state = {1: "ready", 2: "not"}
    sup = supervise(lambda index, pf: python(server, str(pf), state[index]))
    thread, result = run_in_thread(sup)
    wait_for(lambda: sup.workers and all(w.port() for w in sup.workers))
    ok, reason = sup.ready()
    assert not ok
    assert reason == "worker 1: ok: 1 partitions; worker 2: broker unreachable"
    assert sup.alive() == (True, "ok: 2 workers")
    state[2] = "ready"
    assert sup.workers[1].proc is not None
    sup.workers[1].proc.kill()  # restarted, now ready
    wait_for(lambda: sup.ready()[0])
    assert sup.ready()[1] == "worker 1: ok: 1 partitions; worker 2: ok: 1 partitions"
    sup.stop()
    assert sup.ready() == (False, "stopping")
    thread.join(30)
    assert result == [0]


# ---------------------------------------------------------------------------- metrics
WORKER_METRICS = textwrap.dedent("""\
    import gc, sys, time
    from streamseq.metrics import ServiceMetrics, observe_many
    m = ServiceMetrics(version="0", cell="gru", hidden=8)
    n, shards, checkpoint = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
    m.events_consumed.labels(topic="sensors", kind="sensor").inc(n)
    observe_many(m.latency.labels(kind="sensor"), [0.002 * n, 1.0])
    m.shards.set(shards)
    m.keys.labels(kind="sensor").set(10 * n)
    m.up.set(1 if n < 5 else 0)
    m.mae.labels(kind="sensor", forecaster="model").set(0.1 * n)
    m.lag.labels(topic="sensors", partition=str(n)).set(100)
    m.forget_partition("sensors", n)  # revoked: its share of the lag is 0 now
    m.last_checkpoint_ts.set(checkpoint)
    gc.collect()
    m.gc_time.publish()
    print("ok", flush=True)
    sys.stdin.read()  # alive until the test closes stdin
    """)


def test_host_metrics_merge_real_worker_files(tmp_path: Path) -> None:
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path),
           "PYTHONPATH": str(PROJECT_ROOT)}
    procs = []
    for n, shards, checkpoint in ((2, 1, 2000.0), (3, 1, 1000.0), (7, 0, 10.0)):
        p = subprocess.Popen([sys.executable, "-c", WORKER_METRICS, str(n), str(shards),
                              str(checkpoint)], env=env, stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, cwd=PROJECT_ROOT)
        assert p.stdout is not None and p.stdout.readline() == b"ok\n"
        procs.append(p)
    registry = CollectorRegistry()
    registry.register(HostCollector(tmp_path, lambda: [p.pid for p in procs],
                                    {"version": "0", "cell": "gru", "hidden": "8"}))

    def value(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, labels)

    try:
        assert value("streamseq_events_consumed_total", topic="sensors", kind="sensor") == 12
        assert value("streamseq_event_to_prediction_seconds_count", kind="sensor") == 6
        assert value("streamseq_event_to_prediction_seconds_bucket", kind="sensor",
                     le="0.01") == 2  # 0.004 and 0.006 (0.014 is above)
        assert value("streamseq_shards_assigned") == 2
        assert value("streamseq_keys_held", kind="sensor") == 120
        assert value("streamseq_broker_connected") == 0  # one worker has lost the broker
        assert value("streamseq_mae", kind="sensor", forecaster="model") == pytest.approx(0.7)
        assert value("streamseq_consumer_lag_messages", topic="sensors", partition="3") == 0
        # the oldest checkpoint of the workers that own partitions (the idle one's is older)
        assert value("streamseq_last_checkpoint_timestamp_seconds") == 1000.0
        assert value("streamseq_checkpoint_age_seconds") == pytest.approx(time.time() - 1000,
                                                                          abs=5)
        assert value("streamseq_build_info", version="0", cell="gru", hidden="8") == 1
        assert value("process_resident_memory_bytes") > 3 * 10e6  # the workers' too
        gc_seconds = value("streamseq_gc_seconds_total", generation="2")
        assert gc_seconds is not None and gc_seconds > 0  # each worker's full collection
        assert all("pid" not in s.labels for f in registry.collect() for s in f.samples)
        # a worker exits: its counts stay (sums never go back), its levels go
        dead = procs.pop(1)
        assert dead.stdin is not None
        dead.stdin.close()
        dead.wait(30)
        mark_process_dead(dead.pid, str(tmp_path))
        assert value("streamseq_events_consumed_total", topic="sensors", kind="sensor") == 12
        assert value("streamseq_shards_assigned") == 1
        assert value("streamseq_keys_held", kind="sensor") == 90
        assert value("streamseq_last_checkpoint_timestamp_seconds") == 2000.0
    finally:
        for p in procs:
            assert p.stdin is not None
            p.stdin.close()
            p.wait(30)


def test_every_gauge_combines_over_live_workers_without_a_pid_label() -> None:
    """A gauge in the default mode ("all") would add a pid label to the host's series and
    keep dead workers' values: dashboards' sums and alerts would break."""
    m = ServiceMetrics(version="0", cell="gru", hidden=8)
    gauges = {name: g for name, g in vars(m).items() if isinstance(g, Gauge)}
    assert len(gauges) >= 16
    for name, g in gauges.items():
        assert g._multiprocess_mode.startswith("live"), name


# ---------------------------------------------------------------------------- the command
def streamseq_run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMSEQ_")}
    env["PYTHONPATH"] = str(PROJECT_ROOT)
    return subprocess.run([sys.executable, "-m", "streamseq", "run", "--bootstrap",
                           "127.0.0.1:9", *args], capture_output=True, text=True, env=env,
                          cwd=PROJECT_ROOT, timeout=120)


def test_unusable_worker_settings_fail_on_one_line_with_exit_2(tmp_path: Path) -> None:
    bad = streamseq_run("--workers", "0")
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [
        "streamseq run: configuration error: workers must be a positive number or auto, "
        "not '0'"]
    import socket

    with socket.socket() as taken:  # the supervisor's port is in use: no worker starts
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        busy = streamseq_run("--workers", "2", "--metrics-port", port,
                             "--checkpoint-dir", str(tmp_path / "ckpt"))
    assert busy.returncode == 2
    assert f"metrics port 127.0.0.1:{port} cannot be used" in busy.stderr
    assert "worker 1 started" not in busy.stderr
