"""The long-running Kafka service: lifecycle and I/O around the pipeline step.

The loop reads top to bottom: poll -> each partition's records go through
:func:`streamseq.pipeline.apply` (decode, validate, the shard's engine) -> predictions and
dead letters are produced, metrics added -> a checkpoint written in the background is
committed when done -> when one is due, the shards' state is copied and handed to the writer
(flush -> durable snapshots; the commit comes back to this thread). Everything else has its own module: the Kafka clients and delivery
tracking (:mod:`.clients`), the owned shards and rebalancing (:mod:`.rebalance`), the broker
monitor (:mod:`.monitor`), metrics reporting (:mod:`.reporting`), checkpoints
(:mod:`.checkpoints`) and the health answers (:mod:`.health`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import torch
from kafka import TopicPartition
from kafka.errors import KafkaError
from prometheus_client import CollectorRegistry

from streamseq import __version__
from streamseq.events.errors import REASONS
from streamseq.exceptions import ConfigError
from streamseq.metrics import ServiceMetrics
from streamseq.pipeline import apply
from streamseq.service.checkpoints import Checkpointer, Outcome, commit_async, commit_sync
from streamseq.service.clients import ClientFactory, KafkaClients, Sender, connect
from streamseq.service.config import ServiceConfig
from streamseq.service.health import Health
from streamseq.service.http import HealthServer
from streamseq.service.memory import freeze_heap, reuse_freed_memory
from streamseq.service.monitor import BrokerMonitor
from streamseq.service.rebalance import Assignment
from streamseq.service.reporting import MetricsReporter
from streamseq.service.shards import SHARD_FORMAT, ServiceError, Shard, ShardFactory
from streamseq.state.checkpoint import CheckpointStore, LocalCheckpointStore, load_file

__all__ = ["Service", "ServiceError", "Shard", "SHARD_FORMAT"]

log = logging.getLogger(__name__)


def open_store(config: ServiceConfig) -> CheckpointStore:
    """The configured checkpoint store (a directory, or a compacted Kafka topic).

    A checkpoint directory that is a file, or lies under one, is a :class:`ConfigError`
    (exit code 2, one line), like any other setting that cannot be used as given.
    """
    if config.checkpoint_store == "kafka":
        from streamseq.state.kafka_store import KafkaCheckpointStore

        assert config.bootstrap is not None
        return KafkaCheckpointStore(config.bootstrap, config.checkpoint_topic,
                                    **config.security.kafka_kwargs())
    try:
        return LocalCheckpointStore(config.checkpoint_dir, keep=config.checkpoint_keep)
    except (FileExistsError, NotADirectoryError) as exc:
        path = Path(config.checkpoint_dir)
        file = next((p for p in (path, *path.parents) if p.is_file()), path)
        what = "is a file" if file == path else f"is under a file ({file})"
        raise ConfigError(f"checkpoint_dir {config.checkpoint_dir} {what}, not a directory: "
                          "pass --checkpoint-dir DIR") from exc


def serve_health(config: ServiceConfig, registry: CollectorRegistry,
                 alive: Callable[[], tuple[bool, str]],
                 ready: Callable[[], tuple[bool, str]]) -> HealthServer:
    """The HTTP server of ``/metrics``, ``/healthz`` and ``/readyz``, started; a port that
    cannot be bound is a :class:`ConfigError` (exit code 2, one line)."""
    try:
        server = HealthServer(registry, config.metrics_host, config.metrics_port, alive, ready)
    except OSError as exc:
        raise ConfigError(f"metrics port {config.metrics_host}:{config.metrics_port} cannot be "
                          f"used ({exc.strerror or exc}): pass another --metrics-port or "
                          "--metrics-host") from exc
    return server.start()


class Service:
    """The consumer service. ``run()`` blocks until :meth:`stop` is called.

    Parameters
    ----------
    config
        Validated service configuration.
    metrics
        Metrics registry holder (a fresh one by default).
    clients
        Makes the Kafka clients (kafka-python from ``config`` by default).
    on_serving
        Called with the HTTP port once ``/metrics``, ``/healthz`` and ``/readyz`` answer (a
        worker tells its supervisor where to ask).
    """

    def __init__(self, config: ServiceConfig, metrics: ServiceMetrics | None = None,
                 clients: ClientFactory | None = None,
                 on_serving: Callable[[int], None] | None = None) -> None:
        if not config.bootstrap:
            raise ServiceError("no Kafka bootstrap servers configured")
        self.config = config
        self.metrics = metrics or ServiceMetrics(version=__version__,
                                                 cell=config.engine.model.cell,
                                                 hidden=config.engine.model.hidden)
        self.metrics.declare([(t.name, t.kind) for t in config.topics], sorted(REASONS))
        self.metrics.declare_outputs([t for t in (config.prediction_topic,
                                                  config.dead_letter_topic,
                                                  config.anomaly_topic) if t])
        self.reporter = MetricsReporter(self.metrics)
        self.clients = clients or KafkaClients(config)
        self.health = Health(stuck_after=max(60.0, config.max_poll_interval_ms / 1000.0))
        self._stop = threading.Event()
        self._fatal: ServiceError | None = None
        self.assignment: Assignment | None = None
        self.on_serving = on_serving

    # ------------------------------------------------------------------ lifecycle
    def stop(self) -> None:
        """Ask the loop to finish its batch, checkpoint, commit and return."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    @property
    def shards(self) -> dict[TopicPartition, Shard]:
        return self.assignment.shards if self.assignment is not None else {}

    def _fail(self, exc: ServiceError) -> None:
        self._fatal = exc
        self.stop()

    def run(self) -> int:
        cfg = self.config
        torch.set_num_threads(max(1, cfg.threads))
        reuse_freed_memory()  # each checkpoint's copy reuses the last one's pages
        factory = ShardFactory(cfg, load_file(cfg.warm_start) if cfg.warm_start else None)
        factory.check_warm_start()
        log.info("starting streamseq %s with %r", __version__, cfg)
        with ExitStack() as stack:
            http = serve_health(cfg, self.metrics.registry, self.health.alive,
                                self.health.ready)
            stack.callback(http.stop)
            if self.on_serving is not None:
                self.on_serving(http.port)
            store = self._connect(lambda: open_store(cfg))  # the Kafka store needs the broker
            if store is None:
                return 0  # stopped while waiting for the broker
            producer = self._connect(self.clients.producer)
            if producer is None:
                return 0  # stopped while waiting for the broker
            sender = Sender(producer, cfg.prediction_topic, cfg.dead_letter_topic,
                            cfg.dead_letter_max_bytes, cfg.anomaly_topic,
                            on_undelivered=lambda topic: self.metrics.producer_send_errors
                            .labels(topic=topic).inc())
            stack.callback(lambda: sender.close(timeout=self._close_timeout()))
            checkpointer = Checkpointer(store, sender, self.metrics,
                                        cfg.checkpoint_every_events, cfg.checkpoint_every_seconds,
                                        cfg.checkpoint_full_every)
            stack.callback(lambda: checkpointer.close(wait=self.health.broker_ok))
            consumer = self._connect(self.clients.consumer)
            if consumer is None:
                return 0
            commit, commit_revoked = commit_sync(consumer, self.metrics), commit_async(
                consumer, self.metrics)  # a rebalance callback cannot wait for a commit
            assignment = self.assignment = Assignment(
                factory, store, self.metrics, self.health, on_fatal=self._fail,
                let_go=lambda gone: self._checkpoint(checkpointer, gone, commit_revoked))
            assignment.consumer = consumer
            stack.callback(self._close_consumer, consumer)
            consumer.subscribe([t.name for t in cfg.topics], listener=assignment)
            stack.enter_context(BrokerMonitor(self.clients.monitor, assignment.positions,
                                              self.health, self.metrics))
            self.health.started = True
            warm = False  # the heap is frozen after the first batch (kernels compiled)
            try:
                while not self._stop.is_set():
                    self.health.beat()
                    batch = consumer.poll(timeout_ms=cfg.poll_timeout_ms,
                                          max_records=cfg.max_poll_records)
                    if batch:
                        self._process(batch, sender, checkpointer)
                        if not warm:
                            freeze_heap()
                            warm = True
                    assignment.track_positions()
                    self.reporter.levels((s.kind, s.engine.keys_held)
                                         for s in assignment.shards.values())
                    if checkpointer.poll(commit) == Outcome.REWIND:  # a background write done
                        assignment.rewind()
                    if assignment.shards and checkpointer.due():
                        checkpointer.start(list(assignment.shards.values()))
            except BaseException:
                # A shard may be half-applied (engine advanced, offset not): closing the
                # consumer revokes the partitions, and that must not snapshot them.
                checkpointer.disabled = True
                raise
            if self._fatal is not None:
                raise self._fatal
            if not self.health.broker_ok:  # nothing sent since the last flush can be delivered
                log.warning("stopping while the broker is unreachable: no final checkpoint; "
                            "the next start resumes from the last snapshot")
                checkpointer.disabled = True
                return 0
            log.info("stopping: final checkpoint of %d shards", len(assignment.shards))
            self._checkpoint(checkpointer, list(assignment.shards.values()), commit)
        return 0

    def _connect(self, make: Any) -> Any:
        def unreachable() -> None:
            self.health.broker_ok = False
            self.metrics.up.set(0)

        client = connect(make, self._stop, str(self.config.bootstrap), unreachable,
                         beat=self.health.beat)
        if client is not None:
            self.health.broker_ok = True
        return client

    def _close_timeout(self) -> float:
        """Seconds a client may take to close: short when the broker is unreachable (a
        SIGTERM during an outage exits at once; nothing it could still send counts)."""
        return 10.0 if self.health.broker_ok else 1.0

    def _close_consumer(self, consumer: Any) -> None:
        try:
            consumer.close(autocommit=False, timeout_ms=int(self._close_timeout() * 1000))
        except KafkaError as exc:
            log.warning("consumer close: %s", exc)

    # ------------------------------------------------------------------ processing
    def _process(self, batch: dict[TopicPartition, list[Any]], sender: Sender,
                 checkpointer: Checkpointer) -> None:
        t0 = time.perf_counter()
        shards = self.shards
        for tp, records in batch.items():
            shard = shards.get(tp)
            if shard is None:
                log.warning("records for unassigned %s ignored", tp)
                continue
            step = apply(records, shard.decoder, shard.engine, shard.next_offset)
            if step.next_offset is None:
                continue
            sender.dead_letters(step.dead_letters)
            sender.predictions(step.predictions)
            sender.anomalies(step.anomalies)
            self.reporter.applied(tp.topic, shard.kind, step, tp.partition)
            if shard.next_offset is None:
                shard.first_offset = step.first_offset
            shard.next_offset = step.next_offset
            checkpointer.note(step.deltas.consumed)
        self.metrics.batch_seconds.observe(time.perf_counter() - t0)

    def _checkpoint(self, checkpointer: Checkpointer, shards: list[Shard], commit: Any) -> bool:
        outcome = checkpointer.checkpoint(shards, commit)
        if outcome == Outcome.REWIND and self.assignment is not None:
            self.assignment.rewind()
        return outcome == Outcome.OK
