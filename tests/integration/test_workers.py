"""``streamseq run --workers 2`` against the real embedded broker: two consumer processes of
one group under a supervisor, one of them killed with SIGKILL mid-stream, then SIGTERM.

What an uninterrupted single process would publish (:func:`harness.reference_run`) is the
oracle: every input gets its prediction (the same id and payload) or its dead letter, the
final snapshots equal the uninterrupted run's state, and the host's one ``/metrics`` adds up
what each worker's own registry says.
"""

from __future__ import annotations

import os
import re
import signal
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.integration.harness import (
    BackgroundProducer,
    ServiceProcess,
    ServiceTopics,
    TopicReader,
    committed_offsets,
    produce,
    read_topic,
    reference_run,
    sensor_stream,
    service_args,
    wait_for_predictions,
)
from tests.integration.test_service import (  # noqa: F401 - spawn is a fixture
    PREDICTION_TIMEOUT,
    assert_predictions_match,
    assert_snapshots_match,
    bad_messages,
    next_offsets,
    spawn,
    split,
)

pytestmark = pytest.mark.integration

WORKER_HTTP = re.compile(r"\[worker (\d+)\] streamseq\.service\.http: metrics and health on "
                         r"http://127\.0\.0\.1:(\d+)/metrics")


def worker_pids(svc: ServiceProcess) -> list[int]:
    """The supervisor's children (its workers), from /proc."""
    return sorted(int(pid) for task in Path(f"/proc/{svc.proc.pid}/task").iterdir()  # type: ignore[union-attr]
                  for pid in (task / "children").read_text().split())


def worker_ports(svc: ServiceProcess) -> dict[int, int]:
    """Each worker's own health and metrics port, from its latest start in the log."""
    return {int(i): int(port) for i, port in WORKER_HTTP.findall(svc.log_path.read_text())}


def own_counter(port: int, name: str) -> float:
    """A worker's own count (its registry, not the host's merge)."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
               if s.name == name)


def test_two_workers_one_group_survive_a_kill_and_stop_cleanly(
        broker: Any, unique: str, tmp_path: Path, spawn: Any) -> None:  # noqa: F811
    topics = ServiceTopics.create(broker, unique)
    valid = sensor_stream(3000, n_keys=8, seed=7)
    bad = bad_messages(valid[0][2])
    stream: list[tuple[str | None, bytes | None, int]] = list(valid)
    for i, (key, payload, _reason) in enumerate(bad):
        stream.insert(200 + i * 300, (key, payload, 0))
    before, during = split(stream, 0.4)  # type: ignore[arg-type]
    produce(broker.bootstrap, topics.sensor, before)
    args = service_args(broker.bootstrap, topics, f"g-{unique}", tmp_path / "ckpt",
                        checkpoint_every_events=300)
    consumed = "streamseq_events_consumed_total"
    with TopicReader(broker.bootstrap, topics.prediction) as reader:
        svc = spawn([*args, "--workers", "2"], "host")
        svc.wait_ready(shards=2)
        # ready means every worker is: one partition each, named in the host's answer
        svc.wait_until(lambda: svc.status("/readyz") == 200 and "worker 1: ok: 1 partitions; "
                       "worker 2: ok: 1 partitions" in _body(svc, "/readyz"), 60,
                       "a partition per worker")
        assert svc.status("/healthz") == 200
        first = worker_pids(svc)
        assert len(first) == 2
        svc.wait_consumed(len(before))
        # the host's counters are the sum of the workers' own
        ports = worker_ports(svc)
        assert sorted(ports) == [1, 2]
        own = [own_counter(port, consumed) for port in ports.values()]
        assert all(n > 0 for n in own), own
        assert svc.metric(consumed) == sum(own) == len(before)

        feeder = BackgroundProducer(broker.bootstrap, topics.sensor, during, rate=600).start()
        svc.wait_consumed(len(before) + 300)
        counted = svc.metric(consumed)
        os.kill(first[0], signal.SIGKILL)
        svc.wait_until(lambda: "crashed (killed by SIGKILL); restarting it" in
                       svc.log_path.read_text(), 30, "the kill noticed")
        assert svc.metric(consumed) >= counted, "a dead worker's counts are kept"
        svc.wait_until(lambda: len(set(worker_pids(svc)) - set(first)) == 1, 60,
                       "the killed worker restarted")
        assert first[1] in worker_pids(svc)
        assert feeder.result() == len(during)
        svc.wait_until(lambda: svc.status("/readyz") == 200, 90, "ready again")

        inputs = read_topic(broker.bootstrap, topics.sensor, len(stream))
        ref = reference_run(inputs, args)
        wait_for_predictions(reader, ref.predictions, PREDICTION_TIMEOUT, svc.log_tail)
        svc.wait_consumed(len(stream))
        samples = svc.samples()
        t0 = time.monotonic()
        assert svc.terminate(timeout=60) == 0
        stopped_in = time.monotonic() - t0
        reader.drain()
        copies = assert_predictions_match(reader.records, ref, duplicates=True)

    assert stopped_in < 30, f"SIGTERM to exit took {stopped_in:.1f}s"
    started = [int(p) for p in re.findall(r"worker \d+ started \(pid (\d+)\)",
                                          svc.log_path.read_text())]
    assert len(started) == 3 and set(first) < set(started)
    assert not any(alive(pid) for pid in started), "no worker outlives the supervisor"
    # exactly one prediction per valid input (repeats only of what the killed worker had
    # not checkpointed, with equal payloads) and a dead letter for every bad one
    assert sum(n - 1 for n in copies.values()) <= len(stream)
    dead = read_topic(broker.bootstrap, topics.dead_letter, len(bad))
    want = sorted((r.partition, r.offset) for r, _ in ref.dead_letters)
    assert sorted({(int(d.headers["streamseq.source.partition"]),
                    int(d.headers["streamseq.source.offset"])) for d in dead}) == want
    assert len(want) == len(bad)
    ends = next_offsets(inputs)
    assert committed_offsets(broker.bootstrap, f"g-{unique}", topics.sensor, range(2)) == ends
    assert_snapshots_match(tmp_path / "ckpt", topics, ref, ends)
    # host metrics: the killed worker's counts kept, no pid label, one build_info
    names = {(n, tuple(sorted(lab))) for n, lab, _ in samples}
    assert not any("pid" in labels for _, labels in names)
    assert sum(v for n, _, v in samples if n == consumed) >= len(stream)
    assert sum(1 for n, _, _ in samples if n == "streamseq_build_info") == 1
    log = svc.log_path.read_text()
    metrics_dir = re.search(r"worker metrics in (\S+)", log)
    assert metrics_dir and not Path(metrics_dir.group(1)).exists(), "temp dir removed"
    assert log.count("stopped: exit code 0") == 2


def _body(svc: ServiceProcess, path: str) -> str:
    try:
        with urllib.request.urlopen(svc.url(path), timeout=5) as r:
            return r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.read().decode()
    except OSError:
        return ""


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
