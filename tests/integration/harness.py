"""Helpers for integration tests that run ``streamseq run`` against a real broker.

The pieces, in the order a service test uses them:

- :class:`ServiceTopics` creates the input, prediction and dead-letter topics of one test.
- :func:`sensor_stream` makes a deterministic stream of sensor events (several keys) and
  :func:`produce` writes messages to a topic, keyed by event key so per-key order holds.
- :func:`service_args` builds the command-line flags of the service; :class:`ServiceProcess`
  runs ``python -m streamseq run`` with them as a subprocess, waits until it is ready and
  owns partitions, reads its ``/metrics`` and stops it with SIGTERM (clean) or SIGKILL.
- :class:`TopicReader` / :func:`read_topic` read every record of a topic back (manual
  assignment, from the beginning, headers included); :func:`wait_for_predictions` waits until
  the prediction topic holds a set of distinct ids.
- :func:`reference_run` replays the same input records through the service's own pipeline
  step in process, configured from the very same flags: the uninterrupted run that
  restarts, kills and rebalances are compared with.
- :func:`load_snapshots` reads the latest shard snapshots of a checkpoint directory and
  :func:`state_differences` compares two engine states (weights, optimizer, hidden table,
  per-key arrays and counters) with a tolerance.

Notes on the embedded broker (Tansu): a consumer group forms in 3-16 s, so the default flags
use short session and heartbeat timeouts; its reported end offsets are unreliable when
producers batch, so nothing here relies on them: records are counted as they are read.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "Message", "BackgroundProducer", "ServiceTopics", "ServiceProcess", "ServiceError",
    "TopicRecord", "TopicReader", "Reference", "sensor_stream", "produce", "service_args",
    "read_topic", "wait_for_predictions", "predictions_by_id", "committed_offsets",
    "reference_run", "reference_config", "load_snapshots", "state_differences",
    "comparable_state", "prediction_differences", "http_status", "wait_until",
]

Message = tuple[str, bytes, int]
"""``(key, payload, ts_ms)``: what the simulators yield and :func:`produce` sends."""

PROJECT_ROOT = Path(__file__).resolve().parents[2]


class ServiceError(AssertionError):
    """The service process did not do what a test waited for (with its log tail)."""


# ---------------------------------------------------------------------------- waiting
def wait_until(condition: Callable[[], Any], timeout: float, what: str,
               interval: float = 0.2, on_timeout: Callable[[], str] | None = None) -> Any:
    """Poll ``condition`` until it returns something truthy; return that value.

    Raises :class:`ServiceError` naming ``what`` (plus ``on_timeout()``'s text) after
    ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            extra = on_timeout() if on_timeout else ""
            raise ServiceError(f"timed out after {timeout:.0f}s waiting for {what}\n{extra}")
        time.sleep(interval)


def http_status(url: str, timeout: float = 2.0) -> int | None:
    """The HTTP status of a GET of ``url`` (``None`` when nothing answers)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return int(r.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except OSError:
        return None


# ---------------------------------------------------------------------------- topics
@dataclass(frozen=True)
class ServiceTopics:
    """The topics one service test uses (names made unique per test)."""

    sensor: str
    prediction: str
    dead_letter: str
    partitions: int = 2

    @classmethod
    def create(cls, broker: Any, unique: str, partitions: int = 2,
               prediction_partitions: int = 2) -> ServiceTopics:
        """Create ``sensors-<unique>`` (``partitions``), ``predictions-<unique>`` and
        ``dead-letters-<unique>`` (one partition) on ``broker`` (an ``EmbeddedBroker``)."""
        topics = cls(f"sensors-{unique}", f"predictions-{unique}", f"dead-letters-{unique}",
                     partitions)
        broker.create_topics({topics.sensor: partitions,
                              topics.prediction: prediction_partitions,
                              topics.dead_letter: 1})
        return topics


# ---------------------------------------------------------------------------- input
def sensor_stream(n_events: int, n_keys: int = 8, seed: int = 0,
                  values: Sequence[str] = ("temp",), start: str = "2024-01-01T00:00:00Z"
                  ) -> list[Message]:
    """The first ``n_events`` messages of a clean ``SensorSimulator`` stream.

    Deterministic: the same arguments give the same bytes. Keys are ``s-0000`` ...
    """
    from simulators.sensors import SensorSimulator

    steps = -(-n_events // n_keys) + 1
    sim = SensorSimulator(n_sensors=n_keys, values=tuple(values), seed=seed, steps=steps,
                          start=start)
    out: list[Message] = []
    for msg in sim.messages():
        out.append(msg)
        if len(out) == n_events:
            break
    return out


def produce(bootstrap: str, topic: str, messages: Iterable[tuple[str | None, bytes | None, int]],
            *, rate: float | None = None, linger_ms: int = 5, timeout: float = 120.0) -> int:
    """Send ``(key, payload, ts_ms)`` messages to ``topic``, keyed by ``key`` (UTF-8).

    ``rate`` paces the sends (messages per second; as fast as possible when ``None``). A
    ``None`` payload is a tombstone. The broker timestamp is left to the producer (now), so
    retention never drops the records and latency can be measured from it. Waits for every
    acknowledgement (the producer retries through a broker outage) and returns the number
    of messages acknowledged; raises if any was not.
    """
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=linger_ms,
                             batch_size=256 * 1024, client_id="streamseq-test-producer",
                             delivery_timeout_ms=int(timeout * 1000))
    futures = []
    t0 = time.monotonic()
    try:
        for i, (key, payload, _ts) in enumerate(messages):
            if rate:
                ahead = t0 + i / rate - time.monotonic()
                if ahead > 0:
                    time.sleep(ahead)
            futures.append(producer.send(topic, value=payload,
                                         key=None if key is None else key.encode()))
        producer.flush(timeout=timeout)
    finally:
        producer.close(timeout=timeout)
    failed = [f for f in futures if not f.succeeded()]
    if failed:
        raise AssertionError(f"{len(failed)} of {len(futures)} messages to {topic} were not "
                             f"acknowledged: {failed[0].exception!r}")
    return len(futures)


class BackgroundProducer(threading.Thread):
    """:func:`produce` in a thread, so a test can stop, kill or pause things meanwhile.

    Examples
    --------
    ::

        feeder = BackgroundProducer(broker.bootstrap, topic, messages, rate=500).start()
        ...  # SIGTERM the service while events still arrive
        assert feeder.result() == len(messages)
    """

    def __init__(self, bootstrap: str, topic: str, messages: Sequence[Message], *,
                 rate: float | None = None) -> None:
        super().__init__(name=f"produce-{topic}", daemon=True)
        self.args = (bootstrap, topic, list(messages))
        self.rate = rate
        self.count: int | None = None
        self.error: BaseException | None = None

    def start(self) -> BackgroundProducer:  # type: ignore[override]
        super().start()
        return self

    def run(self) -> None:
        try:
            self.count = produce(*self.args, rate=self.rate)
        except BaseException as exc:  # noqa: BLE001 - handed to result()
            self.error = exc

    def result(self, timeout: float = 180.0) -> int:
        """Wait for the thread; the number acknowledged (re-raises its error)."""
        self.join(timeout)
        if self.is_alive():
            raise ServiceError(f"producing to {self.args[1]} still running after "
                               f"{timeout:.0f}s")
        if self.error is not None:
            raise self.error
        assert self.count is not None
        return self.count


# ---------------------------------------------------------------------------- reading
@dataclass(frozen=True)
class TopicRecord:
    """One record read back from a topic."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: dict[str, bytes]
    timestamp: int

    def json(self) -> Any:
        assert self.value is not None, "record has no value"
        return json.loads(self.value)


class TopicReader:
    """Reads every record of a topic from the beginning, incrementally.

    Partitions are assigned by hand (no group, nothing committed). Keep one reader open
    while waiting for output to accumulate, instead of re-reading the topic each time.

    Examples
    --------
    ::

        with TopicReader(broker.bootstrap, topics.prediction) as reader:
            records = reader.read_until(lambda recs: len(recs) >= 100, timeout=60)
    """

    def __init__(self, bootstrap: str, topic: str, timeout: float = 30.0) -> None:
        from kafka import KafkaConsumer, TopicPartition

        self.topic = topic
        self.records: list[TopicRecord] = []
        self._consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None,
                                       auto_offset_reset="earliest", enable_auto_commit=False,
                                       client_id="streamseq-test-reader")
        parts = wait_until(lambda: self._consumer.partitions_for_topic(topic), timeout,
                           f"metadata of topic {topic}")
        self.partitions = sorted(parts)
        tps = [TopicPartition(topic, p) for p in self.partitions]
        self._consumer.assign(tps)
        self._consumer.seek_to_beginning(*tps)

    def poll(self, timeout_ms: int = 500) -> list[TopicRecord]:
        """Records that arrived since the last call (appended to :attr:`records`)."""
        new: list[TopicRecord] = []
        for recs in self._consumer.poll(timeout_ms=timeout_ms).values():
            for r in recs:
                headers = {k: bytes(v) for k, v in (r.headers or [])}
                new.append(TopicRecord(r.topic, r.partition, r.offset, r.key, r.value,
                                       headers, r.timestamp))
        self.records.extend(new)
        return new

    def read_until(self, condition: Callable[[list[TopicRecord]], bool], timeout: float,
                   what: str = "records") -> list[TopicRecord]:
        """Poll until ``condition(self.records)`` holds; raise :class:`ServiceError` after
        ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while not condition(self.records):
            if time.monotonic() >= deadline:
                raise ServiceError(f"{self.topic}: timed out after {timeout:.0f}s waiting for "
                                   f"{what} ({len(self.records)} records read)")
            self.poll()
        return self.records

    def drain(self, quiet_ms: int = 500) -> list[TopicRecord]:
        """Read until a poll of ``quiet_ms`` brings nothing new (catches surplus records)."""
        while self.poll(timeout_ms=quiet_ms):
            pass
        return self.records

    def close(self) -> None:
        self._consumer.close()

    def __enter__(self) -> TopicReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_topic(bootstrap: str, topic: str, expected: int, timeout: float = 30.0,
               quiet_ms: int = 300) -> list[TopicRecord]:
    """Every record of ``topic``: reads until ``expected`` records (or ``timeout``), then
    until a quiet poll, so records beyond ``expected`` show up too. Sorted by
    (partition, offset). Returns what was read even when fewer than ``expected`` arrived."""
    with TopicReader(bootstrap, topic) as reader:
        deadline = time.monotonic() + timeout
        while len(reader.records) < expected and time.monotonic() < deadline:
            reader.poll()
        reader.drain(quiet_ms)
        return sorted(reader.records, key=lambda r: (r.partition, r.offset))


def predictions_by_id(records: Iterable[TopicRecord]) -> dict[str, list[dict[str, Any]]]:
    """Decoded prediction records grouped by id (a list: an id may repeat after a restart)."""
    out: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        rec = r.json()
        out[rec["id"]].append(rec)
    return dict(out)


def wait_for_predictions(reader: TopicReader, ids: Iterable[str], timeout: float,
                         on_timeout: Callable[[], str] | None = None) -> list[TopicRecord]:
    """Read ``reader`` (a prediction topic) until every id in ``ids`` has appeared.

    ``on_timeout()`` may add text to the error (e.g. :meth:`ServiceProcess.log_tail`).
    """
    want = set(ids)
    seen: set[str] = set()
    counted = 0

    def done(records: list[TopicRecord]) -> bool:
        nonlocal counted
        seen.update(json.loads(r.value or b"{}").get("id") for r in records[counted:])
        counted = len(records)
        return want <= seen

    try:
        return reader.read_until(done, timeout, f"{len(want)} prediction ids")
    except ServiceError as exc:
        missing = sorted(want - seen)
        extra = on_timeout() if on_timeout else ""
        raise ServiceError(f"{exc}; {len(missing)} ids missing, e.g. {missing[:5]}\n"
                           f"{extra}") from None


def committed_offsets(bootstrap: str, group: str, topic: str,
                      partitions: Iterable[int]) -> dict[int, int | None]:
    """The offsets ``group`` has committed for ``topic`` (``None``: nothing committed)."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group,
                             enable_auto_commit=False, client_id="streamseq-test-offsets")
    try:
        return {p: consumer.committed(TopicPartition(topic, p)) for p in partitions}
    finally:
        consumer.close()


# ---------------------------------------------------------------------------- the service
def service_args(bootstrap: str, topics: ServiceTopics, group: str, checkpoint_dir: str | Path,
                 *, checkpoint_every_events: int = 500, checkpoint_every_seconds: float = 30.0,
                 hidden: int = 16, extra: Sequence[str] = ()) -> list[str]:
    """Flags of ``streamseq run`` for a test (everything but ``--metrics-port``).

    Short session and heartbeat timeouts make the group form fast on the embedded broker;
    ``extra`` appends further flags (engine settings, ``--max-poll-records`` ...).
    """
    return ["--bootstrap", bootstrap,
            "--sensor-topic", topics.sensor,
            "--prediction-topic", topics.prediction,
            "--dead-letter-topic", topics.dead_letter,
            "--group", group,
            "--checkpoint-dir", str(checkpoint_dir),
            "--checkpoint-every-events", str(checkpoint_every_events),
            "--checkpoint-every-seconds", str(checkpoint_every_seconds),
            "--session-timeout-ms", "6000", "--heartbeat-interval-ms", "1000",
            "--hidden", str(hidden), *extra]


def _free_port() -> int:
    from streamseq.broker import free_port

    return free_port()


class ServiceProcess:
    """``python -m streamseq run <args>`` as a child process.

    Parameters
    ----------
    args
        Flags from :func:`service_args` (``--metrics-port`` is added here).
    log_path
        File that receives the service's stdout and stderr.
    metrics_port
        Port of ``/metrics``, ``/healthz`` and ``/readyz``; a free one when ``None``.
    log_level
        ``streamseq --log-level``.
    python_args
        Interpreter arguments before ``-m streamseq``, e.g. ``("-m", "cProfile", "-o",
        "service.prof")`` to profile the service.
    wrapper
        A command the interpreter runs under, e.g. ``("py-spy", "record", "-o", "p.txt",
        "--")``; signals then go to the wrapper's child (the service) itself.

    Examples
    --------
    ::

        with ServiceProcess(service_args(...), tmp_path / "a.log").start() as svc:
            svc.wait_ready(shards=2)
            svc.wait_consumed(1000)
            assert svc.terminate() == 0
    """

    def __init__(self, args: Sequence[str], log_path: str | Path, metrics_port: int | None = None,
                 log_level: str = "INFO", python_args: Sequence[str] = (),
                 wrapper: Sequence[str] = ()) -> None:
        self.port = metrics_port or _free_port()
        self.log_path = Path(log_path)
        self.wrapped = bool(wrapper)
        self.cmd = [*wrapper, sys.executable, *python_args, "-m", "streamseq", "--log-level",
                    log_level, "run", *args, "--metrics-host", "127.0.0.1", "--metrics-port",
                    str(self.port)]
        self.proc: subprocess.Popen[bytes] | None = None

    # -- lifecycle
    def start(self) -> ServiceProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMSEQ_")}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PROJECT_ROOT),
                                                          env.get("PYTHONPATH")]))
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen(self.cmd, stdout=out, stderr=subprocess.STDOUT,
                                         env=env, cwd=PROJECT_ROOT, start_new_session=True)
        return self

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def service_pid(self) -> int:
        """Pid of the service itself (the wrapper's child when there is a wrapper)."""
        assert self.proc is not None
        if not self.wrapped:
            return self.proc.pid
        task = Path(f"/proc/{self.proc.pid}/task")
        for tid in task.iterdir():
            kids = (tid / "children").read_text().split()
            if kids:
                return int(kids[0])
        raise ServiceError("the wrapper has no child process")

    def terminate(self, timeout: float = 60.0) -> int:
        """SIGTERM (finish the batch, checkpoint, commit, exit); returns the exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            os.kill(self.service_pid, signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise ServiceError(f"no exit {timeout:.0f}s after SIGTERM\n"
                               f"{self.log_tail()}") from None

    def kill(self) -> int:
        """SIGKILL: no final checkpoint, no commit, no goodbye to the group."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.kill()
        return self.proc.wait(30)

    def __enter__(self) -> ServiceProcess:
        return self if self.proc is not None else self.start()

    def __exit__(self, *exc: object) -> None:
        if self.running:
            self.kill()

    # -- observation
    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def status(self, path: str) -> int | None:
        """HTTP status of ``path`` (``/readyz``, ``/healthz``), ``None`` when down."""
        return http_status(self.url(path))

    def log_tail(self, lines: int = 40) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return f"--- {self.log_path.name} ---\n" + "\n".join(text.splitlines()[-lines:])

    def metrics_text(self) -> str:
        with urllib.request.urlopen(self.url("/metrics"), timeout=5) as r:
            return r.read().decode()

    def samples(self) -> list[tuple[str, dict[str, str], float]]:
        """Every sample of ``/metrics`` as ``(name, labels, value)``; empty when down."""
        from prometheus_client.parser import text_string_to_metric_families

        try:
            text = self.metrics_text()
        except OSError:
            return []
        return [(s.name, dict(s.labels), float(s.value))
                for fam in text_string_to_metric_families(text) for s in fam.samples]

    def metric(self, name: str, **labels: str) -> float:
        """Sum of the samples named ``name`` whose labels include ``labels`` (0 if none)."""
        return sum(v for n, lab, v in self.samples()
                   if n == name and all(lab.get(k) == x for k, x in labels.items()))

    def _check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise ServiceError(f"streamseq run exited with {self.proc.returncode}\n"
                               f"{self.log_tail()}")

    def wait_until(self, condition: Callable[[], Any], timeout: float, what: str) -> Any:
        """Like :func:`wait_until`, failing at once if the process died meanwhile."""
        def check() -> Any:
            self._check_alive()
            return condition()

        return wait_until(check, timeout, what, on_timeout=self.log_tail)

    def wait_ready(self, timeout: float = 90.0, shards: int = 1) -> None:
        """Until ``/readyz`` is 200 and at least ``shards`` partitions are assigned."""
        self.wait_until(lambda: self.status("/readyz") == 200, timeout, "/readyz 200")
        self.wait_until(lambda: self.metric("streamseq_shards_assigned") >= shards, timeout,
                        f"{shards} partitions assigned")

    def wait_consumed(self, n: int, timeout: float = 120.0) -> float:
        """Until this process has consumed at least ``n`` input records (its own counter:
        it restarts from zero with every process)."""
        return self.wait_until(
            lambda: (v := self.metric("streamseq_events_consumed_total")) >= n and v,
            timeout, f"{n} events consumed")


# ---------------------------------------------------------------------------- reference
def reference_config(args: Sequence[str]) -> Any:
    """The :class:`~streamseq.service.config.ServiceConfig` that ``streamseq run <args>``
    would use, built by the service's own flag parser (``STREAMSEQ_*`` variables ignored,
    as :class:`ServiceProcess` drops them too)."""
    from streamseq.service.commands import add_service_args, config_from_args

    parser = argparse.ArgumentParser()
    add_service_args(parser)
    a = parser.parse_args(list(args))
    saved = {k: os.environ.pop(k) for k in list(os.environ) if k.startswith("STREAMSEQ_")}
    try:
        return config_from_args(a)
    finally:
        os.environ.update(saved)


@dataclass
class Reference:
    """What an uninterrupted service run over the same records must produce.

    Attributes
    ----------
    predictions
        Prediction records by id.
    dead_letters
        ``(record, reason)`` of the input records that must be dead-lettered.
    anomalies
        The anomaly records (``--anomaly-topic``) in partition and offset order.
    engines
        The shard engine (:class:`~streamseq.pipeline.ShardEngine`) of each input partition
        after all its records.
    """

    predictions: dict[str, dict[str, Any]] = field(default_factory=dict)
    dead_letters: list[tuple[TopicRecord, str]] = field(default_factory=list)
    engines: dict[int, Any] = field(default_factory=dict)
    anomalies: list[dict[str, Any]] = field(default_factory=list)

    def state(self, partition: int) -> dict[str, Any]:
        return self.engines[partition].state_dict()


def reference_run(records: Iterable[TopicRecord], args: Sequence[str],
                  chunk: int | None = None) -> Reference:
    """Replay input ``records`` (as read back from the input topic) through in-process
    shards, one per partition in offset order, with the service's own pipeline step
    (:func:`streamseq.pipeline.apply`) configured from the very same flags.

    ``chunk`` feeds each shard that many records per call (all at once by default): the
    engine's results do not depend on chunking, so neither may the comparison.
    """
    from streamseq.pipeline import apply
    from streamseq.service.shards import ShardFactory

    cfg = reference_config(args)
    factory = ShardFactory(cfg)
    ref = Reference()
    by_partition: dict[tuple[str, int], list[TopicRecord]] = defaultdict(list)
    for r in records:
        by_partition[(r.topic, r.partition)].append(r)
    for (topic, partition), recs in sorted(by_partition.items()):
        recs.sort(key=lambda r: r.offset)
        shard = factory.engine(cfg.kind_of(topic))
        decoder = factory.decoders[topic]
        step = chunk or max(1, len(recs))
        for lo in range(0, len(recs), step):
            out = apply(recs[lo:lo + step], decoder, shard)
            ref.dead_letters.extend((d.record, d.error.reason) for d in out.dead_letters)
            for p in out.predictions:
                rec = json.loads(p.value)
                ref.predictions[rec["id"]] = rec
            ref.anomalies.extend(json.loads(a.value) for a in out.anomalies)
        ref.engines[partition] = shard
    ref.dead_letters.sort(key=lambda x: (x[0].partition, x[0].offset))
    return ref


# ---------------------------------------------------------------------------- comparing
def load_snapshots(directory: str | Path) -> dict[str, dict[str, Any]]:
    """The newest readable snapshot of every shard in a checkpoint directory, by name
    (``<topic>-<partition>``)."""
    from streamseq.state.checkpoint import LocalCheckpointStore

    store = LocalCheckpointStore(directory)
    snaps = {name: store.load(name) for name in store.names()}
    return {k: v for k, v in snaps.items() if v is not None}


def _close(a: float, b: float, rtol: float, atol: float) -> bool:
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return math.isclose(a, b, rel_tol=rtol, abs_tol=atol)


def _drift_summary(blob: torch.Tensor) -> list[float]:
    """An ADWIN detector's saved bytes as comparable numbers (width, total, variance,
    detections): the bytes themselves differ with the last bits of the errors fed in."""
    from river.drift import ADWIN

    det = ADWIN()
    det._helper.__setstate__(bytes(blob.numpy().tobytes()))
    return [float(det.width), float(det.total), float(det.variance), float(det.n_detections)]


def comparable_state(state: Any) -> Any:
    """``state`` with each drift monitor's detector bytes (``{"blobs": [...], "clock": ...}``)
    replaced by their numbers, so states can be compared with a tolerance."""
    if isinstance(state, Mapping):
        if "blobs" in state and "clock" in state:
            return {**state, "blobs": [_drift_summary(b) for b in state["blobs"]]}
        return {k: comparable_state(v) for k, v in state.items()}
    return state


def state_differences(a: Any, b: Any, rtol: float = 1e-5, atol: float = 1e-6,
                      path: str = "", limit: int = 20) -> list[str]:
    """Where two state dicts differ: paths with a short description (empty: equal).

    Tensors and arrays must have equal shapes and dtypes and be close (NaNs equal);
    floats are compared with ``rtol``/``atol``, everything else exactly. Works on
    :meth:`Engine.state_dict` results and on whole shard snapshots (drift detectors are
    compared through :func:`comparable_state`).
    """
    out: list[str] = []
    a, b = comparable_state(a), comparable_state(b)

    def walk(x: Any, y: Any, p: str) -> None:
        if len(out) >= limit:
            return
        if isinstance(x, torch.Tensor) or isinstance(y, torch.Tensor):
            x = torch.as_tensor(x)
            y = torch.as_tensor(y)
            if x.shape != y.shape or x.dtype != y.dtype:
                out.append(f"{p}: shape/dtype {tuple(x.shape)} {x.dtype} != "
                           f"{tuple(y.shape)} {y.dtype}")
            elif x.is_floating_point():
                if not torch.allclose(x, y, rtol=rtol, atol=atol, equal_nan=True):
                    d = (x - y).abs().nan_to_num(0.0)
                    out.append(f"{p}: max abs diff {float(d.max()):.3g}")
            elif not torch.equal(x, y):
                out.append(f"{p}: {int((x != y).sum())} elements differ")
        elif isinstance(x, np.ndarray) or isinstance(y, np.ndarray):
            walk(torch.from_numpy(np.asarray(x)), torch.from_numpy(np.asarray(y)), p)
        elif isinstance(x, Mapping) and isinstance(y, Mapping):
            if set(x) != set(y):
                out.append(f"{p}: keys {sorted(map(str, set(x) ^ set(y)))[:5]} differ")
            for k in x:
                if k in y:
                    walk(x[k], y[k], f"{p}.{k}" if p else str(k))
        elif isinstance(x, (list, tuple)) and isinstance(y, (list, tuple)):
            if len(x) != len(y):
                out.append(f"{p}: length {len(x)} != {len(y)}")
            else:
                for i, (u, v) in enumerate(zip(x, y, strict=True)):
                    walk(u, v, f"{p}[{i}]")
        elif isinstance(x, float) and isinstance(y, (int, float)) or (
                isinstance(y, float) and isinstance(x, (int, float))):
            if not _close(float(x), float(y), rtol, atol):
                out.append(f"{p}: {x!r} != {y!r}")
        elif x != y:
            out.append(f"{p}: {x!r} != {y!r}")

    walk(a, b, path)
    return out


def prediction_differences(got: dict[str, Any], want: dict[str, Any], rtol: float = 1e-5,
                           atol: float = 1e-6, ignore: Iterable[str] = ()) -> list[str]:
    """Where a published prediction record differs from the expected one (empty: equal);
    ``yhat``, ``lo`` and ``hi`` are compared with a tolerance, every other field (but
    ``ignore``) exactly."""
    out = []
    close = ("yhat", "lo", "hi")
    skip = {*close, *ignore}
    for k in sorted(set(got) | set(want)):
        if k in skip:
            continue
        if got.get(k) != want.get(k):
            out.append(f"{k}: {got.get(k)!r} != {want.get(k)!r}")
    for field_name in close:
        if field_name in ignore:
            continue
        gy, wy = got.get(field_name) or {}, want.get(field_name) or {}
        if set(gy) != set(wy):
            out.append(f"{field_name} names {sorted(gy)} != {sorted(wy)}")
        for name in set(gy) & set(wy):
            g = np.array(gy[name], dtype=float)  # None -> nan
            w = np.array(wy[name], dtype=float)
            if g.shape != w.shape or not np.allclose(g, w, rtol=rtol, atol=atol,
                                                     equal_nan=True):
                out.append(f"{field_name}[{name}]: {gy[name]} != {wy[name]}")
    return out
