"""``streamseq run --workers N``: N consumer processes of one group under one supervisor.

Each worker is ``streamseq run`` itself (the same flags, environment and configuration file,
plus ``--workers 1``), a consumer of the same group: Kafka spreads the partitions over the
workers like over any other consumers, and a shard's state moves between them through the
checkpoint store (snapshots are per partition, and a partition has one owner at a time).
The supervisor only looks after them:

- it forwards SIGTERM/SIGINT to every worker as SIGTERM (each finishes its batch, flushes,
  checkpoints and commits) and exits 0 when all of them stopped cleanly; a second Ctrl+C
  reaches the workers as SIGINT, which aborts them;
- it starts a worker that crashed again after an exponential backoff, and gives up (stops the
  others, exit 1) when one crashes more than :attr:`RestartPolicy.max_crashes` times within
  :attr:`RestartPolicy.window` seconds; a worker that exits with a usage error (2) or a
  refused checkpoint (3) cannot succeed on a retry: the supervisor stops and exits with its
  code;
- it serves the host's ``/metrics``, ``/healthz`` and ``/readyz`` on the metrics port.
  Workers write their metrics to prometheus_client's multiprocess files in a fresh
  temporary directory (``PROMETHEUS_MULTIPROC_DIR``, removed at exit) and the supervisor
  serves their merge (:class:`HostCollector`; how each gauge combines is in
  :mod:`streamseq.metrics`). Each worker answers its own health checks on a loopback port
  it writes to a file; the host is live while every running worker is, and ready when every
  worker runs and is ready.

Workers run in their own session, so a Ctrl+C in a terminal reaches the supervisor only, and
each stops by itself (cleanly) if the supervisor disappears.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client import CollectorRegistry, PlatformCollector
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.mmap_dict import MmapedDict
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.process_collector import ProcessCollector

from streamseq.service.app import serve_health
from streamseq.service.config import ServiceConfig

__all__ = ["Supervisor", "RestartPolicy", "HostCollector", "worker_count", "worker_command",
           "watch_parent"]

log = logging.getLogger(__name__)

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_REFUSED = 0, 1, 2, 3
LAST_CHECKPOINT = "streamseq_last_checkpoint_timestamp_seconds"
CHECKPOINT_AGE = "streamseq_checkpoint_age_seconds"
SHARDS = "streamseq_shards_assigned"


def worker_count(spec: str) -> int:
    """``"auto"``: the cores this process may run on (its CPU affinity), else the number.

    In a container limited by a CPU quota rather than by cpusets, the affinity still names
    every core of the node: give a number there.

    >>> worker_count("3")
    3
    >>> worker_count("auto") >= 1
    True
    """
    if spec == "auto":
        try:
            return len(os.sched_getaffinity(0))
        except AttributeError:  # not Linux
            return os.cpu_count() or 1
    return int(spec)


def worker_command(argv: Sequence[str], index: int, port_file: Path) -> list[str]:
    """The command of worker ``index``: ``streamseq <argv>`` (the supervisor's own arguments,
    global options and ``run`` included) as one process that answers its health checks on a
    loopback port of its choosing, written to ``port_file``.

    >>> worker_command(["--log-level", "INFO", "run", "--workers", "2"], 1, Path("w1.port"))[3:]
    ['--log-level', 'INFO', 'run', '--workers', '2', '--workers', '1', '--metrics-host', \
'127.0.0.1', '--metrics-port', '0', '--worker-index', '1', '--worker-port-file', 'w1.port']
    """
    return [sys.executable, "-m", "streamseq", *argv, "--workers", "1",
            "--metrics-host", "127.0.0.1", "--metrics-port", "0",
            "--worker-index", str(index), "--worker-port-file", str(port_file)]


def watch_parent(stop: Callable[[], None], every: float = 1.0) -> threading.Thread:
    """A daemon thread that calls ``stop()`` once this process's parent (the supervisor) is
    gone, so that a worker never outlives it."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(every)
        log.warning("the supervisor (pid %d) is gone: stopping", parent)
        stop()

    thread = threading.Thread(target=watch, name="streamseq-parent-watch", daemon=True)
    thread.start()
    return thread


@dataclass(frozen=True)
class RestartPolicy:
    """When a crashed worker starts again, and when the supervisor gives up on it.

    Only crashes within the last ``window`` seconds count: the ``n``-th of them waits
    ``first_backoff * 2**(n-1)`` seconds (at most ``max_backoff``) before the restart, and
    one more than ``max_crashes`` ends the run.

    Examples
    --------
    >>> p = RestartPolicy(first_backoff=1.0, max_backoff=8.0, max_crashes=5, window=60.0)
    >>> [p.backoff(n) for n in range(1, 7)]
    [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    >>> p.recent([0.0, 30.0, 70.0, 80.0], now=100.0)
    2
    >>> p.gives_up(5), p.gives_up(6)
    (False, True)
    """

    first_backoff: float = 1.0
    max_backoff: float = 30.0
    max_crashes: int = 5
    window: float = 120.0

    def recent(self, crashes: Sequence[float], now: float) -> int:
        """How many of the crash times ``crashes`` (monotonic) fall within the window."""
        return sum(1 for t in crashes if now - t <= self.window)

    def backoff(self, recent: int) -> float:
        return min(self.max_backoff, self.first_backoff * 2.0 ** max(0, recent - 1))

    def gives_up(self, recent: int) -> bool:
        return recent > self.max_crashes


@dataclass
class Worker:
    """One worker slot: its current process (``None`` while stopped or waiting to restart)."""

    index: int
    port_file: Path
    proc: subprocess.Popen[bytes] | None = None
    crashes: list[float] = field(default_factory=list)
    restart_at: float | None = None
    exit_code: int | None = None

    @property
    def running(self) -> bool:
        return self.proc is not None

    def port(self) -> int | None:
        """The worker's health port, once it serves."""
        try:
            return int(self.port_file.read_text())
        except (OSError, ValueError):
            return None


def describe_exit(code: int) -> str:
    """``-9`` -> ``"killed by SIGKILL"``, ``1`` -> ``"exit code 1"``.

    >>> describe_exit(-9), describe_exit(1)
    ('killed by SIGKILL', 'exit code 1')
    """
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def _ask(port: int, path: str) -> tuple[bool, str]:
    """A worker's answer to ``path`` (``/healthz``, ``/readyz``) as ``(ok, reason)``."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2.0) as r:
            return True, r.read().decode(errors="replace").strip()
    except urllib.error.HTTPError as exc:
        return False, exc.read().decode(errors="replace").strip() or f"HTTP {exc.code}"
    except OSError as exc:
        return False, f"not answering ({exc})"


class HostCollector:
    """The host's metrics: the workers' multiprocess files merged, and what those files
    cannot hold, computed at scrape time.

    - ``streamseq_last_checkpoint_timestamp_seconds``: the oldest last checkpoint among the
      live workers that own partitions (all live workers when none does, the supervisor's
      start when none runs), and ``streamseq_checkpoint_age_seconds`` from it: a worker
      without partitions has nothing to checkpoint, as an idle replica.
    - ``streamseq_build_info`` (info metrics have no multiprocess form).
    - ``process_*``: the supervisor and its live workers together; the CPU time also counts
      the workers that have exited, so that it never goes back.

    Parameters
    ----------
    directory
        The workers' ``PROMETHEUS_MULTIPROC_DIR``.
    pids
        The pids of the running workers.
    build
        Labels of ``streamseq_build_info`` (version, cell, hidden).
    """

    def __init__(self, directory: Path, pids: Callable[[], list[int]],
                 build: dict[str, str]) -> None:
        self.directory = directory
        self.pids = pids
        self.build = build
        self.started = time.time()

    def collect(self) -> Iterator[Metric]:
        files = glob.glob(str(self.directory / "*.db"))
        helps = {}
        for family in MultiProcessCollector.merge(files, accumulate=True):
            if family.name in (LAST_CHECKPOINT, CHECKPOINT_AGE):
                helps[family.name] = family.documentation
                continue
            yield family
        last = self.last_checkpoint()
        yield GaugeMetricFamily(LAST_CHECKPOINT, helps.get(LAST_CHECKPOINT, LAST_CHECKPOINT),
                                value=last)
        yield GaugeMetricFamily(CHECKPOINT_AGE, helps.get(CHECKPOINT_AGE, CHECKPOINT_AGE),
                                value=time.time() - last)
        yield InfoMetricFamily("streamseq_build", "Version and model architecture of this "
                               "process.", value=self.build)
        yield from self.process_metrics()

    def last_checkpoint(self) -> float:
        """See the class docstring."""
        shards: dict[str, float] = {}
        last: dict[str, float] = {}
        for path in glob.glob(str(self.directory / "gauge_live*_*.db")):
            pid = Path(path).stem.rsplit("_", 1)[1]
            try:
                values = MmapedDict.read_all_values_from_file(path)
            except FileNotFoundError:  # the worker was just marked dead
                continue
            for key, value, _timestamp, _pos in values:
                name = json.loads(key)[0]
                if name == SHARDS:
                    shards[pid] = value
                elif name == LAST_CHECKPOINT:
                    last[pid] = value
        owning = [t for pid, t in last.items() if shards.get(pid, 0) > 0]
        candidates = owning or list(last.values())
        return min(candidates) if candidates else self.started

    def process_metrics(self) -> Iterator[Metric]:
        own = {s.name: s.value for f in ProcessCollector(registry=None).collect()
               for s in f.samples}
        total: dict[str, float] = defaultdict(float, own)
        for pid in self.pids():
            for family in _process_collector(pid).collect():
                for s in family.samples:
                    total[s.name] += s.value
        reaped = resource.getrusage(resource.RUSAGE_CHILDREN)
        total["process_cpu_seconds_total"] += reaped.ru_utime + reaped.ru_stime
        yield CounterMetricFamily("process_cpu_seconds", "Total user and system CPU time of "
                                  "the supervisor and its workers in seconds.",
                                  value=total["process_cpu_seconds_total"])
        for name, what in (("resident_memory_bytes", "Resident memory size"),
                           ("virtual_memory_bytes", "Virtual memory size"),
                           ("open_fds", "Open file descriptors")):
            if f"process_{name}" in own:
                yield GaugeMetricFamily(f"process_{name}", f"{what} of the supervisor and its "
                                        "running workers.", value=total[f"process_{name}"])
        for name, what in (("max_fds", "Maximum number of open file descriptors"),
                           ("start_time_seconds", "Start time of the supervisor since unix "
                                                  "epoch in seconds")):
            if f"process_{name}" in own:
                yield GaugeMetricFamily(f"process_{name}", f"{what}.",
                                        value=own[f"process_{name}"])


class Supervisor:
    """Runs ``count`` workers until :meth:`stop`; ``run()`` returns the exit code.

    Parameters
    ----------
    config
        The service configuration (metrics host and port, build labels).
    argv
        The arguments of ``streamseq`` that started the supervisor (``run`` included); each
        worker gets them (:func:`worker_command`).
    count
        Number of workers.
    policy
        Restarts of crashed workers.
    command
        Builds a worker's command from ``(index, port file)`` (default: :func:`worker_command`
        of ``argv``).
    """

    def __init__(self, config: ServiceConfig, argv: Sequence[str], count: int,
                 policy: RestartPolicy | None = None,
                 command: Callable[[int, Path], list[str]] | None = None,
                 every: float = 0.2) -> None:
        self.config = config
        self.count = count
        self.policy = policy or RestartPolicy()
        self.command = command or (lambda i, port_file: worker_command(argv, i, port_file))
        self.every = every
        self.workers: list[Worker] = []
        self._stop = threading.Event()
        self._wake = threading.Event()  # set with _stop: the loop forwards the signal at once
        self._beat = time.monotonic()
        self._env: dict[str, str] = {}

    def stop(self) -> None:
        """Ask every worker to finish its batch, checkpoint, commit and exit."""
        self._stop.set()
        self._wake.set()

    # ------------------------------------------------------------------ run
    def run(self) -> int:
        cfg = self.config
        with ExitStack() as stack:
            root = Path(stack.enter_context(tempfile.TemporaryDirectory(
                prefix="streamseq-workers-")))
            metrics_dir = root / "metrics"
            metrics_dir.mkdir()
            self._env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}
            self.workers = [Worker(i, root / f"worker-{i}.port") for i in range(1, self.count + 1)]
            registry = CollectorRegistry()
            PlatformCollector(registry=registry)
            registry.register(HostCollector(metrics_dir, self._pids, {
                "version": _version(), "cell": cfg.engine.model.cell,
                "hidden": str(cfg.engine.model.hidden)}))
            http = serve_health(cfg, registry, self.alive, self.ready)
            stack.callback(http.stop)
            stack.callback(self._reap, metrics_dir)
            log.info("starting %d workers of consumer group %r (worker metrics in %s)",
                     self.count, cfg.group, metrics_dir)
            for w in self.workers:
                self._start(w)
            try:
                return self._supervise(metrics_dir)
            except KeyboardInterrupt:  # a second Ctrl+C: the workers abort too
                self._signal_all(signal.SIGINT)
                raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _supervise(self, metrics_dir: Path) -> int:
        failure: int | None = None
        signalled = False
        while True:
            self._beat = time.monotonic()
            if (self._stop.is_set() or failure is not None) and not signalled:
                log.info("stopping %d workers: each finishes its batch, checkpoints and "
                         "commits", sum(w.running for w in self.workers))
                self._signal_all(signal.SIGTERM)
                signalled = True
            for w in self.workers:
                code = w.proc.poll() if w.proc is not None else None
                if w.proc is not None and code is not None:
                    pid = w.proc.pid
                    w.proc = None
                    mark_process_dead(pid, str(metrics_dir))
                    w.port_file.unlink(missing_ok=True)
                    if signalled:
                        w.exit_code = code
                        log.info("worker %d (pid %d) stopped: %s", w.index, pid,
                                 describe_exit(code))
                    else:
                        failure = self._crashed(w, pid, code)
                elif (w.restart_at is not None and not signalled and failure is None
                      and time.monotonic() >= w.restart_at):
                    self._start(w)
            if signalled and not any(w.running for w in self.workers):
                break
            self._wake.wait(self.every)
            self._wake.clear()
        if failure is not None:
            return failure
        unclean = [w for w in self.workers if w.exit_code not in (None, EXIT_OK)]
        for w in unclean:
            log.error("worker %d did not stop cleanly: %s", w.index,
                      describe_exit(w.exit_code or 0))
        return EXIT_FAILED if unclean else EXIT_OK

    def _crashed(self, w: Worker, pid: int, code: int) -> int | None:
        """A worker exited on its own: schedule its restart, or the code to exit with."""
        now = time.monotonic()
        w.crashes.append(now)
        recent = self.policy.recent(w.crashes, now)
        what = describe_exit(code)
        if code in (EXIT_USAGE, EXIT_REFUSED):
            log.critical("worker %d (pid %d) exited with %s, which a restart cannot mend: "
                         "stopping the other workers", w.index, pid, what)
            return code
        if self.policy.gives_up(recent):
            log.critical("worker %d (pid %d) crashed %d times in %.0f s (last: %s): giving "
                         "up, stopping the other workers", w.index, pid, recent,
                         self.policy.window, what)
            return EXIT_FAILED
        delay = self.policy.backoff(recent)
        log.error("worker %d (pid %d) crashed (%s); restarting it in %.1f s (crash %d of at "
                  "most %d in %.0f s)", w.index, pid, what, delay, recent,
                  self.policy.max_crashes, self.policy.window)
        w.restart_at = now + delay
        return None

    def _start(self, w: Worker) -> None:
        w.restart_at = None
        w.port_file.unlink(missing_ok=True)
        w.proc = subprocess.Popen(self.command(w.index, w.port_file), env=self._env,
                                  start_new_session=True)
        log.info("worker %d started (pid %d)", w.index, w.proc.pid)

    def _signal_all(self, signum: int) -> None:
        for w in self.workers:
            if w.proc is not None and w.proc.poll() is None:
                w.proc.send_signal(signum)

    def _reap(self, metrics_dir: Path, timeout: float = 60.0) -> None:
        """On the way out, whatever happened: no worker outlives the supervisor."""
        running = [w for w in self.workers if w.proc is not None and w.proc.poll() is None]
        for w in running:
            w.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
        deadline = time.monotonic() + timeout
        for w in running:
            assert w.proc is not None
            try:
                w.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error("worker %d did not stop within %.0f s: killing it", w.index, timeout)
                w.proc.kill()
                w.proc.wait()

    def _pids(self) -> list[int]:
        return [w.proc.pid for w in list(self.workers) if w.proc is not None]

    # ------------------------------------------------------------------ health
    def alive(self) -> tuple[bool, str]:
        """The supervisor's loop turns, and every running worker that serves is alive."""
        stuck = time.monotonic() - self._beat
        if stuck > 60:
            return False, f"supervisor stuck for {stuck:.0f}s"
        for w in list(self.workers):
            port = w.port() if w.running else None
            if port is not None:
                ok, reason = _ask(port, "/healthz")
                if not ok:
                    return False, f"worker {w.index}: {reason}"
        return True, f"ok: {sum(w.running for w in self.workers)} workers"

    def ready(self) -> tuple[bool, str]:
        """Every worker runs and is ready; the reason lists each worker's answer."""
        if self._stop.is_set():
            return False, "stopping"
        answers = []
        for w in list(self.workers):
            port = w.port() if w.running else None
            if not w.running:
                ok, reason = False, "restarting" if w.restart_at is not None else "stopped"
            elif port is None:
                ok, reason = False, "starting"
            else:
                ok, reason = _ask(port, "/readyz")
            answers.append((ok, f"worker {w.index}: {reason}"))
        return (bool(answers) and all(ok for ok, _ in answers),
                "; ".join(reason for _, reason in answers))


def _process_collector(pid: int) -> ProcessCollector:
    """prometheus_client's process metrics of another process (read from /proc)."""
    return ProcessCollector(pid=lambda: pid, registry=None)


def _version() -> str:
    from streamseq import __version__

    return __version__
