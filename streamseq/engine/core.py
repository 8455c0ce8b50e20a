"""The engine: one shard's online forecaster, fed events in stream order.

:class:`Engine` is the public face (the service, the backtest and the benches use it); it
builds a :class:`Shard` once the shard's value names are known (configured, or from the
first event). A shard is a short orchestrator over parts with one job each:

* ordering (:mod:`streamseq.engine.ordering`): validation, the duplicate/late policy and
  where update points fall;
* features (:mod:`streamseq.features.pipeline`): per-key scaling, time gaps, calendar;
* the forecaster (:mod:`streamseq.models.kernels`): per-key compiled GRU/LSTM steps;
* scoring (:mod:`streamseq.evaluation.scoring`, :mod:`streamseq.evaluation.drift`);
* windows and the learner (:mod:`streamseq.learner`): TBPTT windows, update points;
* the key table (:mod:`streamseq.state.table`): slots, hidden states, every part's per-key
  arrays, eviction.

An optimizer step happens at update points defined by the stream (every ``batch_windows``
due windows, ``max_segment`` events, or before a key's second due window), so results do
not depend on how events are chunked into calls.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from streamseq.config import EngineConfig
from streamseq.engine.advance import DRIFT_BOOST, DRIFT_NONE, DRIFT_RESET, advance_segment
from streamseq.engine.ordering import (
    APPLIED,
    CLOSED,
    DONE,
    FULL,
    NEED_SLOTS,
    VERDICTS,
    OrderingPolicy,
    Poll,
    plan_segment,
    read_poll,
    row_problem,
    values_digest,
)
from streamseq.engine.output import EngineOutput, EngineStats
from streamseq.engine.peek import peek_steps
from streamseq.evaluation.drift import DriftDetector
from streamseq.evaluation.metrics import ErrorTotals, summarize
from streamseq.evaluation.scoring import Scoring
from streamseq.events.errors import EventError
from streamseq.events.schema import Event
from streamseq.exceptions import CheckpointError
from streamseq.features.pipeline import FeaturePipeline
from streamseq.features.transforms import CODES, forward_transform
from streamseq.forecast.aggregate import ExpertAggregator
from streamseq.learner.tbptt import OnlineLearner
from streamseq.learner.windows import PendingWindows, WindowRings
from streamseq.models.flat import FlatWeights
from streamseq.models.recurrent import RecurrentForecaster
from streamseq.models.seeding import seeded_init
from streamseq.state.table import KeyTable

__all__ = ["Engine", "Shard", "FORMAT_VERSION"]

log = logging.getLogger(__name__)

FORMAT_VERSION = 2
_ROW_PROBLEMS = {1: "missing_value", 2: "out_of_range", 3: "non_finite"}  # row_problem's
_DRIFT_ACTIONS = {"none": DRIFT_NONE, "reset": DRIFT_RESET, "boost_lr": DRIFT_BOOST}


@dataclass
class _Plan:
    """The planner's arrays for one poll: which events are valid, each poll key's slot, and
    per event its verdict and, when applied, slot, position, gap, sequence number and due
    flag (:func:`~streamseq.engine.ordering.plan_segment`)."""

    valid: np.ndarray
    slot_of_key: np.ndarray
    verdict: np.ndarray
    steps: tuple[np.ndarray, ...]
    n_free: np.ndarray
    applied: np.ndarray
    new_keys: np.ndarray

    @classmethod
    def empty(cls, n: int, n_keys: int) -> _Plan:
        return cls(np.zeros(n, np.bool_), np.full(n_keys, -1, np.int64), np.zeros(n, np.int8),
                   tuple(np.zeros(n, dtype=np.int64) for _ in range(4)) + (
                       np.zeros(n, dtype=np.bool_),),
                   np.zeros(1, np.int64), np.zeros(n, np.int64), np.zeros(n_keys, np.int64))


@dataclass
class _OneEvent:
    """Reused arrays of :meth:`Shard.process_one`: a poll of one event, its plan and its
    output."""

    key_index: np.ndarray
    ts: np.ndarray
    raw: np.ndarray
    id_digest: np.ndarray
    plan: _Plan
    out: EngineOutput

    @classmethod
    def build(cls, n_values: int, horizon: int, n_targets: int) -> _OneEvent:
        return cls(np.zeros(1, np.int64), np.zeros(1, np.int64), np.zeros((1, n_values)),
                   np.zeros(1, np.uint64), _Plan.empty(1, 1),
                   EngineOutput.empty(1, horizon, n_targets))


class Shard:
    """The parts of one engine, built for known value names.

    Parameters
    ----------
    config
        Engine configuration.
    names
        Value names, targets first.
    """

    def __init__(self, config: EngineConfig, names: Sequence[str]) -> None:
        self.config = config
        targets = tuple(config.targets) if config.targets else tuple(names)
        self.names: tuple[str, ...] = targets + tuple(n for n in names if n not in targets)
        self.targets = targets
        mc, lc = config.model, config.learner
        t, h = len(targets), mc.horizon
        self.features = FeaturePipeline(config, self.names, t)
        self.level_targets = self.features.target_codes == CODES["level"]
        with seeded_init(lc.seed):  # the caller's torch random state is left alone
            self.model = RecurrentForecaster(
                self.features.n_inputs, t, mc,
                residual_mask=[c != CODES["logret"] for c in self.features.target_codes])
        self.model.eval()
        self.weights = FlatWeights(self.model)
        state_size = self.model.state_size
        self.table = KeyTable(mc.layers, state_size)
        self.ordering = OrderingPolicy(config.state.late_tolerance_ms,
                                       config.state.recent_events)
        self.scoring = Scoring(h, t)
        self.forecast = ExpertAggregator(config.forecast, self.features.target_codes, h)
        self.mixing = bool(config.forecast.experts)
        self.drift = DriftDetector(config.drift)
        self.windows = WindowRings(lc.k1, lc.k2, h, self.features.n_inputs, t, mc.layers,
                                   state_size)
        for name, part in (("ordering", self.ordering.arrays),
                           ("features", self.features.arrays),
                           ("scoring", self.scoring.arrays), ("forecast", self.forecast.state),
                           ("drift", self.drift.arrays),
                           ("windows", self.windows.arrays)):
            self.table.attach(name, part)
        pending = PendingWindows(lc.batch_windows, lc.k2, self.features.n_inputs, h, t,
                                 mc.layers, state_size)
        self.learner = OnlineLearner(self.weights, lc, pending, mc.dropout)
        # [segment id, events in segment, windows in segment, stream sequence number]
        self.counters = np.zeros(4, dtype=np.int64)
        self.max_ts = np.iinfo(np.int64).min
        self._args: tuple[Any, ...] = ()
        self._args_generation = -1
        self._one = _OneEvent.build(len(self.names), mc.horizon, t)

    # ------------------------------------------------------------------ one call
    def process(self, events: Sequence[Event], stats: EngineStats, learning: bool,
                scoring: bool) -> EngineOutput:
        cfg = self.config
        fc = cfg.features
        poll = read_poll(events, cfg.kind, self.names, fc.max_abs_value,
                         fc.missing == "reject")
        n = len(poll)
        out = EngineOutput.empty(n, cfg.model.horizon, len(self.targets))
        plan = _Plan.empty(n, len(poll.keys))
        refused = len(poll.rejected) - poll.rejected.count(None)  # no Python pass per event
        plan.valid[:] = [r is None for r in poll.rejected] if refused else True
        plan.slot_of_key[:] = [self.table.keys.get(k, -1) for k in poll.keys]
        self._apply(poll, plan, out, stats, learning, scoring, aggregate=True)
        verdict = plan.verdict
        applied = np.flatnonzero(verdict == APPLIED)
        for i, err in enumerate(poll.rejected if refused else ()):
            if err is not None:
                out.rejected.append((i, err))
                stats.rejected[err.reason] += 1
        for i in np.flatnonzero(verdict > APPLIED).tolist():
            reason_name = VERDICTS.get(int(verdict[i]))
            if reason_name is not None:
                out.dropped.append((i, reason_name))
                stats.dropped[reason_name] += 1
        stats.events += n
        stats.accepted += int(applied.size)
        out.keep(applied)
        return out

    def process_one(self, key: str, raw: np.ndarray, ts: int, stats: EngineStats,
                    learning: bool, scoring: bool) -> np.ndarray | None:
        """One event of ``key`` (values ``raw`` in :attr:`names` order, NaN: missing) by
        the same steps as :meth:`process`, without the experts' aggregation; returns the
        model's forecast ``[horizon, targets]`` (a view, valid until the next call), or
        ``None`` when the event was rejected or dropped."""
        fc = self.config.features
        problem = row_problem(raw, fc.max_abs_value, fc.missing == "reject")
        if problem:
            stats.events += 1
            stats.rejected[_ROW_PROBLEMS[problem]] += 1
            return None
        one = self._one
        one.raw[0] = raw
        one.ts[0] = ts
        poll = Poll([key], one.key_index, one.ts, one.raw, values_digest(one.raw),
                    one.id_digest, [None])
        plan = one.plan
        plan.valid[0] = True
        plan.slot_of_key[0] = self.table.keys.get(key, -1)
        plan.verdict[0] = 0
        one.out.updates.clear()
        self._apply(poll, plan, one.out, stats, learning, scoring, aggregate=False)
        stats.events += 1
        if plan.verdict[0] != APPLIED:
            reason_name = VERDICTS.get(int(plan.verdict[0]))
            if reason_name is not None:
                stats.dropped[reason_name] += 1
            return None
        stats.accepted += 1
        return one.out.yhat[0]

    def _apply(self, poll: Poll, plan: _Plan, out: EngineOutput, stats: EngineStats,
               learning: bool, scoring: bool, aggregate: bool) -> None:
        """Plan and apply the poll's valid events segment by segment, with the update
        points between (each event's verdict lands in ``plan.verdict``)."""
        cfg = self.config
        lc = cfg.learner
        start = 0
        while True:
            plan.n_free[0] = self.table.n_free
            o, c = self.ordering.arrays, self.table.core
            stop, reason, n_applied, n_new = plan_segment(
                start, plan.slot_of_key, poll.key_index, poll.ts, poll.values_digest,
                poll.id_digest, plan.valid, c["count"], c["newest_ts"], c["last_seen"],
                o["due_segment"], o["recent_ts"], o["recent_values"], o["recent_ids"],
                o["cursor"], self.table.free, plan.n_free, self.counters,
                self.ordering.tolerance, learning, lc.k1, cfg.model.horizon,
                lc.batch_windows, lc.max_segment, plan.verdict, *plan.steps, plan.applied,
                plan.new_keys)
            self.table.n_free = int(plan.n_free[0])
            if n_new:
                new = plan.new_keys[:n_new]
                self.table.register([poll.keys[k] for k in new.tolist()],
                                    plan.slot_of_key[new])
            if n_applied:
                self._advance(poll, plan.applied[:n_applied], plan.steps, out, stats, scoring,
                              aggregate)
            start = stop
            if reason == NEED_SLOTS:
                self.table.grow(self.table.capacity * 2)
            elif reason in (FULL, CLOSED):
                self._update_point(out, stats, poll, plan.slot_of_key)
            elif reason == DONE:
                self.table.mark_changed(plan.slot_of_key)  # the rows the poll wrote
                return

    # ------------------------------------------------------------------ peeking
    def last_forecast(self, key: str) -> np.ndarray:
        """The model's forecast ``[horizon, targets]`` made at ``key``'s last event (NaN
        for a key not held or one that has shown no target yet)."""
        slot = self.table.keys.get(key)
        h = self.config.model.horizon
        if slot is not None:
            count = self.table.core["count"][slot]
            if count:
                return self.scoring.arrays["forecast"][slot, (count - 1) % h].copy()
        return np.full((h, len(self.targets)), np.nan)

    def peek(self, key: str, raw: np.ndarray, ts: np.ndarray, roll: bool) -> np.ndarray:
        """The model's forecasts after hypothetical events of ``key``; nothing changes
        (see :func:`streamseq.engine.peek.peek_steps`)."""
        slot = self.table.keys.get(key)
        f = self.features.arrays
        rows = f.row_copy(slot)
        if slot is None:
            state = np.zeros(self.table.hidden.shape[1:], dtype=np.float32)
            position, newest = 0, int(np.iinfo(np.int64).min)
        else:
            state = self.table.hidden[slot].copy()
            position = int(self.table.core["count"][slot])
            newest = int(self.table.core["newest_ts"][slot])
        feat, feat_opts, _, _, _, model, model_opts, *_ = self._kernel_args()
        out = np.full((raw.shape[0], self.config.model.horizon, len(self.targets)), np.nan)
        peek_steps(np.ascontiguousarray(raw, dtype=np.float64),
                   np.ascontiguousarray(ts, dtype=np.int64), position, newest, roll,
                   self.last_forecast(key)[0] if roll else np.zeros(len(self.targets)), state,
                   (feat[0], rows["last_raw"], rows["count"], rows["mean"], rows["m2"],
                    rows["frozen"], rows["gap_ema"]), feat_opts, model, model_opts, out)
        return out

    def _kernel_args(self) -> tuple[Any, ...]:
        """The parts' arrays and settings as the compiled path takes them (rebuilt only when
        the table replaced its arrays)."""
        if self._args_generation != self.table.generation:
            cfg = self.config
            fc, lc, dc = cfg.features, cfg.learner, cfg.drift
            f, s, d, w = (self.features.arrays, self.scoring.arrays, self.drift.arrays,
                          self.windows.arrays)
            wts, lay = self.weights, self.weights.layout
            self._args = (
                (self.features.codes, f["last_raw"], f["count"], f["mean"], f["m2"],
                 f["frozen"], f["gap_ema"]),
                (self.features.fixed, int(fc.fixed_warmup), float(fc.clip),
                 float(fc.target_clip), bool(fc.dt), bool(fc.calendar), self.level_targets),
                (s["forecast"], s["unit"], s["persistence"], s["m_abs"], s["m_sq"],
                 s["p_abs"], s["p_sq"], s["cnt"]),
                (d["n"], d["stats"]),
                (self.drift.enabled, _DRIFT_ACTIONS[dc.action], *self.drift.params),
                (wts.theta, wts.theta_t, lay.offsets, lay.t_offsets, wts.residual),
                (lay.cell, lay.hidden, lay.head_offsets[0], lay.head_t_offset),
                (w["x"], w["y"], w["mask"], w["start_state"], w["start_at"]),
                lc.k1, lc.k2, self.learner.pending.arrays())
            self._args_generation = self.table.generation
        return self._args

    def _advance(self, poll: Poll, rows: np.ndarray, plan: tuple[np.ndarray, ...],
                 out: EngineOutput, stats: EngineStats, scoring: bool, aggregate: bool) -> None:
        """Run the compiled per-event path over one segment's applied events."""
        dc = self.config.drift
        slot, position, gap, seq, due = plan
        ev = (rows, slot, position, gap, poll.ts, seq, due)
        feat, feat_opts, score, drift, drift_opts, model, model_opts, win, k1, k2, pend = \
            self._kernel_args()
        # running sums continue in the kernel, event by event: the same bits however the
        # stream was cut into calls and segments
        totals = np.array([stats.z_abs_model, stats.z_abs_persistence, 0.0, 0.0, 0.0])
        advance_segment(
            ev, poll.raw, self.table.hidden, feat, feat_opts, score, scoring, drift,
            drift_opts, model, model_opts, win, (True, k1, k2), pend,
            (out.yhat, out.yhat_z, out.err_model, out.err_persistence, out.scale,
             out.target_ts, out.version, out.z_mean, out.z_std),
            totals, self.learner.applied)
        stats.z_abs_model = float(totals[0])
        stats.z_abs_persistence = float(totals[1])
        if aggregate:
            self._aggregate(poll, rows, slot[rows], out, scoring)
        stats.z_scored += int(totals[2])
        stats.drift_events += int(totals[3])
        out.drift_events += int(totals[3])
        if totals[4]:
            self.learner.boost(dc.boost_factor, dc.boost_updates)
        self.max_ts = max(self.max_ts, int(poll.ts[rows].max()))

    def _aggregate(self, poll: Poll, rows: np.ndarray, slots: np.ndarray, out: EngineOutput,
                   scoring: bool) -> None:
        """The experts, their mixture, intervals and anomaly flags for the segment's events
        (in stream order, after the model forecast them)."""
        t = len(self.targets)
        model = out.yhat[rows]
        agg = self.forecast.process(slots, poll.ts[rows], poll.raw[rows, :t], model,
                                    weights=self.config.forecast.weights, scoring=scoring)
        out.model_yhat[rows] = model
        if self.mixing:
            out.yhat[rows] = agg.yhat
        out.lo[rows], out.hi[rows] = agg.lo, agg.hi
        out.anomaly[rows], out.checked[rows] = agg.anomaly, agg.checked
        if scoring:  # outside scoring (a warm-up) nothing is counted
            out.forecaster_errors[rows] = agg.errors
            out.covered[rows] = agg.covered
        if agg.weights is not None:
            if out.weights is None:
                out.weights = np.full((len(out.yhat), *agg.weights.shape[1:]), np.nan)
            out.weights[rows] = agg.weights
        if scoring:
            out.anomalies += int(agg.anomaly.sum())

    def _update_point(self, out: EngineOutput, stats: EngineStats, poll: Poll,
                      slot_of_key: np.ndarray) -> None:
        res = self.learner.update()
        if res.windows:
            out.updates.append(res)
            stats.last_loss = res.loss
            stats.last_grad_norm = res.grad_norm
            if res.applied:
                stats.updates_applied += 1
            else:
                stats.updates_skipped += 1
        self.counters[0] += 1
        self.counters[1:3] = 0
        gone = self._evict(stats)
        out.evicted += len(gone)
        if gone:
            index = {k: i for i, k in enumerate(poll.keys)}
            for key in gone:
                if key in index:
                    slot_of_key[index[key]] = -1

    def _evict(self, stats: EngineStats) -> list[str]:
        sc = self.config.state
        ttl = None if sc.idle_ttl_s is None else int(sc.idle_ttl_s * 1000)
        slots = self.table.eviction_candidates(sc.max_keys, ttl, int(self.max_ts))
        if slots.size == 0:
            return []
        self.scoring.forget(slots)
        self.forecast.forget(slots)
        gone = self.table.evict(slots)
        stats.evicted += len(gone)
        return gone

    # ------------------------------------------------------------------ offline warm-up
    def fit_scaler(self, events: Sequence[Event]) -> None:
        """Fixed scaling: set each key's statistics from ``events`` and freeze them."""
        by_key: dict[str, list[Event]] = {}
        for e in events:
            by_key.setdefault(e.key, []).append(e)
        f = self.features.arrays
        for key, evs in by_key.items():
            raw = np.array([[e.values.get(n) for n in self.names] for e in evs],
                           dtype=np.float64)
            prev = np.vstack([np.full((1, raw.shape[1]), np.nan), raw[:-1]])
            u = forward_transform(self.features.codes, np.nan_to_num(raw), prev)
            u[np.isnan(raw)] = np.nan
            ts = np.array([e.ts_ms for e in evs], dtype=np.float64)
            gap = np.log1p(np.maximum(np.diff(ts), 0) / 1000.0)
            slot = int(self.table.slots_for([key])[0])
            for j, col in enumerate([u[:, j] for j in range(u.shape[1])] + [gap]):
                col = col[~np.isnan(col)]
                f["count"][slot, j] = len(col)
                f["mean"][slot, j] = col.mean() if len(col) else 0.0
                f["m2"][slot, j] = ((col - col.mean()) ** 2).sum() if len(col) else 0.0
            f["frozen"][slot] = True

    def reset_streams(self, keep_scalers: bool = True) -> None:
        """Forget every key's stream position, keep the weights (and the scalers)."""
        f = self.features.arrays
        kept = {n: f[n].copy() for n in ("count", "mean", "m2", "frozen")}
        self.table.reset(self.table.live_slots())
        if keep_scalers:
            for name, arr in kept.items():
                f[name][:] = arr
        self.max_ts = np.iinfo(np.int64).min

    # ------------------------------------------------------------------ persistence
    def state_dict(self, changed_only: bool = False) -> dict[str, Any]:
        return {
            "counters": torch.from_numpy(self.counters.copy()),
            "max_ts": int(self.max_ts),
            "model": self.weights.state_dict(),
            "learner": self.learner.state_dict(),
            "table": self.table.state_dict(changed_only),
            "evicted_totals": {n: torch.from_numpy(getattr(self.scoring.evicted, n).copy())
                               for n in ("m_abs", "m_sq", "p_abs", "p_sq", "cnt")},
            "forecast_evicted": {n: torch.from_numpy(a.copy())
                                 for n, a in self.forecast.evicted.items()},
        }

    def load_state_dict(self, d: dict[str, Any], weights_only: bool) -> None:
        self.weights.load(d["model"])
        if weights_only:
            return
        self.learner.load_state_dict(d["learner"])
        self.table.load_state_dict(d["table"])
        self.scoring.evicted = ErrorTotals.from_arrays(
            {n: t.numpy() for n, t in d["evicted_totals"].items()})
        for n, t in d.get("forecast_evicted", {}).items():
            self.forecast.evicted[n] = t.numpy().copy()
        self.counters[:] = d["counters"].numpy()
        self.max_ts = int(d["max_ts"])


class Engine:
    """One shard's online forecaster.

    Parameters
    ----------
    config
        Engine configuration; value names come from ``config.values`` or the first event.

    Examples
    --------
    >>> from streamseq.config import EngineConfig, LearnerConfig
    >>> eng = Engine(EngineConfig(learner=LearnerConfig(k1=1, k2=4, batch_windows=1)))
    >>> evs = [Event("sensor", "a", 60_000 * i, {"x": float(i % 5)}) for i in range(50)]
    >>> out = eng.process(evs)
    >>> out.yhat.shape, eng.stats.accepted, eng.stats.updates_applied > 0
    ((50, 1, 1), 50, True)
    """

    def __init__(self, config: EngineConfig | None = None) -> None:
        self.config = config or EngineConfig()
        self.stats = EngineStats()
        self.learning = self.config.learner.learn
        self.scoring = True
        self.shard: Shard | None = None  # built once the value names are known
        if self.config.values is not None:
            self.shard = Shard(self.config, self.config.values)

    def _built(self) -> Shard:
        if self.shard is None:
            raise RuntimeError("the engine has not seen its value names yet")
        return self.shard

    # ------------------------------------------------------------------ the parts
    @property
    def value_names(self) -> tuple[str, ...] | None:
        return None if self.shard is None else self.shard.names

    @property
    def target_names(self) -> tuple[str, ...]:
        return () if self.shard is None else self.shard.targets

    @property
    def model_version(self) -> int:
        """Optimizer steps applied so far: forecasts carry it to name the weights used."""
        return 0 if self.shard is None else self.shard.learner.applied

    @property
    def keys_held(self) -> int:
        return 0 if self.shard is None else len(self.shard.table)

    @property
    def model(self) -> RecurrentForecaster:
        """The torch reference module; its parameters are the live weights."""
        return self._built().model

    @property
    def learner(self) -> OnlineLearner:
        return self._built().learner

    @property
    def table(self) -> KeyTable:
        return self._built().table

    @property
    def n_inputs(self) -> int:
        return self._built().features.n_inputs

    @property
    def segment_events(self) -> int:
        """Events applied since the last update point."""
        return 0 if self.shard is None else int(self.shard.counters[1])

    @property
    def seq(self) -> int:
        """Events applied by this shard since it started."""
        return 0 if self.shard is None else int(self.shard.counters[3])

    # ------------------------------------------------------------------ main path
    def process(self, events: Sequence[Event]) -> EngineOutput:
        """Apply ``events`` (one shard's, in stream order): score, learn, forecast."""
        if self.shard is None:
            first = next((e for e in events if e.kind == self.config.kind), None)
            if first is None:
                return self._reject_all(events)
            self.shard = Shard(self.config, sorted(first.values))
        return self.shard.process(events, self.stats, self.learning, self.scoring)

    def process_one(self, key: str, raw: np.ndarray, ts: int) -> np.ndarray | None:
        """Apply one event of ``key``: the lean path for a caller that holds one event at
        a time (the River adapters, :mod:`streamseq.river`).

        ``raw`` holds the values in :attr:`value_names` order (NaN: missing), ``ts`` the
        event time (ms). The same ordering policy, features, scoring, windows and update
        points as :meth:`process` (the same bits), without building events and outputs
        and without the experts' aggregation. Returns the model's forecast ``[horizon,
        targets]`` in original units (a view, valid until the next call), or ``None``
        when the event was rejected (no known value, out of range) or dropped.
        """
        return self._built().process_one(key, raw, ts, self.stats, self.learning,
                                         self.scoring)

    def peek(self, key: str, raw: np.ndarray, ts: np.ndarray, roll: bool = False) -> np.ndarray:
        """The model's forecasts ``[steps, horizon, targets]`` (original units) after each
        of the hypothetical events ``raw [steps, values]`` (:attr:`value_names` order, NaN:
        missing) at times ``ts`` of ``key``, from its current state; nothing the engine
        holds changes. With ``roll`` a missing target takes the one-step forecast made
        before it (step 0: :meth:`last_forecast`), so ``steps`` rows of NaN targets run the
        model forward on its own predictions (a recursive multi-step forecast).

        Examples
        --------
        >>> from streamseq.config import EngineConfig
        >>> eng = Engine(EngineConfig(values=("x",)))
        >>> for i in range(20):
        ...     _ = eng.process_one("a", np.array([float(i % 4)]), 1000 * i)
        >>> before = eng.state_dict()
        >>> ahead = eng.peek("a", np.full((3, 1), np.nan), 1000 * np.arange(20, 23), roll=True)
        >>> ahead.shape, bool(np.isfinite(ahead).all())
        ((3, 1, 1), True)
        >>> import torch
        >>> after = eng.state_dict()
        >>> all(torch.equal(a, b) for a, b in zip(before["shard"]["table"]["hidden"],
        ...                                         after["shard"]["table"]["hidden"]))
        True
        """
        return self._built().peek(key, raw, ts, roll)

    def last_forecast(self, key: str) -> np.ndarray:
        """The model's forecast ``[horizon, targets]`` made at ``key``'s last event (NaN
        for a key not held)."""
        return self._built().last_forecast(key)

    def _reject_all(self, events: Sequence[Event]) -> EngineOutput:
        out = EngineOutput.empty(0, 1, 1)
        for i, e in enumerate(events):
            err = EventError("bad_kind", f"event kind {e.kind!r} sent to a {self.config.kind} "
                                         "shard")
            out.rejected.append((i, err))
            self.stats.rejected[err.reason] += 1
        self.stats.events += len(events)
        return out

    # ------------------------------------------------------------------ offline warm-up
    def fit_scaler(self, events: Sequence[Event]) -> None:
        """Fixed scaling: set each key's statistics from ``events`` and freeze them."""
        if self.shard is None:
            self.shard = Shard(self.config, sorted(events[0].values))
        self.shard.fit_scaler(events)

    def reset_streams(self, keep_scalers: bool = True) -> None:
        """Forget every key's stream position (hidden state, buffers, pending forecasts,
        per-key metrics, recent events) but keep the weights (and, by default, the
        scalers). Used between warm-up epochs and before online evaluation starts."""
        if self.shard is not None:
            self.shard.reset_streams(keep_scalers)

    # ------------------------------------------------------------------ reporting
    def key_totals(self) -> dict[str, ErrorTotals]:
        """Per-key error sums of live keys."""
        if self.shard is None:
            return {}
        sh = self.shard
        return {k: sh.scoring.key_totals(s) for k, s in sh.table.keys.items()}

    def totals(self) -> ErrorTotals:
        """Error sums over all keys ever held (live and evicted)."""
        if self.shard is None:
            return ErrorTotals.zeros(1, 1)
        return self.shard.scoring.totals(self.shard.table.live_slots())

    def summary(self) -> dict[str, Any]:
        """Overall MAE, RMSE, MSE and MASE for the model and persistence."""
        return summarize(self.totals())

    def forecast_totals(self, key: str | None = None) -> dict[str, np.ndarray] | None:
        """Error, interval and anomaly sums of every forecaster (:mod:`streamseq.forecast`)
        over all keys ever held, or of one live ``key``; ``None`` before the value names
        are known or for a key not held."""
        if self.shard is None:
            return None
        sh = self.shard
        if key is None:
            return sh.forecast.totals(sh.table.live_slots(), evicted=True)
        slot = sh.table.keys.get(key)
        return None if slot is None else sh.forecast.totals(np.array([slot]))

    def key_weights(self, key: str) -> np.ndarray | None:
        """A live key's mixing weights ``[horizon, targets, experts]``."""
        if self.shard is None or key not in self.shard.table.keys:
            return None
        return self.shard.forecast.key_weights(self.shard.table.keys[key])

    # ------------------------------------------------------------------ persistence
    def state_dict(self, changed_only: bool = False) -> dict[str, Any]:
        """Complete engine state as tensors and plain types (``torch.load(weights_only=True)``).

        With ``changed_only`` the key table holds only the rows of keys changed since
        :meth:`clear_changes` (see :func:`streamseq.state.table.merge_changes`); everything
        else (weights, optimizer, pending windows, counters) is complete.
        """
        d: dict[str, Any] = {
            "format_version": FORMAT_VERSION,
            "config": self.config.to_dict(),
            "value_names": list(self.value_names) if self.value_names else None,
            "stats": self.stats.to_dict(),
            "learning": self.learning,
            "scoring": self.scoring,
        }
        if self.shard is not None:
            d["shard"] = self.shard.state_dict(changed_only)
        return d

    def clear_changes(self) -> None:
        """A snapshot was taken: :meth:`state_dict` ``changed_only`` is relative to it."""
        if self.shard is not None:
            self.shard.table.clear_changes()

    def changed_share(self) -> float:
        """Keys changed since :meth:`clear_changes` per key held (1.0 before the value
        names are known)."""
        return 1.0 if self.shard is None else self.shard.table.changed_share()

    def load_state_dict(self, d: dict[str, Any], *, weights_only: bool = False) -> None:
        """Restore a state from :meth:`state_dict`.

        Refuses another format version or another architecture (cell, sizes, horizon,
        value names) with :class:`~streamseq.exceptions.CheckpointError`. With
        ``weights_only`` only the model weights are taken (warm start of a new stream).
        """
        version = d.get("format_version")
        if version != FORMAT_VERSION:
            raise CheckpointError(
                f"checkpoint format {version} is not this engine's format {FORMAT_VERSION} "
                "(snapshots of format 1 come from the engine before v2: start the shard "
                "fresh or warm it up again)")
        saved = EngineConfig.from_dict(d["config"])
        if saved.model != self.config.model:
            raise CheckpointError(f"checkpoint architecture {saved.model} does not match the "
                                  f"configured {self.config.model}")
        names = d["value_names"]
        if names is None:
            return
        if self.shard is None:
            self.shard = Shard(self.config, names if self.config.values is None
                               else self.config.values)
        if list(self.shard.names) != list(names):
            raise CheckpointError(f"checkpoint value names {names} != {list(self.shard.names)}")
        self.shard.load_state_dict(d["shard"], weights_only)
        if weights_only:
            return
        self.stats = EngineStats.from_dict(d["stats"])
        self.learning = bool(d["learning"])
        self.scoring = bool(d["scoring"])
