"""The broker monitor: every few seconds, is the broker reachable, and how far behind is
each owned partition? Runs in its own thread with its own consumer (kafka-python clients
are not shared across threads)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from contextlib import suppress
from typing import Any

from kafka import TopicPartition
from kafka.errors import KafkaError

from streamseq.metrics import ServiceMetrics
from streamseq.service.health import Health

__all__ = ["BrokerMonitor"]

log = logging.getLogger(__name__)


class BrokerMonitor(threading.Thread):
    """Sets ``health.broker_ok``, ``streamseq_broker_connected`` and the lag gauges.

    Parameters
    ----------
    make_consumer
        Builds the monitor's own consumer (retried while the broker is unreachable).
    positions
        Returns ``{partition: next offset to apply}`` of the owned shards (``None``: not
        known yet; such a partition gets no lag figure rather than its end offset).
    health, metrics
        Where the findings go.
    every
        Seconds between checks.
    """

    def __init__(self, make_consumer: Callable[[], Any],
                 positions: Callable[[], dict[TopicPartition, int | None]], health: Health,
                 metrics: ServiceMetrics, every: float = 2.0) -> None:
        super().__init__(name="streamseq-broker-monitor", daemon=True)
        self.make_consumer = make_consumer
        self.positions = positions
        self.health = health
        self.metrics = metrics
        self.every = every
        self._halt = threading.Event()
        self._consumer: Any = None
        self._warned = False

    def __enter__(self) -> BrokerMonitor:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=10 if self.health.broker_ok else 1)  # a daemon: left to exit
        if self._consumer is not None:
            with suppress(KafkaError):
                self._consumer.close()

    def check(self) -> None:
        """One look at the broker (raises when it cannot be reached)."""
        if self._consumer is None:
            self._consumer = self.make_consumer()
        positions = self.positions()
        if positions:
            ends = self._consumer.end_offsets(list(positions))
            for tp, pos in positions.items():
                end = ends.get(tp)
                if end is not None and pos is not None:  # unknown position: no figure, not
                    self.metrics.lag.labels(            # the end offset
                        topic=tp.topic, partition=str(tp.partition)).set(max(0, end - pos))
        else:
            self._consumer.topics()

    def run(self) -> None:
        while not self._halt.is_set():
            try:
                self.check()
                self.health.broker_ok = True
                self.metrics.up.set(1)
            except Exception as exc:  # noqa: BLE001 - any failure means unreachable
                if self.health.broker_ok or not self._warned:
                    log.warning("broker unreachable: %s: %s", type(exc).__name__, exc)
                    self._warned = True
                self.health.broker_ok = False
                self.metrics.up.set(0)
            self._halt.wait(self.every)
