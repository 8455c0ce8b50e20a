"""The numeric and the text engine behind one :class:`~streamseq.pipeline.ShardEngine`.

:class:`NumericShard` wraps :class:`~streamseq.engine.Engine` (sensor and price topics),
:class:`TextShard` wraps :class:`~streamseq.text.engine.TextEngine` (text topics). Each turns
its engine's output into serialised prediction records and the metric increments of the call,
so the service, the backtest and the tests treat every shard alike.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from streamseq.config import EngineConfig
from streamseq.engine import Engine, EngineOutput
from streamseq.events.errors import EventError
from streamseq.forecast.aggregate import FORECASTERS
from streamseq.pipeline import GaugeValue, MetricDeltas, Prediction, Record, ShardOutput
from streamseq.predictions import PredictionEncoder, encode_json, prediction_id

__all__ = ["NumericShard", "TextShard", "engine_deltas"]


def engine_deltas(out: EngineOutput) -> MetricDeltas:
    """The metric increments of one :meth:`Engine.process` call, from its output alone:
    update points reached, drift detections, evictions, and the one-step errors scored
    (z-scored by each forecast's unit scale), model and persistence.

    Examples
    --------
    >>> from streamseq.config import LearnerConfig
    >>> from streamseq.events.schema import Event
    >>> eng = Engine(EngineConfig(learner=LearnerConfig(k1=1, k2=2, batch_windows=1)))
    >>> before = eng.stats.z_scored
    >>> d = engine_deltas(eng.process([Event("sensor", "a", 60_000 * i, {"x": float(i % 3)})
    ...                                for i in range(20)]))
    >>> d.scored == eng.stats.z_scored - before, d.updates_applied == eng.stats.updates_applied
    (True, True)
    """
    d = MetricDeltas()
    for res in out.updates:
        if res.applied:
            d.updates_applied += 1
        else:
            d.updates_skipped += 1
        d.last_loss = res.loss
        d.last_grad_norm = res.grad_norm
    d.drift_events = int(out.drift_events)
    d.evicted = int(out.evicted)
    d.anomalies = int(out.anomalies)
    if out.err_model.size:
        em = out.err_model[:, 0, :]
        ok = ~np.isnan(em)
        if ok.any():
            sc = out.scale[:, 0, :][ok]
            d.abs_error_model = float((np.abs(em[ok]) / sc).sum())
            d.abs_error_persistence = float((np.abs(out.err_persistence[:, 0, :][ok]) / sc).sum())
            d.scored = int(ok.sum())
    _forecaster_deltas(out, d)
    return d


def _forecaster_deltas(out: EngineOutput, d: MetricDeltas) -> None:
    """The experts' and the mixture's z-scored one-step errors, and the one-step intervals
    scored (covered or not, z-scored width), from the call's output."""
    if not out.forecaster_errors.size:
        return
    unit = out.scale[:, 0, :]
    z = np.abs(out.forecaster_errors) / unit[:, :, None]
    sums = np.nansum(z, axis=(0, 1))
    for f, name in enumerate(FORECASTERS):
        if name not in ("model", "persistence"):
            d.abs_error_forecasters[name] += float(sums[f])
    hit = out.covered[:, :, 0]
    d.interval_scored = int((~np.isnan(hit)).sum())
    d.interval_covered = int(np.nansum(hit))
    d.interval_width = float(np.nansum(out.covered[:, :, 1] / unit))


class NumericShard:
    """A sensor or price shard: :class:`Engine` plus its prediction encoder.

    Parameters
    ----------
    config
        The engine configuration (its ``kind`` is the shard's).
    engine
        An existing engine to wrap (a fresh one from ``config`` by default).
    """

    def __init__(self, config: EngineConfig | None = None, engine: Engine | None = None) -> None:
        self.engine = engine if engine is not None else Engine(config)
        self.kind = self.engine.config.kind
        self.encoder = PredictionEncoder(self.kind)

    def process(self, events: Sequence[Any], sources: Sequence[Record]) -> ShardOutput:
        out = self.engine.process(events)
        preds = self.encoder.encode(events, out, self.engine.target_names, sources)
        anomalies = (self.encoder.anomalies(events, out, self.engine.target_names, sources)
                     if out.anomalies else [])
        deltas = engine_deltas(out)
        gauges = []
        if deltas.last_loss is not None and deltas.last_loss == deltas.last_loss:
            gauges.append(GaugeValue("streamseq_train_loss", deltas.last_loss,
                                     {"kind": self.kind}))
        if deltas.last_grad_norm is not None and deltas.last_grad_norm == deltas.last_grad_norm:
            gauges.append(GaugeValue("streamseq_grad_norm", deltas.last_grad_norm,
                                     {"kind": self.kind}))
        return ShardOutput(preds, anomalies, out.rejected, out.dropped, deltas, gauges)

    def state_dict(self, changed_only: bool = False) -> dict[str, Any]:
        return self.engine.state_dict(changed_only)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.engine.load_state_dict(state)

    def clear_changes(self) -> None:
        self.engine.clear_changes()

    def changed_share(self) -> float:
        return self.engine.changed_share()

    @property
    def model_version(self) -> int:
        return self.engine.model_version

    @property
    def keys_held(self) -> int:
        return self.engine.keys_held


class TextShard:
    """A text shard: :class:`~streamseq.text.engine.TextEngine` (language model and/or
    classifier). Each text message gets a ``text`` record (surprise score, class
    probabilities), each label learned a ``label`` record; a label for an unknown message
    is refused (``bad_label``) before it changes any state.

    Parameters
    ----------
    config
        A :class:`~streamseq.text.config.TextEngineConfig` (default: the language model).
    engine
        An existing engine to wrap.
    """

    kind = "text"

    def __init__(self, config: Any = None, engine: Any = None) -> None:
        if engine is None:
            from streamseq.text.engine import TextEngine

            engine = TextEngine(config)
        self.engine = engine

    def process(self, events: Sequence[Any], sources: Sequence[Record]) -> ShardOutput:
        engine = self.engine
        result = ShardOutput()
        for i, (ev, outs) in enumerate(zip(events, engine.process_each(events), strict=True)):
            if isinstance(outs, EventError):
                result.rejected.append((i, outs))
                continue
            src = sources[i]
            version = self.model_version
            base = prediction_id(src.topic, src.partition, src.offset)
            key = ev.key.encode()
            for j, out in enumerate(outs):
                rec = dict(out)
                rec["message_id"] = rec.pop("id", None)
                rec["id"] = base + (f"#{j}" if j else "")
                rec["model_version"] = version
                rec["source"] = {"topic": src.topic, "partition": src.partition,
                                 "offset": src.offset}
                result.predictions.append(Prediction(key, encode_json(rec), src.timestamp))
        result.gauges = self._gauges()
        return result

    def _gauges(self) -> list[GaugeValue]:
        """The prequential metrics of the language model and the classifier (levels)."""
        summary = self.engine.summary()
        out = []
        lm = summary.get("lm")
        if isinstance(lm, dict) and lm.get("bits_per_char") is not None:
            out.append(GaugeValue("streamseq_text_lm_log_loss",
                                  float(lm["bits_per_char"]) * math.log(2)))
        clf = summary.get("classifier")
        if isinstance(clf, dict) and clf.get("n"):
            for window, m in (("all", clf), ("recent", clf.get("window", {}))):
                if isinstance(m, dict) and m.get("n"):
                    labels = {"window": window}
                    out.append(GaugeValue("streamseq_text_accuracy", float(m["accuracy"]),
                                          labels))
                    out.append(GaugeValue("streamseq_text_macro_f1", float(m["macro_f1"]),
                                          labels))
                    out.append(GaugeValue("streamseq_text_log_loss", float(m["log_loss"]),
                                          labels))
            out.append(GaugeValue("streamseq_text_pending_labels",
                                  float(self.engine.stats.clf_pending)))
        return [g for g in out if math.isfinite(g.value)]

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = self.engine.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.engine.load_state_dict(state)

    @property
    def model_version(self) -> int:
        s = self.engine.stats
        return int(s.lm_updates + s.clf_updates)

    @property
    def keys_held(self) -> int:
        return int(self.engine.stats.lm_keys)
