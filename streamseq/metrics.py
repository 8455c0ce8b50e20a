"""Prometheus metrics of the service: one registry, names ``streamseq_<noun>_<unit>``.

Labels are low-cardinality only (topic, partition, kind, reason, forecaster, outcome); a
key never becomes a label. Every metric is documented in the README's metrics table.

Under ``streamseq run --workers N`` (:mod:`streamseq.service.supervisor`) each worker process
writes its values to prometheus_client's multiprocess files and the supervisor serves their
merge: counters and histograms are summed over every worker that ever ran (a restarted
worker's counts are kept, so sums never go back), and each gauge says how its workers' values
combine (``multiprocess_mode``; only live workers count, and no ``pid`` label is added):
counts of things held add up (``livesum``); ``streamseq_broker_connected`` is the lowest
(``livemin``: 1 only while every worker reaches the broker); the loss and gradient norm of the
last optimizer step are the most recent of any worker, and so are the levels labelled per
partition (``livemostrecent``: the partition's current owner reports last); since-start
ratios per kind are the worst worker's (``livemax`` for errors and widths, ``livemin`` for
coverage). The checkpoint time and age are recomputed by the supervisor over the workers
that own partitions. With one process (the default) none of this applies.
"""

from __future__ import annotations

import contextlib
import gc
import os
import time
from collections.abc import Iterator, Mapping, Sequence

import numpy as np
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
)
from prometheus_client.metrics_core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from streamseq.forecast.aggregate import FORECASTERS

__all__ = ["ServiceMetrics", "LATENCY_BUCKETS", "BATCH_BUCKETS", "CHECKPOINT_BUCKETS",
           "RESTORE_OUTCOMES", "observe_many", "multiprocess", "GarbageCollectorTime"]

disable_created_metrics()

# Event-to-prediction latency: from the record's broker timestamp to the prediction being
# handed to the producer. Measured p50 ~ tens of ms at moderate load on 2 cores.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                   10.0, 30.0)
# Processing time of one polled batch (decode + engine + produce).
BATCH_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
CHECKPOINT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# The stream's pause for a checkpoint's copy of the shards' state (bench/checkpoint_bench.py:
# tens of milliseconds at 10k keys, about a quarter of a second at 100k).
PAUSE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
#: How a partition's state was found when this replica took it over.
RESTORE_OUTCOMES = ("ok", "none", "failed")
SHARD_LABELS = ["topic", "partition"]
#: Levels reported per shard (one series per topic and partition).
SHARD_GAUGES = frozenset({"streamseq_text_lm_log_loss", "streamseq_text_accuracy",
                          "streamseq_text_macro_f1", "streamseq_text_log_loss",
                          "streamseq_text_pending_labels"})
WINDOWED = frozenset({"streamseq_text_accuracy", "streamseq_text_macro_f1",
                      "streamseq_text_log_loss"})


class GarbageCollectorTime(Collector):
    """``streamseq_gc_seconds_total{generation}``: seconds this process has spent in
    Python's cyclic garbage collector, per generation collected (a :data:`gc.callbacks`
    hook times every collection; installed once per process, read when scraped).

    A collection stops the thread that set it off, whichever it is, and it is invisible to
    a Python-level profiler (its time counts for the allocation that triggered it); this is
    how much of the process's time it takes (:func:`streamseq.service.memory.freeze_heap`).

    A worker of ``--workers`` (:func:`multiprocess`) cannot export a collector of its own:
    there the seconds go into a counter of prometheus_client's multiprocess files instead,
    brought up to date by :meth:`publish` (the service calls it every loop; the hook itself
    takes no lock), and the supervisor sums them over the host like every other counter.

    Examples
    --------
    >>> r = CollectorRegistry()
    >>> _ = GarbageCollectorTime(registry=r)
    >>> _ = gc.collect()
    >>> r.get_sample_value("streamseq_gc_seconds_total", {"generation": "2"}) > 0
    True
    """

    NAME = "streamseq_gc_seconds"
    HELP = "Seconds spent in Python's cyclic garbage collector, by the generation collected."
    _seconds = [0.0, 0.0, 0.0]  # per generation, since the hook was installed
    _started = [0.0]

    def __init__(self, registry: CollectorRegistry) -> None:
        if self._time not in gc.callbacks:
            gc.callbacks.append(self._time)
        self._published = list(self._seconds)
        self._counter: Counter | None = None
        if multiprocess():
            self._counter = Counter(self.NAME, self.HELP, ["generation"], registry=registry)
        else:
            registry.register(self)

    def publish(self) -> None:
        """Add the collector's seconds since the last call to the multiprocess counter (a
        no-op in a single process, where :meth:`collect` reads them when scraped)."""
        if self._counter is None:
            return
        for generation, seconds in enumerate(self._seconds):
            if seconds > self._published[generation]:
                self._counter.labels(generation=str(generation)).inc(
                    seconds - self._published[generation])
                self._published[generation] = seconds

    @classmethod
    def _time(cls, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            cls._started[0] = time.perf_counter()
        else:
            cls._seconds[info["generation"]] += time.perf_counter() - cls._started[0]

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(self.NAME, self.HELP, labels=["generation"])
        for generation, seconds in enumerate(self._seconds):
            family.add_metric([str(generation)], seconds)
        yield family


def multiprocess() -> bool:
    """Whether this process writes prometheus_client's multiprocess files (a worker)."""
    return bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))


class ServiceMetrics:
    """All metrics of one service process, in their own registry.

    Examples
    --------
    >>> m = ServiceMetrics(version="0.1.0", cell="gru", hidden=64)
    >>> m.events_consumed.labels(topic="sensors", kind="sensor").inc(3)
    >>> b'streamseq_events_consumed_total{kind="sensor",topic="sensors"} 3.0' in m.render()
    True
    """

    def __init__(self, *, version: str, cell: str, hidden: int,
                 registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry or CollectorRegistry()
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        self.gc_time = GarbageCollectorTime(registry=r)
        self.build_info = Info("streamseq_build", "Version and model architecture of this process.",
                               registry=r)
        self.build_info.info({"version": version, "cell": cell, "hidden": str(hidden)})
        self.up = Gauge("streamseq_broker_connected", "1 while the Kafka broker is reachable.",
                        registry=r, multiprocess_mode="livemin")
        self.events_consumed = Counter(
            "streamseq_events_consumed", "Records read from input topics.",
            ["topic", "kind"], registry=r)
        self.events_rejected = Counter(
            "streamseq_events_rejected",
            "Records that failed decoding or validation and went to the dead-letter topic.",
            ["topic", "reason"], registry=r)
        self.events_dropped = Counter(
            "streamseq_events_dropped",
            "Valid records dropped by the ordering policy (duplicate or too late), counted.",
            ["topic", "reason"], registry=r)
        self.dead_letters = Counter(
            "streamseq_dead_letters", "Records written to the dead-letter topic.", ["topic"],
            registry=r)
        self.predictions = Counter(
            "streamseq_predictions_published", "Prediction records produced.", ["kind"],
            registry=r)
        self.batch_seconds = Histogram(
            "streamseq_batch_processing_seconds",
            "Wall time to process one polled batch (decode, engine, produce).",
            buckets=BATCH_BUCKETS, registry=r)
        self.latency = Histogram(
            "streamseq_event_to_prediction_seconds",
            "From the input record's timestamp to its prediction being produced.",
            ["kind"], buckets=LATENCY_BUCKETS, registry=r)
        self.lag = Gauge(
            "streamseq_consumer_lag_messages", "End offset minus position, per partition.",
            ["topic", "partition"], registry=r,
            multiprocess_mode="livesum")
        self.train_loss = Gauge(
            "streamseq_train_loss", "Loss of the last optimizer step (z-scored MSE).", ["kind"],
            registry=r,
            multiprocess_mode="livemostrecent")
        self.grad_norm = Gauge(
            "streamseq_grad_norm", "Gradient norm of the last optimizer step, before clipping.",
            ["kind"], registry=r,
            multiprocess_mode="livemostrecent")
        self.updates = Counter(
            "streamseq_updates", "Optimizer steps by outcome (applied, skipped_nonfinite).",
            ["kind", "outcome"], registry=r)
        self.drift = Counter(
            "streamseq_drift_events", "Drift detections (ADWIN on per-key absolute error).",
            ["kind"], registry=r)
        self.keys = Gauge("streamseq_keys_held", "Keys with live state.", ["kind"], registry=r,
                          multiprocess_mode="livesum")
        self.keys_evicted = Counter(
            "streamseq_keys_evicted", "Keys whose state was evicted (idle or over capacity).",
            ["kind"], registry=r)
        self.abs_error = Counter(
            "streamseq_forecast_abs_error",
            "Sum of absolute one-step errors on the z-scored scale, by forecaster.",
            ["kind", "forecaster"], registry=r)
        self.anomalies = Counter(
            "streamseq_anomalies", "Values outside the anomaly interval of their one-step "
            "forecast.", ["kind"], registry=r)
        self.interval_coverage = Gauge(
            "streamseq_interval_coverage", "Share of values inside their one-step prediction "
            "interval since start.", ["kind"], registry=r,
            multiprocess_mode="livemin")
        self.interval_width = Gauge(
            "streamseq_interval_width", "Mean width of the one-step prediction interval since "
            "start (z-scored).", ["kind"], registry=r,
            multiprocess_mode="livemax")
        self.scored = Counter(
            "streamseq_forecast_scored", "Forecast values scored against their truth.",
            ["kind"], registry=r)
        self.mae = Gauge(
            "streamseq_mae", "Mean absolute one-step error since start (z-scored), by forecaster.",
            ["kind", "forecaster"], registry=r,
            multiprocess_mode="livemax")
        self.shards = Gauge("streamseq_shards_assigned", "Partitions (shards) owned.",
                            registry=r, multiprocess_mode="livesum")
        # text shards' levels: one series per shard (topic, partition), never overwritten
        # by another shard's
        self.text_lm_log_loss = Gauge(
            "streamseq_text_lm_log_loss",
            "Language model: prequential log-loss per character since start (nats; / ln 2 = "
            "bits per character).", SHARD_LABELS, registry=r,
            multiprocess_mode="livemostrecent")
        self.text_accuracy = Gauge(
            "streamseq_text_accuracy", "Classifier: prequential accuracy, since start (all) and "
            "over the recent window.", [*SHARD_LABELS, "window"], registry=r,
            multiprocess_mode="livemostrecent")
        self.text_macro_f1 = Gauge(
            "streamseq_text_macro_f1", "Classifier: prequential macro F1.",
            [*SHARD_LABELS, "window"], registry=r,
            multiprocess_mode="livemostrecent")
        self.text_log_loss = Gauge(
            "streamseq_text_log_loss", "Classifier: prequential log-loss (nats).",
            [*SHARD_LABELS, "window"], registry=r,
            multiprocess_mode="livemostrecent")
        self.text_pending_labels = Gauge(
            "streamseq_text_pending_labels", "Classifier: messages waiting for their label.",
            SHARD_LABELS, registry=r,
            multiprocess_mode="livemostrecent")
        self.rebalances = Counter(
            "streamseq_rebalances", "Assignments this replica received from its consumer "
            "group (each one a rebalance it took part in).", registry=r)
        self.offset_commits = Counter(
            "streamseq_offset_commits", "Offset commits by outcome (ok, failed).", ["outcome"],
            registry=r)
        self.producer_send_errors = Counter(
            "streamseq_producer_send_errors", "Records the producer failed to deliver, by "
            "destination topic.", ["topic"], registry=r)
        self.checkpoint_restores = Counter(
            "streamseq_checkpoint_restores", "Partitions taken over, by input topic and how "
            "their state was found: ok (a snapshot restored), none (no snapshot: a new shard), "
            "failed (snapshots exist, none readable).", ["topic", "outcome"], registry=r)
        self.checkpoint_seconds = Histogram(
            "streamseq_checkpoint_duration_seconds", "Wall time of flush + snapshot + commit.",
            buckets=CHECKPOINT_BUCKETS, registry=r)
        self.checkpoint_pause_seconds = Histogram(
            "streamseq_checkpoint_pause_seconds", "Time the stream stood still for one "
            "checkpoint: copying the shards' state (the write and the commit run in the "
            "background).", buckets=PAUSE_BUCKETS, registry=r)
        self.snapshots = Counter(
            "streamseq_snapshots", "Shard snapshots made durable, by kind: complete, or delta "
            "(only the keys changed since the snapshot it builds on).", ["kind"], registry=r)
        self.snapshot_bytes = Counter(
            "streamseq_snapshot_bytes", "Bytes of the shard snapshots made durable, by kind "
            "(complete, delta).", ["kind"], registry=r)
        self.checkpoints = Counter(
            "streamseq_checkpoints", "Checkpoints by outcome (ok, failed).", ["outcome"],
            registry=r)
        self._last_checkpoint = time.time()
        self.last_checkpoint_ts = Gauge(
            "streamseq_last_checkpoint_timestamp_seconds",
            "Unix time of the last durable checkpoint.", registry=r,
            multiprocess_mode="livemin")
        self.last_checkpoint_ts.set(self._last_checkpoint)
        self.checkpoint_age = Gauge(
            "streamseq_checkpoint_age_seconds", "Seconds since the last durable checkpoint.",
            registry=r,
            multiprocess_mode="livemax")
        self.checkpoint_age.set_function(lambda: time.time() - self._last_checkpoint)
        self._gauges = {  # the levels a shard may report (GaugeValue names)
            "streamseq_train_loss": self.train_loss, "streamseq_grad_norm": self.grad_norm,
            "streamseq_text_lm_log_loss": self.text_lm_log_loss,
            "streamseq_text_accuracy": self.text_accuracy,
            "streamseq_text_macro_f1": self.text_macro_f1,
            "streamseq_text_log_loss": self.text_log_loss,
            "streamseq_text_pending_labels": self.text_pending_labels}

    def gauge(self, name: str) -> Gauge:
        """The gauge called ``name`` (shards report levels by metric name)."""
        found = self._gauges.get(name)
        if found is None:
            raise KeyError(f"no gauge {name}")
        return found

    def declare(self, topics: list[tuple[str, str]], reasons: list[str]) -> None:
        """Create every labelled series at 0 up front (``(topic, kind)`` pairs), so that
        ``rate()`` and ``increase()`` see the first increment of rare counters."""
        kinds = sorted({k for _, k in topics})
        for topic, kind in topics:
            self.events_consumed.labels(topic=topic, kind=kind)
            self.dead_letters.labels(topic=topic)
            for reason in reasons:
                self.events_rejected.labels(topic=topic, reason=reason)
            for reason in ("duplicate", "late"):
                self.events_dropped.labels(topic=topic, reason=reason)
        for kind in kinds:
            self.predictions.labels(kind=kind)
            for outcome in ("applied", "skipped_nonfinite"):
                self.updates.labels(kind=kind, outcome=outcome)
            self.drift.labels(kind=kind)
            self.keys.labels(kind=kind)
            self.keys_evicted.labels(kind=kind)
            self.scored.labels(kind=kind)
            for forecaster in FORECASTERS:
                self.abs_error.labels(kind=kind, forecaster=forecaster)
            self.anomalies.labels(kind=kind)
        for snapshot in ("complete", "delta"):
            self.snapshots.labels(kind=snapshot)
            self.snapshot_bytes.labels(kind=snapshot)
        for outcome in ("ok", "failed"):
            self.checkpoints.labels(outcome=outcome)
            self.offset_commits.labels(outcome=outcome)
        for topic, _kind in topics:
            for outcome in RESTORE_OUTCOMES:
                self.checkpoint_restores.labels(topic=topic, outcome=outcome)

    def declare_outputs(self, topics: Sequence[str]) -> None:
        """Create the producer error series of the output topics at 0."""
        for topic in topics:
            self.producer_send_errors.labels(topic=topic)

    def set_level(self, name: str, value: float, labels: Mapping[str, str], topic: str,
                  partition: int) -> None:
        """Set a level a shard reports (``GaugeValue``); the gauges labelled per shard get
        the shard's ``topic`` and ``partition``."""
        gauge = self.gauge(name)
        if name in SHARD_GAUGES:
            labels = {**labels, "topic": topic, "partition": str(partition)}
        (gauge.labels(**labels) if labels else gauge).set(value)

    def forget_partition(self, topic: str, partition: int) -> None:
        """Remove the series of a partition this process no longer owns (lag, text levels).

        A worker cannot remove series from its multiprocess file: it sets the lag to 0 (its
        share of the host's sum) and leaves the text levels, which the partition's next
        owner on the host overrides (``livemostrecent``)."""
        if multiprocess():
            self.lag.labels(topic=topic, partition=str(partition)).set(0)
            return
        with contextlib.suppress(KeyError):
            self.lag.remove(topic, str(partition))
        for name in SHARD_GAUGES:
            gauge = self._gauges[name]
            for window in (("all",), ("recent",)) if name in WINDOWED else ((),):
                with contextlib.suppress(KeyError):
                    gauge.remove(topic, str(partition), *window)

    def checkpoint_done(self, seconds: float) -> None:
        self._last_checkpoint = time.time()
        self.last_checkpoint_ts.set(self._last_checkpoint)
        self.checkpoint_seconds.observe(seconds)
        self.checkpoints.labels(outcome="ok").inc()

    def render(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


def observe_many(histogram: Histogram, values: Sequence[float] | np.ndarray) -> None:
    """``histogram.observe(v)`` for every value, in one pass per bucket instead of one call
    per value (a histogram child without labels, or ``h.labels(...)``).

    Examples
    --------
    >>> from prometheus_client import CollectorRegistry
    >>> h = Histogram("x_seconds", "x", buckets=(0.1, 1.0), registry=CollectorRegistry())
    >>> observe_many(h, [0.05, 0.1, 0.5, 7.0])
    >>> [(s.labels["le"], s.value) for s in h.collect()[0].samples if s.name.endswith("bucket")]
    [('0.1', 2.0), ('1.0', 3.0), ('+Inf', 4.0)]
    """
    arr = np.asarray(values, dtype=np.float64)
    if arr.size == 0:
        return
    bounds = getattr(histogram, "_upper_bounds", None)
    buckets = getattr(histogram, "_buckets", None)
    total = getattr(histogram, "_sum", None)
    if bounds is None or buckets is None or total is None:  # another client version
        for v in arr.tolist():
            histogram.observe(v)
        return
    counts = np.bincount(np.searchsorted(np.asarray(bounds), arr, side="left"),
                         minlength=len(bounds))
    total.inc(float(arr.sum()))
    for i, c in enumerate(counts.tolist()[:len(bounds)]):
        if c:
            buckets[i].inc(c)
