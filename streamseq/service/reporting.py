"""Metrics reporting: what each pipeline step produced, added to the Prometheus registry."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

import numpy as np

from streamseq.metrics import ServiceMetrics, observe_many
from streamseq.pipeline import Applied

__all__ = ["MetricsReporter"]


class MetricsReporter:
    """Adds a step's increments (:class:`~streamseq.pipeline.MetricDeltas`) and levels to
    the metrics, and keeps the since-start MAE of each kind from the same counters.

    The series a step adds to (labelled by topic, kind, reason, forecaster: never by
    partition) are looked up once and kept (:meth:`_series`): ``labels()`` validates, sorts
    and locks on every call, ~5 µs each, and a step reports to ~15 series, which made the
    report ~0.2 ms of every partition's poll at 1,000 events/s (bench/e2e_notes.md). The
    levels labelled by partition (``step.gauges``) are not kept: a revoked partition's
    series are removed from the registry.

    Examples
    --------
    >>> from streamseq.pipeline import MetricDeltas
    >>> m = ServiceMetrics(version="0", cell="gru", hidden=8)
    >>> r = MetricsReporter(m)
    >>> step = Applied([], [], [], 3, MetricDeltas(consumed=3, scored=2, abs_error_model=1.0,
    ...                                           abs_error_persistence=2.0))
    >>> r.applied("sensors", "sensor", step)
    >>> r.applied("sensors", "sensor", step)
    >>> m.mae.labels(kind="sensor", forecaster="persistence")._value.get()
    1.0
    >>> m.events_consumed.labels(topic="sensors", kind="sensor")._value.get()
    6.0
    """

    def __init__(self, metrics: ServiceMetrics) -> None:
        self.metrics = metrics
        # since-start sums per kind: |z error| per forecaster, values scored, and the
        # one-step intervals scored, covered and their z-scored widths
        self._errors: defaultdict[str, defaultdict[str, float]] = defaultdict(
            lambda: defaultdict(float))
        self._kinds: set[str] = set()  # kinds whose keys_held was set
        self._kept: dict[tuple[Any, tuple[tuple[str, str], ...]], Any] = {}

    def _series(self, metric: Any, **labels: str) -> Any:
        """``metric.labels(**labels)``, looked up the first time only."""
        key = (metric, tuple(labels.items()))
        series = self._kept.get(key)
        if series is None:
            series = self._kept[key] = metric.labels(**labels)
        return series

    def applied(self, topic: str, kind: str, step: Applied, partition: int = 0) -> None:
        m, d, series = self.metrics, step.deltas, self._series
        series(m.events_consumed, topic=topic, kind=kind).inc(d.consumed)
        for reason, n in d.rejected.items():
            series(m.events_rejected, topic=topic, reason=reason).inc(n)
        if step.dead_letters:
            series(m.dead_letters, topic=topic).inc(len(step.dead_letters))
        for reason, n in d.dropped.items():
            series(m.events_dropped, topic=topic, reason=reason).inc(n)
        if d.predictions:
            series(m.predictions, kind=kind).inc(d.predictions)
            now_ms = time.time() * 1000.0
            stamps = np.fromiter((p.source_timestamp or 0 for p in step.predictions),
                                 dtype=np.float64, count=len(step.predictions))
            stamps = stamps[stamps > 0]
            observe_many(series(m.latency, kind=kind),
                         np.maximum(0.0, now_ms - stamps) / 1000.0)
        if d.updates_applied:
            series(m.updates, kind=kind, outcome="applied").inc(d.updates_applied)
        if d.updates_skipped:
            series(m.updates, kind=kind, outcome="skipped_nonfinite").inc(d.updates_skipped)
        if d.drift_events:
            series(m.drift, kind=kind).inc(d.drift_events)
        if d.evicted:
            series(m.keys_evicted, kind=kind).inc(d.evicted)
        if d.scored:
            errors = {"model": d.abs_error_model, "persistence": d.abs_error_persistence,
                      **d.abs_error_forecasters}
            e = self._errors[kind]
            for name, value in errors.items():
                series(m.abs_error, kind=kind, forecaster=name).inc(value)
                e[name] += value
            series(m.scored, kind=kind).inc(d.scored)
            e["scored"] += d.scored
            for name in errors:
                series(m.mae, kind=kind, forecaster=name).set(e[name] / e["scored"])
        if d.anomalies:
            series(m.anomalies, kind=kind).inc(d.anomalies)
        if d.interval_scored:
            e = self._errors[kind]
            e["interval_scored"] += d.interval_scored
            e["interval_covered"] += d.interval_covered
            e["interval_width"] += d.interval_width
            series(m.interval_coverage, kind=kind).set(e["interval_covered"]
                                                       / e["interval_scored"])
            series(m.interval_width, kind=kind).set(e["interval_width"] / e["interval_scored"])
        for g in step.gauges:
            m.set_level(g.name, g.value, g.labels, topic, partition)

    def levels(self, keys_held: Iterable[tuple[str, int]]) -> None:
        """Keys held per kind, summed over the owned shards (``(kind, keys)`` pairs); 0 for
        a kind whose shards have all gone (revoked), so that sums over processes hold."""
        total: dict[str, int] = dict.fromkeys(self._kinds, 0)
        for kind, n in keys_held:
            total[kind] = total.get(kind, 0) + n
        self._kinds.update(total)
        for kind, n in total.items():
            self._series(self.metrics.keys, kind=kind).set(n)
        self.metrics.gc_time.publish()
