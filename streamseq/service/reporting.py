"""Metrics reporting: what each pipeline step produced, added to the Prometheus registry."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterable

import numpy as np

from streamseq.metrics import ServiceMetrics, observe_many
from streamseq.pipeline import Applied

__all__ = ["MetricsReporter"]


class MetricsReporter:
    """Adds a step's increments (:class:`~streamseq.pipeline.MetricDeltas`) and levels to
    the metrics, and keeps the since-start MAE of each kind from the same counters.

    Examples
    --------
    >>> from streamseq.pipeline import MetricDeltas
    >>> m = ServiceMetrics(version="0", cell="gru", hidden=8)
    >>> r = MetricsReporter(m)
    >>> step = Applied([], [], [], 3, MetricDeltas(consumed=3, scored=2, abs_error_model=1.0,
    ...                                           abs_error_persistence=2.0))
    >>> r.applied("sensors", "sensor", step)
    >>> m.mae.labels(kind="sensor", forecaster="persistence")._value.get()
    1.0
    """

    def __init__(self, metrics: ServiceMetrics) -> None:
        self.metrics = metrics
        # since-start sums per kind: |z error| per forecaster, values scored, and the
        # one-step intervals scored, covered and their z-scored widths
        self._errors: defaultdict[str, defaultdict[str, float]] = defaultdict(
            lambda: defaultdict(float))
        self._kinds: set[str] = set()  # kinds whose keys_held was set

    def applied(self, topic: str, kind: str, step: Applied, partition: int = 0) -> None:
        m, d = self.metrics, step.deltas
        m.events_consumed.labels(topic=topic, kind=kind).inc(d.consumed)
        for reason, n in d.rejected.items():
            m.events_rejected.labels(topic=topic, reason=reason).inc(n)
        if step.dead_letters:
            m.dead_letters.labels(topic=topic).inc(len(step.dead_letters))
        for reason, n in d.dropped.items():
            m.events_dropped.labels(topic=topic, reason=reason).inc(n)
        if d.predictions:
            m.predictions.labels(kind=kind).inc(d.predictions)
            now_ms = time.time() * 1000.0
            stamps = np.fromiter((p.source_timestamp or 0 for p in step.predictions),
                                 dtype=np.float64, count=len(step.predictions))
            stamps = stamps[stamps > 0]
            observe_many(m.latency.labels(kind=kind),
                         np.maximum(0.0, now_ms - stamps) / 1000.0)
        if d.updates_applied:
            m.updates.labels(kind=kind, outcome="applied").inc(d.updates_applied)
        if d.updates_skipped:
            m.updates.labels(kind=kind, outcome="skipped_nonfinite").inc(d.updates_skipped)
        if d.drift_events:
            m.drift.labels(kind=kind).inc(d.drift_events)
        if d.evicted:
            m.keys_evicted.labels(kind=kind).inc(d.evicted)
        if d.scored:
            errors = {"model": d.abs_error_model, "persistence": d.abs_error_persistence,
                      **d.abs_error_forecasters}
            e = self._errors[kind]
            for name, value in errors.items():
                m.abs_error.labels(kind=kind, forecaster=name).inc(value)
                e[name] += value
            m.scored.labels(kind=kind).inc(d.scored)
            e["scored"] += d.scored
            for name in errors:
                m.mae.labels(kind=kind, forecaster=name).set(e[name] / e["scored"])
        if d.anomalies:
            m.anomalies.labels(kind=kind).inc(d.anomalies)
        if d.interval_scored:
            e = self._errors[kind]
            e["interval_scored"] += d.interval_scored
            e["interval_covered"] += d.interval_covered
            e["interval_width"] += d.interval_width
            m.interval_coverage.labels(kind=kind).set(e["interval_covered"]
                                                      / e["interval_scored"])
            m.interval_width.labels(kind=kind).set(e["interval_width"] / e["interval_scored"])
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
            self.metrics.keys.labels(kind=kind).set(n)
        self.metrics.gc_time.publish()
