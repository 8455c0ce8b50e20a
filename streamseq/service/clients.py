"""The service's Kafka clients: how they are built, and what is sent and delivered.

:class:`KafkaClients` makes the consumer, the producer and the monitor's consumer from the
configuration, waiting out an unreachable broker with backoff. :class:`Sender` produces
predictions and dead letters and tracks their delivery: a checkpoint may only cover records
that were delivered (:meth:`Sender.flush`).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from kafka import KafkaConsumer, KafkaProducer
from kafka.errors import KafkaError
from kafka.partitioner.default import murmur2

from streamseq.pipeline import DeadLetter, Prediction, dead_letter_headers
from streamseq.service.config import ServiceConfig

__all__ = ["ClientFactory", "KafkaClients", "KeyPartitioner", "Sender", "DeliveryError"]

log = logging.getLogger(__name__)


class DeliveryError(Exception):
    """Records were not delivered, or the flush failed: no checkpoint may cover them.

    ``lost`` is true when records are known to be lost (the shards must go back to their
    last durable snapshot); false when the flush itself failed (records may still be in
    flight: try again later).
    """

    def __init__(self, message: str, lost: bool) -> None:
        super().__init__(message)
        self.lost = lost


class ClientFactory(Protocol):
    """Makes the Kafka clients of one service (tests pass fakes)."""

    def producer(self) -> Any: ...

    def consumer(self) -> Any: ...

    def monitor(self) -> Any: ...


class KafkaClients:
    """kafka-python clients configured from a :class:`ServiceConfig`.

    Producer settings (measured in bench/results/producer_settings.md and e2e.md):
    ``linger_ms=2`` (a poll's predictions leave in a few batches without holding the first
    ones back), 1 MiB batches, no compression (loopback and LAN: compressing costs more CPU
    than it saves), ``acks=all`` with idempotence (a retried batch is not written twice).
    The consumer's ``fetch_max_wait_ms`` is 10 ms (:class:`ServiceConfig`: the latency floor
    on brokers that hold a fetch that long).
    """

    def __init__(self, config: ServiceConfig) -> None:
        self.config = config

    def common(self) -> dict[str, Any]:
        assert self.config.bootstrap is not None
        return {"bootstrap_servers": self.config.bootstrap.split(","),
                **self.config.security.kafka_kwargs()}

    def producer(self) -> KafkaProducer:
        cfg = self.config
        return KafkaProducer(
            **self.common(), client_id=f"{cfg.client_id}-producer", acks="all",
            enable_idempotence=True, linger_ms=cfg.producer_linger_ms,
            batch_size=cfg.producer_batch_bytes,
            compression_type=None if cfg.producer_compression == "none"
            else cfg.producer_compression,
            max_request_size=max(2 * cfg.max_message_bytes, 1_048_576),
            request_timeout_ms=30_000, delivery_timeout_ms=120_000)

    def consumer(self) -> KafkaConsumer:
        cfg = self.config
        return KafkaConsumer(
            **self.common(), group_id=cfg.group, client_id=cfg.client_id,
            enable_auto_commit=False, auto_offset_reset=cfg.auto_offset_reset,
            max_poll_records=cfg.max_poll_records,
            session_timeout_ms=cfg.session_timeout_ms,
            heartbeat_interval_ms=cfg.heartbeat_interval_ms,
            max_poll_interval_ms=cfg.max_poll_interval_ms,
            fetch_max_wait_ms=cfg.fetch_max_wait_ms,
            request_timeout_ms=max(30_000, cfg.session_timeout_ms + 5_000))

    def monitor(self) -> KafkaConsumer:
        return KafkaConsumer(**self.common(), client_id=f"{self.config.client_id}-monitor",
                             request_timeout_ms=4000, enable_auto_commit=False)


def connect(make: Callable[[], Any], stop: threading.Event, bootstrap: str,
            on_unreachable: Callable[[], None], beat: Callable[[], None] = lambda: None,
            every: float = 0.5) -> Any:
    """``make()`` a client, waiting out an unreachable broker with backoff (1 s doubling to
    30 s); ``None`` if ``stop`` is set meanwhile.

    kafka-python's constructors block until the cluster answers (``bootstrap_timeout_ms``,
    30 s), so each attempt runs in a thread of its own while this one calls ``beat()``
    every ``every`` seconds (the wait counts as alive) and watches ``stop``: a SIGTERM
    during an outage returns at once; a client the abandoned attempt makes later is closed.

    Examples
    --------
    >>> from kafka.errors import KafkaTimeoutError
    >>> tries = []
    >>> def make():
    ...     tries.append(1)
    ...     if len(tries) < 2:
    ...         raise KafkaTimeoutError()
    ...     return "client"
    >>> connect(make, threading.Event(), "b:9092", lambda: None, every=0.01)
    'client'
    """
    delay = 1.0
    while not stop.is_set():
        attempt = _Attempt(make)
        while not attempt.done.wait(every):
            beat()
            if stop.is_set():
                attempt.abandon()
                return None
        beat()
        if attempt.error is None:
            return attempt.client
        if not isinstance(attempt.error, KafkaError):
            raise attempt.error
        on_unreachable()
        log.warning("broker %s unreachable (%s); retrying in %.0fs", bootstrap,
                    type(attempt.error).__name__, delay)
        deadline = time.monotonic() + delay
        while not stop.wait(max(0.0, min(every, deadline - time.monotonic()))):
            beat()
            if time.monotonic() >= deadline:
                break
        delay = min(30.0, delay * 2)
    return None


class _Attempt:
    """One ``make()`` in a daemon thread; :meth:`abandon` closes what it makes too late."""

    def __init__(self, make: Callable[[], Any]) -> None:
        self.make = make
        self.client: Any = None
        self.error: BaseException | None = None
        self.done = threading.Event()
        self._lock = threading.Lock()
        self._abandoned = False
        threading.Thread(target=self._run, name="streamseq-connect", daemon=True).start()

    def _run(self) -> None:
        try:
            client = self.make()
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            self.error = exc
            self.done.set()
            return
        with self._lock:
            self.client = client
            late = self._abandoned
        self.done.set()
        if late:
            _close_quietly(client)

    def abandon(self) -> None:
        with self._lock:
            self._abandoned = True
            client = self.client
        if client is not None:  # made just now: close it off this thread too
            threading.Thread(target=_close_quietly, args=(client,), daemon=True).start()


def _close_quietly(client: Any) -> None:
    try:
        client.close()
    except Exception as exc:  # noqa: BLE001 - closing a client nobody uses any more
        log.debug("closing an abandoned client: %s", exc)


class KeyPartitioner:
    """The partition of each key of one topic, as kafka-python's default partitioner picks
    it (murmur2 of the key bytes, like the Java client), computed once per key.

    Naming the partition in ``send`` skips the partitioner's per-record work; records land
    where they would have landed without it. The partition count is read again at most
    every ``refresh_s`` seconds (:meth:`refresh`, once per batch): a topic that gained
    partitions re-maps its keys, as Kafka's clients do.

    Parameters
    ----------
    producer
        Answers ``partitions_for(topic)`` (a kafka-python producer).
    topic
        The topic.
    max_keys
        Bound of the cache (cleared when full).

    Examples
    --------
    >>> from kafka.partitioner import DefaultPartitioner
    >>> class Producer:
    ...     def partitions_for(self, topic): return {0, 1, 2}
    >>> class Cluster:
    ...     def topics(self): return {"p"}
    ...     def partitions_for_topic(self, topic): return {0, 1, 2}
    ...     def available_partitions_for_topic(self, topic): return {0, 1, 2}
    >>> keys = [f"s-{i:04d}".encode() for i in range(50)]
    >>> part = KeyPartitioner(Producer(), "p")
    >>> part.refresh()
    >>> [part.of(k) for k in keys] == [DefaultPartitioner().partition("p", k, k, None, None,
    ...                                                           Cluster()) for k in keys]
    True
    """

    def __init__(self, producer: Any, topic: str, max_keys: int = 200_000,
                 refresh_s: float = 30.0) -> None:
        self.producer = producer
        self.topic = topic
        self.max_keys = max_keys
        self.refresh_s = refresh_s
        self._cache: dict[bytes, int] = {}
        self._count = 0
        self._read = -math.inf

    def refresh(self) -> None:
        """Read the topic's partition count if ``refresh_s`` have passed since the last
        time (call once per batch, before :meth:`of`)."""
        now = time.monotonic()
        if now - self._read < self.refresh_s:
            return
        count = len(self.producer.partitions_for(self.topic))
        self._read = now
        if count != self._count:
            self._cache.clear()
            self._count = count

    def of(self, key: bytes) -> int:
        """The partition of ``key``."""
        found = self._cache.get(key)
        if found is None:
            if len(self._cache) >= self.max_keys:
                self._cache.clear()
            found = self._cache[key] = (murmur2(key) & 0x7FFFFFFF) % self._count
        return found


class Sender:
    """Produces predictions, dead letters and anomalies; counts the records not delivered.

    Parameters
    ----------
    producer
        A kafka-python producer (or a test double with ``send``, ``partitions_for`` and
        ``flush``).
    prediction_topic, dead_letter_topic
        Where records go.
    dead_letter_cap
        Dead-letter values are the original bytes cut at this size.
    anomaly_topic
        Where anomaly records go (``None``: they are not published).
    on_undelivered
        Called with the topic of every record that was not delivered (a metric).
    """

    def __init__(self, producer: Any, prediction_topic: str, dead_letter_topic: str,
                 dead_letter_cap: int, anomaly_topic: str | None = None,
                 on_undelivered: Callable[[str], None] = lambda topic: None) -> None:
        self.producer = producer
        self.prediction_topic = prediction_topic
        self.dead_letter_topic = dead_letter_topic
        self.anomaly_topic = anomaly_topic
        self.dead_letter_cap = dead_letter_cap
        self.on_undelivered = on_undelivered
        self._failures = 0
        self._lock = threading.Lock()
        self._errbacks = {t: self._errback(t) for t in
                          (prediction_topic, dead_letter_topic, anomaly_topic) if t}
        self._partitioners: dict[str, KeyPartitioner] = {}

    def predictions(self, preds: Sequence[Prediction]) -> None:
        self._send(self.prediction_topic, preds)

    def anomalies(self, records: Sequence[Prediction]) -> None:
        if self.anomaly_topic is not None:
            self._send(self.anomaly_topic, records)

    def _send(self, topic: str, records: Sequence[Prediction]) -> None:
        """Pre-serialised records to ``topic``, each to its key's partition (named
        explicitly: kafka-python then skips its partitioner)."""
        if not records:
            return
        send, errback = self.producer.send, self._errbacks[topic]
        partitioner = self._partitioners.get(topic)
        if partitioner is None:
            partitioner = self._partitioners[topic] = KeyPartitioner(self.producer, topic)
        partitioner.refresh()
        of = partitioner.of
        for p in records:
            send(topic, key=p.key, value=p.value, partition=of(p.key)).add_errback(errback)

    def dead_letters(self, dead: Sequence[DeadLetter]) -> None:
        cap = self.dead_letter_cap
        errback = self._errbacks[self.dead_letter_topic]
        for d in dead:
            value = d.record.value or b""
            self.producer.send(self.dead_letter_topic, key=d.record.key,
                               value=bytes(value[:cap]),
                               headers=dead_letter_headers(d, cap)).add_errback(errback)

    def _errback(self, topic: str) -> Callable[[BaseException], None]:
        def failed(exc: BaseException) -> None:
            with self._lock:
                self._failures += 1
            self.on_undelivered(topic)
            log.error("a record to %s was not delivered: %s", topic, exc)

        return failed

    def flush(self, timeout: float = 60.0) -> None:
        """Wait until everything sent so far is delivered; raise :class:`DeliveryError` if
        the flush failed or any record since the last flush was not delivered."""
        try:
            self.producer.flush(timeout=timeout)
        except KafkaError as exc:  # records still in flight: no snapshot may cover them yet
            raise DeliveryError(f"producer flush failed ({exc})", lost=False) from exc
        with self._lock:
            failures, self._failures = self._failures, 0
        if failures:
            raise DeliveryError(f"{failures} records undelivered", lost=True)

    def close(self, timeout: float = 10.0) -> None:
        try:
            self.producer.close(timeout=timeout)
        except KafkaError as exc:
            log.warning("producer close: %s", exc)
