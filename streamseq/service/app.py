"""The long-running Kafka service: consume, forecast, publish, checkpoint, commit.

The loop reads top to bottom: poll -> decode and validate (bad input to the dead-letter
topic) -> each partition's shard processes its events in offset order -> predictions are
produced -> when a checkpoint is due: flush the producer (fail if undelivered) -> write each
shard's snapshot with the offset it covers -> commit those offsets. On assignment a shard is
restored from its snapshot and the consumer seeks to the snapshot's offset; on revocation the
shard is checkpointed before it is let go. A checkpoint that fails rewinds every shard to its
last durable snapshot, so nothing is lost (predictions may repeat, with the same ids).
"""

from __future__ import annotations

import logging
import threading
import time
from contextlib import ExitStack, suppress
from dataclasses import dataclass, field
from typing import Any

import torch
from kafka import ConsumerRebalanceListener, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata

from streamseq import __version__
from streamseq.engine import Engine
from streamseq.events.decode import EventDecoder
from streamseq.events.errors import REASONS, EventError
from streamseq.exceptions import CheckpointError, StreamseqError
from streamseq.metrics import ServiceMetrics
from streamseq.predictions import encode_record, prediction_id, prediction_records
from streamseq.service.config import ServiceConfig
from streamseq.service.http import HealthServer
from streamseq.state.checkpoint import CheckpointStore, LocalCheckpointStore, load_file

__all__ = ["Service", "Shard", "ServiceError"]

log = logging.getLogger(__name__)
SHARD_FORMAT = "streamseq-shard/1"


class ServiceError(StreamseqError):
    """The service cannot continue (configuration, incompatible checkpoint)."""


@dataclass
class Shard:
    """One assigned partition: its engine and the next offset it will apply."""

    tp: TopicPartition
    kind: str
    engine: Any  # Engine, or TextEngine for text topics
    next_offset: int | None = None
    first_offset: int | None = None  # where a shard without a snapshot began
    since_checkpoint: int = 0
    reported: dict[str, float] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"{self.tp.topic}-{self.tp.partition}"

    def snapshot(self) -> dict[str, Any]:
        return {"format": SHARD_FORMAT, "topic": self.tp.topic, "partition": self.tp.partition,
                "offset": self.next_offset, "engine": self.engine.state_dict()}


class _Listener(ConsumerRebalanceListener):
    def __init__(self, service: Service) -> None:
        self.service = service

    def on_partitions_revoked(self, revoked: Any) -> None:
        self.service._on_revoked(list(revoked))

    def on_partitions_assigned(self, assigned: Any) -> None:
        self.service._on_assigned(list(assigned))


class Service:
    """The consumer service. ``run()`` blocks until :meth:`stop` is called.

    Parameters
    ----------
    config
        Validated service configuration.
    metrics
        Metrics registry holder (a fresh one by default).
    """

    def __init__(self, config: ServiceConfig, metrics: ServiceMetrics | None = None) -> None:
        if not config.bootstrap:
            raise ServiceError("no Kafka bootstrap servers configured")
        self.config = config
        ec = config.engine
        self.metrics = metrics or ServiceMetrics(version=__version__, cell=ec.model.cell,
                                                 hidden=ec.model.hidden)
        self.metrics.declare([(t.name, t.kind) for t in config.topics], sorted(REASONS))
        self.store: CheckpointStore
        if config.checkpoint_store == "kafka":
            from streamseq.state.kafka_store import KafkaCheckpointStore

            self.store = KafkaCheckpointStore(config.bootstrap, config.checkpoint_topic,
                                              **dict(config.security))
        else:
            self.store = LocalCheckpointStore(config.checkpoint_dir, keep=config.checkpoint_keep)
        self.decoders: dict[str, Any] = {}
        for t in config.topics:
            if t.kind == "text":
                from streamseq.text.events import TextDecoder

                self.decoders[t.name] = TextDecoder(naive_tz=config.naive_tz,
                                                    max_bytes=config.max_message_bytes)
            else:
                self.decoders[t.name] = EventDecoder(kind=t.kind, naive_tz=config.naive_tz,
                                                     max_bytes=config.max_message_bytes)
        self.shards: dict[TopicPartition, Shard] = {}
        self._stop = threading.Event()
        self._send_failures = 0
        self._send_lock = threading.Lock()
        self._last_checkpoint = time.monotonic()
        self._events_since_checkpoint = 0
        self._last_loop = time.monotonic()
        self._started = False
        self._broker_ok = False
        self._warm: dict[str, Any] | None = None
        self._fatal: ServiceError | None = None
        self._failed = False  # an unexpected error escaped the loop: never checkpoint again
        self.consumer: KafkaConsumer | None = None
        self.producer: KafkaProducer | None = None
        self.http: HealthServer | None = None

    # ------------------------------------------------------------------ lifecycle
    def stop(self) -> None:
        """Ask the loop to finish its batch, checkpoint, commit and return."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def _kafka_common(self) -> dict[str, Any]:
        return {"bootstrap_servers": self.config.bootstrap.split(","),  # type: ignore[union-attr]
                **dict(self.config.security)}

    def run(self) -> int:
        cfg = self.config
        torch.set_num_threads(max(1, cfg.threads))
        if cfg.warm_start:
            self._warm = load_file(cfg.warm_start)
            for topic in cfg.topics:  # refuse an incompatible warm start before consuming
                try:
                    self._new_engine(topic.kind)
                except CheckpointError as exc:
                    raise ServiceError(f"warm start {cfg.warm_start}: {exc}") from exc
        log.info("starting streamseq %s with %r", __version__, cfg)
        with ExitStack() as stack:
            self.http = HealthServer(self.metrics.registry, cfg.metrics_host, cfg.metrics_port,
                                     self.health, self.readiness).start()
            stack.callback(self.http.stop)
            self.producer = self._connect(lambda: KafkaProducer(
                **self._kafka_common(), client_id=f"{cfg.client_id}-producer", acks="all",
                enable_idempotence=True, linger_ms=5, batch_size=256 * 1024,
                max_request_size=max(2 * cfg.max_message_bytes, 1_048_576),
                request_timeout_ms=30_000, delivery_timeout_ms=120_000))
            if self.producer is None:
                return 0  # stopped while waiting for the broker
            stack.callback(self._close_producer)
            self.consumer = self._connect(lambda: KafkaConsumer(
                **self._kafka_common(), group_id=cfg.group, client_id=cfg.client_id,
                enable_auto_commit=False, auto_offset_reset=cfg.auto_offset_reset,
                max_poll_records=cfg.max_poll_records,
                session_timeout_ms=cfg.session_timeout_ms,
                heartbeat_interval_ms=cfg.heartbeat_interval_ms,
                max_poll_interval_ms=cfg.max_poll_interval_ms,
                fetch_max_wait_ms=cfg.fetch_max_wait_ms,
                request_timeout_ms=max(30_000, cfg.session_timeout_ms + 5_000)))
            if self.consumer is None:
                return 0
            stack.callback(self._close_consumer)
            self.consumer.subscribe([t.name for t in cfg.topics], listener=_Listener(self))
            monitor = _BrokerMonitor(self)
            monitor.start()
            stack.callback(monitor.stop)
            self._started = True
            try:
                while not self._stop.is_set():
                    self._last_loop = time.monotonic()
                    batch = self.consumer.poll(timeout_ms=cfg.poll_timeout_ms,
                                               max_records=cfg.max_poll_records)
                    if batch:
                        self._process(batch)
                    if self._checkpoint_due():
                        self.checkpoint(list(self.shards.values()))
            except BaseException:
                # A shard may be half-applied (engine advanced, offset not): closing the
                # consumer revokes the partitions, and that must not snapshot them.
                self._failed = True
                raise
            if self._fatal is not None:
                raise self._fatal
            log.info("stopping: final checkpoint of %d shards", len(self.shards))
            self.checkpoint(list(self.shards.values()))
        return 0

    def _connect(self, make: Any) -> Any:
        """``make()`` a Kafka client, waiting out an unreachable broker with backoff (1 s
        doubling to 30 s); ``None`` if the service is stopped meanwhile."""
        delay = 1.0
        while not self._stop.is_set():
            try:
                client = make()
                self._broker_ok = True
                return client
            except KafkaError as exc:
                self._broker_ok = False
                self.metrics.up.set(0)
                log.warning("broker %s unreachable (%s); retrying in %.0fs",
                            self.config.bootstrap, type(exc).__name__, delay)
                self._stop.wait(delay)
                delay = min(30.0, delay * 2)
        return None

    def _close_producer(self) -> None:
        if self.producer is not None:
            try:
                self.producer.close(timeout=10)
            except KafkaError as exc:
                log.warning("producer close: %s", exc)

    def _close_consumer(self) -> None:
        if self.consumer is not None:
            try:
                self.consumer.close(autocommit=False)
            except KafkaError as exc:
                log.warning("consumer close: %s", exc)

    # ------------------------------------------------------------------ health
    def health(self) -> tuple[bool, str]:
        stuck = time.monotonic() - self._last_loop
        limit = max(60.0, self.config.max_poll_interval_ms / 1000.0)
        if stuck > limit:
            return False, f"loop stuck for {stuck:.0f}s"
        return True, "ok"

    def readiness(self) -> tuple[bool, str]:
        if not self._started:
            return False, "starting"
        if not self._broker_ok:
            return False, "broker unreachable"
        return True, f"ok: {len(self.shards)} partitions"

    # ------------------------------------------------------------------ rebalance
    def _on_revoked(self, revoked: list[TopicPartition]) -> None:
        gone = [self.shards[tp] for tp in revoked if tp in self.shards]
        log.info("partitions revoked: %s", [s.name for s in gone])
        if gone:  # runs on the consumer's IO thread: no blocking consumer call in here
            self.checkpoint(gone, blocking_commit=False)
        for s in gone:
            self.shards.pop(s.tp, None)
            self.metrics.lag.remove(s.tp.topic, str(s.tp.partition)) if self._has_lag(s) else None
        self.metrics.shards.set(len(self.shards))

    def _has_lag(self, s: Shard) -> bool:
        return (s.tp.topic, str(s.tp.partition)) in self.metrics.lag._metrics

    def _on_assigned(self, assigned: list[TopicPartition]) -> None:
        log.info("partitions assigned: %s", [f"{tp.topic}-{tp.partition}" for tp in assigned])
        for tp in assigned:
            if tp in self.shards:
                continue
            try:
                self.shards[tp] = self._restore(tp)
            except ServiceError as exc:  # an incompatible snapshot: stop, never guess
                log.critical("%s", exc)
                self._fatal = exc
                self.stop()
                return
        self.metrics.shards.set(len(self.shards))

    def _new_engine(self, kind: str, warm: bool = True) -> Any:
        if kind == "text":
            from streamseq.text.config import TextEngineConfig
            from streamseq.text.engine import TextEngine

            text = self.config.text
            return TextEngine(TextEngineConfig.from_dict(dict(text)) if text else None)
        engine = Engine(self.config.engine.replace(kind=kind))
        if warm and self._warm is not None:
            for state in self._warm.get("engines", []):
                if state.get("config", {}).get("kind") == kind:
                    engine.load_state_dict(state)
                    log.info("warm start of a %s shard from %s", kind, self.config.warm_start)
                    break
        return engine

    def _restore(self, tp: TopicPartition) -> Shard:
        """A shard from its last durable snapshot (seeking to its offset), else fresh."""
        kind = self.config.kind_of(tp.topic)
        shard = Shard(tp, kind, self._new_engine(kind))
        snap = self.store.load(shard.name)
        if snap is not None:
            if snap.get("format") != SHARD_FORMAT:
                raise ServiceError(f"snapshot {shard.name} has format {snap.get('format')}")
            try:
                shard.engine = self._new_engine(kind, warm=False)
                shard.engine.load_state_dict(snap["engine"])
            except CheckpointError as exc:
                raise ServiceError(f"snapshot {shard.name} does not fit this configuration: "
                                   f"{exc}") from exc
            shard.next_offset = snap["offset"]
        if shard.next_offset is not None:
            assert self.consumer is not None
            self.consumer.seek(tp, shard.next_offset)
            log.info("restored %s at offset %d", shard.name, shard.next_offset)
        self._baseline(shard)
        return shard

    # ------------------------------------------------------------------ processing
    def _process(self, batch: dict[TopicPartition, list[Any]]) -> None:
        t0 = time.perf_counter()
        for tp, records in batch.items():
            shard = self.shards.get(tp)
            if shard is None:
                log.warning("records for unassigned %s ignored", tp)
                continue
            self._process_partition(shard, records)
        self.metrics.batch_seconds.observe(time.perf_counter() - t0)

    def _process_partition(self, shard: Shard, records: list[Any]) -> None:
        m = self.metrics
        topic = shard.tp.topic
        decoder = self.decoders[topic]
        max_future = self.config.max_future_ms
        if shard.next_offset is not None:
            records = [r for r in records if r.offset >= shard.next_offset]
        if not records:
            return
        events, kept = [], []
        for r in records:
            try:
                if r.value is None:
                    raise EventError("not_json", "record has no value (tombstone)")
                ev = decoder.decode(r.value)
                if r.timestamp and r.timestamp > 0 and ev.ts_ms > r.timestamp + max_future:
                    raise EventError("bad_time", f"event time {ev.ts_ms} is more than "
                                                 f"{max_future} ms after its record's timestamp")
                events.append(ev)
                kept.append(r)
            except EventError as err:
                self._dead_letter(r, err)
        m.events_consumed.labels(topic=topic, kind=shard.kind).inc(len(records))
        if events and shard.kind == "text":
            self._apply_text(shard, events, kept)
        elif events:
            out = shard.engine.process(events)
            for i, rejected in out.rejected:
                self._dead_letter(kept[i], rejected)
            for _i, reason in out.dropped:
                m.events_dropped.labels(topic=topic, reason=reason).inc()
            sources = [(r.topic, r.partition, r.offset) for r in kept]
            recs = prediction_records(events, out, shard.engine.target_names, sources)
            now = time.time()
            assert self.producer is not None
            latency = m.latency.labels(kind=shard.kind)
            for rec, i in zip(recs, out.index.tolist(), strict=True):
                fut = self.producer.send(self.config.prediction_topic, key=rec["key"].encode(),
                                         value=encode_record(rec))
                fut.add_errback(self._on_send_error)
                ts = kept[i].timestamp
                if ts and ts > 0:
                    latency.observe(max(0.0, now - ts / 1000.0))
            m.predictions.labels(kind=shard.kind).inc(len(recs))
            self._report(shard)
        if shard.next_offset is None:
            shard.first_offset = records[0].offset
        shard.next_offset = records[-1].offset + 1
        shard.since_checkpoint += len(records)
        self._events_since_checkpoint += len(records)

    def _apply_text(self, shard: Shard, events: list[Any], kept: list[Any]) -> None:
        """Text shards: per message, a surprise score (language model) and/or class
        probabilities; a label (inline or late, matched by id) is learned and scored."""
        assert self.producer is not None
        engine, tp = shard.engine, shard.tp
        published = 0
        for ev, r in zip(events, kept, strict=True):
            try:
                outs = engine.process_one(ev)
            except EventError as err:
                self._dead_letter(r, err)
                continue
            version = engine.stats.lm_updates + engine.stats.clf_updates
            for j, out in enumerate(outs):
                rec = dict(out)
                rec["message_id"] = rec.pop("id", None)
                rec["id"] = prediction_id(tp.topic, tp.partition, r.offset) + (
                    f"#{j}" if j else "")
                rec["model_version"] = version
                rec["source"] = {"topic": tp.topic, "partition": tp.partition,
                                 "offset": r.offset}
                fut = self.producer.send(self.config.prediction_topic, key=ev.key.encode(),
                                         value=encode_record(rec))
                fut.add_errback(self._on_send_error)
                published += 1
        self.metrics.predictions.labels(kind="text").inc(published)
        self.metrics.report_text(engine.summary(), engine.stats)

    def _dead_letter(self, record: Any, err: EventError) -> None:
        cap = self.config.dead_letter_max_bytes
        value = record.value or b""
        headers = [
            ("streamseq.reason", err.reason.encode()),
            ("streamseq.detail", err.detail[:500].encode("utf-8", "replace")),
            ("streamseq.source.topic", record.topic.encode()),
            ("streamseq.source.partition", str(record.partition).encode()),
            ("streamseq.source.offset", str(record.offset).encode()),
            ("streamseq.source.timestamp", str(record.timestamp).encode()),
            ("streamseq.original.bytes", str(len(value)).encode()),
        ]
        if len(value) > cap:
            headers.append(("streamseq.truncated", b"1"))
        assert self.producer is not None
        fut = self.producer.send(self.config.dead_letter_topic, key=record.key,
                                 value=bytes(value[:cap]), headers=headers)
        fut.add_errback(self._on_send_error)
        self.metrics.events_rejected.labels(topic=record.topic, reason=err.reason).inc()
        self.metrics.dead_letters.labels(topic=record.topic).inc()

    def _on_send_error(self, exc: BaseException) -> None:
        with self._send_lock:
            self._send_failures += 1
        log.error("a record was not delivered: %s", exc)

    # ------------------------------------------------------------------ metrics
    def _baseline(self, shard: Shard) -> None:
        if shard.kind == "text":
            return
        s = shard.engine.stats
        shard.reported = {"applied": s.updates_applied, "skipped": s.updates_skipped,
                          "drift": s.drift_events, "evicted": s.evicted,
                          "zm": s.z_abs_model, "zp": s.z_abs_persistence, "zn": s.z_scored}

    def _report(self, shard: Shard) -> None:
        m, s, r, kind = self.metrics, shard.engine.stats, shard.reported, shard.kind
        now = {"applied": s.updates_applied, "skipped": s.updates_skipped,
               "drift": s.drift_events, "evicted": s.evicted,
               "zm": s.z_abs_model, "zp": s.z_abs_persistence, "zn": s.z_scored}
        d = {k: max(0.0, now[k] - r.get(k, 0.0)) for k in now}
        if d["applied"]:
            m.updates.labels(kind=kind, outcome="applied").inc(d["applied"])
        if d["skipped"]:
            m.updates.labels(kind=kind, outcome="skipped_nonfinite").inc(d["skipped"])
        if d["drift"]:
            m.drift.labels(kind=kind).inc(d["drift"])
        if d["evicted"]:
            m.keys_evicted.labels(kind=kind).inc(d["evicted"])
        if d["zn"]:
            m.abs_error.labels(kind=kind, forecaster="model").inc(d["zm"])
            m.abs_error.labels(kind=kind, forecaster="persistence").inc(d["zp"])
            m.scored.labels(kind=kind).inc(d["zn"])
        shard.reported = now
        if s.updates_applied or s.updates_skipped:
            if s.last_loss == s.last_loss:
                m.train_loss.labels(kind=kind).set(s.last_loss)
            if s.last_grad_norm == s.last_grad_norm:
                m.grad_norm.labels(kind=kind).set(s.last_grad_norm)
        same = [x for x in self.shards.values() if x.kind == kind and x.kind != "text"]
        m.keys.labels(kind=kind).set(sum(x.engine.keys_held for x in same))
        zn = sum(x.engine.stats.z_scored for x in same)
        if zn:
            m.mae.labels(kind=kind, forecaster="model").set(
                sum(x.engine.stats.z_abs_model for x in same) / zn)
            m.mae.labels(kind=kind, forecaster="persistence").set(
                sum(x.engine.stats.z_abs_persistence for x in same) / zn)

    # ------------------------------------------------------------------ checkpoints
    def _checkpoint_due(self) -> bool:
        cfg = self.config
        return bool(self.shards) and (
            self._events_since_checkpoint >= cfg.checkpoint_every_events
            or time.monotonic() - self._last_checkpoint >= cfg.checkpoint_every_seconds)

    def checkpoint(self, shards: list[Shard], blocking_commit: bool = True) -> bool:
        """Flush -> snapshot -> commit for ``shards``. On failure rewind to the last good
        snapshots and return False.

        The snapshot (with its offset) is the source of truth for restores; the committed
        offset follows it and serves lag monitoring and tools. Inside a rebalance callback
        the commit is sent without waiting (kafka-python runs callbacks on its IO thread).
        """
        if self._failed:
            log.error("not checkpointing %d shards after a failure: the last durable "
                      "snapshots stay the truth", len(shards))
            return False
        t0 = time.perf_counter()
        self._last_checkpoint = time.monotonic()
        assert self.producer is not None and self.consumer is not None
        try:
            self.producer.flush(timeout=60)
        except KafkaError as exc:  # records still in flight: no snapshot may cover them yet
            self.metrics.checkpoints.labels(outcome="failed").inc()
            log.error("producer flush failed (%s): not checkpointing now", exc)
            return False
        with self._send_lock:
            failures, self._send_failures = self._send_failures, 0
        if failures:
            self.metrics.checkpoints.labels(outcome="failed").inc()
            log.error("%d records undelivered: not committing; rewinding to the last snapshots",
                      failures)
            self._rewind()
            return False
        offsets = {}
        for shard in shards:
            if shard.next_offset is None:
                continue
            self.store.save(shard.name, shard.snapshot())
            offsets[shard.tp] = OffsetAndMetadata(shard.next_offset, "", -1)
            shard.since_checkpoint = 0
        if offsets:
            try:
                if blocking_commit:
                    self.consumer.commit(offsets)
                else:
                    self.consumer.commit_async(offsets)
            except KafkaError as exc:  # the snapshot is durable; the commit only lags
                log.warning("offset commit failed (%s); snapshots are durable", exc)
        self._events_since_checkpoint = 0
        self.metrics.checkpoint_done(time.perf_counter() - t0)
        return True

    def _rewind(self) -> None:
        for tp, old in list(self.shards.items()):
            shard = self._restore(tp)
            if shard.next_offset is None and old.first_offset is not None:
                # no snapshot yet: the fresh engine replays the shard from where it began
                assert self.consumer is not None
                self.consumer.seek(tp, old.first_offset)
                shard.first_offset = old.first_offset
            self.shards[tp] = shard



class _BrokerMonitor(threading.Thread):
    """Every few seconds: is the broker reachable, and how far behind is each partition?"""

    def __init__(self, service: Service, every: float = 2.0) -> None:
        super().__init__(name="streamseq-broker-monitor", daemon=True)
        self.service = service
        self.every = every
        self._halt = threading.Event()
        self._consumer: KafkaConsumer | None = None
        self._warned = False

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=10)
        if self._consumer is not None:
            with suppress(KafkaError):
                self._consumer.close()

    def run(self) -> None:
        svc = self.service
        while not self._halt.is_set():
            try:
                if self._consumer is None:
                    self._consumer = KafkaConsumer(
                        **svc._kafka_common(), client_id=f"{svc.config.client_id}-monitor",
                        request_timeout_ms=4000, enable_auto_commit=False)
                shards = list(svc.shards.values())
                tps = [s.tp for s in shards]
                if tps:
                    ends = self._consumer.end_offsets(tps)
                    for s in shards:
                        pos = s.next_offset or 0
                        end = ends.get(s.tp)
                        if end is not None:
                            svc.metrics.lag.labels(topic=s.tp.topic,
                                                   partition=str(s.tp.partition)).set(
                                max(0, end - pos))
                else:
                    self._consumer.topics()
                svc._broker_ok = True
                svc.metrics.up.set(1)
            except Exception as exc:  # noqa: BLE001 - any failure means unreachable
                if svc._broker_ok or not self._warned:
                    log.warning("broker unreachable: %s: %s", type(exc).__name__, exc)
                    self._warned = True
                svc._broker_ok = False
                svc.metrics.up.set(0)
            self._halt.wait(self.every)
