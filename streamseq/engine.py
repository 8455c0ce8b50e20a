"""The engine: one shard's online forecaster, fed events in stream order.

For each event the engine (1) scores the pending forecasts whose target just arrived,
(2) updates the key's features and advances its hidden state, (3) forecasts the next
``horizon`` values, and (4) captures a TBPTT window when one falls due. An optimizer step
happens at update points defined by the stream (every ``batch_windows`` due windows, or
``max_segment`` events), so results do not depend on how events are chunked into calls:
between two update points the weights are fixed and the keys of a chunk advance in
"waves" (the j-th event of every key in one batched tensor op).
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from streamseq.config import EngineConfig
from streamseq.evaluation.drift import DriftMonitor
from streamseq.evaluation.metrics import METRIC_ARRAYS, ErrorTotals, summarize
from streamseq.events.errors import EventError
from streamseq.events.schema import Event
from streamseq.exceptions import CheckpointError
from streamseq.features.calendar import N_CALENDAR, calendar_features
from streamseq.features.scaling import welford_update, zscore
from streamseq.features.transforms import (
    CODES,
    default_transform,
    forward_transform,
    invert_forecast,
)
from streamseq.learner.tbptt import OnlineLearner, UpdateResult
from streamseq.models.recurrent import RecurrentForecaster
from streamseq.state.hidden import HiddenStateTable

__all__ = ["Engine", "EngineOutput", "EngineStats", "FORMAT_VERSION"]

log = logging.getLogger(__name__)

FORMAT_VERSION = 1


@dataclass
class EngineStats:
    """Counters of one engine since it was created (restored with checkpoints)."""

    events: int = 0
    accepted: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    dropped: Counter[str] = field(default_factory=Counter)
    updates_applied: int = 0
    updates_skipped: int = 0
    last_loss: float = math.nan
    last_grad_norm: float = math.nan
    drift_events: int = 0
    evicted: int = 0
    z_abs_model: float = 0.0
    z_abs_persistence: float = 0.0
    z_scored: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {k: (dict(v) if isinstance(v, Counter) else v) for k, v in self.__dict__.items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EngineStats:
        s = cls(**{k: v for k, v in d.items() if k not in ("rejected", "dropped")})
        s.rejected = Counter(d["rejected"])
        s.dropped = Counter(d["dropped"])
        return s


@dataclass
class EngineOutput:
    """What one :meth:`Engine.process` call produced, aligned with its input.

    Attributes
    ----------
    index
        Positions (in the input) of the events that were applied and forecast.
    yhat
        ``[len(index), horizon, targets]`` forecasts in original units (NaN where the key
        has never shown a value of that target).
    err_model, err_persistence
        ``[len(index), horizon, targets]``: truth minus forecast for the forecast made ``h``
        events earlier for horizon ``h`` (NaN where there was none or the value is missing).
    scale
        The forecast's unit scale (key's std at forecast time), to express errors z-scored.
    target_ts
        ``[len(index), horizon]`` estimated event time of each forecast's target.
    version
        ``[len(index)]`` optimizer steps applied when each forecast was made (the weights'
        version: a function of the stream, not of how it was cut into calls).
    rejected, dropped
        ``(position, reason)`` of events refused (dead-letter) or dropped by the ordering
        policy (duplicate, late).
    updates
        Update points reached during the call.
    drift_events, evicted
        Drift detections and keys evicted during the call (increments, for metrics).
    """

    index: np.ndarray
    yhat: np.ndarray
    err_model: np.ndarray
    err_persistence: np.ndarray
    scale: np.ndarray
    target_ts: np.ndarray
    version: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    rejected: list[tuple[int, EventError]] = field(default_factory=list)
    dropped: list[tuple[int, str]] = field(default_factory=list)
    updates: list[UpdateResult] = field(default_factory=list)
    drift_events: int = 0
    evicted: int = 0


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
        self.value_names: tuple[str, ...] | None = None
        self.target_names: tuple[str, ...] = ()
        self.stats = EngineStats()
        self.evicted_totals: ErrorTotals | None = None
        self.drift = DriftMonitor(self.config.drift.delta)
        self.seq = 0  # events applied by this shard
        self.max_ts = np.iinfo(np.int64).min
        self.segment_events = 0
        self.segment_windows = 0
        self.segment_due_keys: set[str] = set()  # keys with a window waiting in the segment
        self.segment_closed = False
        self.learning = self.config.learner.learn
        self.scoring = True
        self.last_ids: dict[str, str] = {}  # key -> id of its last applied event (if any)
        if self.config.values is not None:
            self._build(self.config.values)

    # ------------------------------------------------------------------ set-up
    def _build(self, names: Sequence[str]) -> None:
        cfg = self.config
        targets = tuple(cfg.targets) if cfg.targets else tuple(names)
        ordered = targets + tuple(n for n in names if n not in targets)
        self.value_names = ordered
        self.target_names = targets
        self.value_set = frozenset(ordered)
        v, t, h = len(ordered), len(targets), cfg.model.horizon
        transforms = [cfg.features.transforms.get(n, default_transform(cfg.kind, n))
                      for n in ordered]
        self.codes = np.array([CODES[x] for x in transforms], dtype=np.int64)
        self.target_codes = self.codes[:t]
        self.level_targets = self.target_codes == CODES["level"]
        self.n_inputs = 2 * v + (1 if cfg.features.dt else 0) + (
            N_CALENDAR if cfg.features.calendar else 0)
        torch.manual_seed(cfg.learner.seed)
        self.model = RecurrentForecaster(self.n_inputs, t, cfg.model,
                                         residual_mask=[c != CODES["logret"]
                                                        for c in self.target_codes])
        self.model.eval()
        self.learner = OnlineLearner(self.model, cfg.learner)
        self.ring = cfg.learner.k2 + h
        layers, ss = cfg.model.layers, self.model.state_size
        f64, f32 = np.float64, np.float32
        self.table = HiddenStateTable(layers, ss, {
            "n": ((), np.int64, 0),
            "last_raw": ((v,), f64, np.nan),
            "last_in": ((v,), f64, np.nan),
            "sc_count": ((v + 1,), f64, 0.0),
            "sc_mean": ((v + 1,), f64, 0.0),
            "sc_m2": ((v + 1,), f64, 0.0),
            "frozen": ((), np.bool_, False),
            "dt_ema": ((), f64, 0.0),
            "ring_x": ((self.ring, self.n_inputs), f32, 0.0),
            "ring_y": ((self.ring, t), f32, 0.0),
            "ring_m": ((self.ring, t), f32, 0.0),
            "ring_h": ((self.ring, layers, ss), f32, 0.0),
            "pend_y": ((h, h, t), f64, np.nan),
            "pend_scale": ((h, t), f64, 1.0),
            "last_vals": ((h, t), f64, np.nan),
            **{name: ((h, t), f64, 0.0) for name in METRIC_ARRAYS},
        })
        self.evicted_totals = ErrorTotals.zeros(h, t)

    @property
    def model_version(self) -> int:
        """Optimizer steps applied so far: forecasts carry it to name the weights used."""
        return self.learner.applied if self.value_names is not None else 0

    @property
    def keys_held(self) -> int:
        return len(self.table) if self.value_names is not None else 0

    # ------------------------------------------------------------------ main path
    def process(self, events: Sequence[Event]) -> EngineOutput:
        """Apply ``events`` (one shard's, in stream order): score, learn, forecast."""
        cfg = self.config
        h = cfg.model.horizon
        if self.value_names is None:
            first = next((e for e in events if e.kind == cfg.kind), None)
            if first is None:
                return self._empty_output(events)
            self._build(sorted(first.values) if cfg.values is None else cfg.values)
        t = len(self.target_names)
        n_in = len(events)
        yhat = np.full((n_in, h, t), np.nan)
        err_m = np.full((n_in, h, t), np.nan)
        err_p = np.full((n_in, h, t), np.nan)
        scale = np.ones((n_in, h, t))
        tts = np.zeros((n_in, h), dtype=np.int64)
        version = np.zeros(n_in, dtype=np.int64)
        applied = np.zeros(n_in, dtype=bool)
        out = EngineOutput(np.zeros(0, np.int64), yhat, err_m, err_p, scale, tts, version)
        pos = 0
        while pos < n_in:
            pos, seg = self._scan(events, pos, out)
            if seg:
                self._run_segment(events, seg, out, applied)
            if self._segment_full():
                self._update_point(out)
        self.stats.events += n_in
        idx = np.flatnonzero(applied)
        out.index = idx
        out.yhat, out.err_model, out.err_persistence = yhat[idx], err_m[idx], err_p[idx]
        out.scale, out.target_ts, out.version = scale[idx], tts[idx], version[idx]
        return out

    def _empty_output(self, events: Sequence[Event]) -> EngineOutput:
        empty = np.zeros((0, 1, 1))
        out = EngineOutput(np.zeros(0, np.int64), empty, empty.copy(), empty.copy(),
                           empty.copy(), np.zeros((0, 1), np.int64))
        for i, e in enumerate(events):
            err = EventError("bad_kind", f"event kind {e.kind!r} sent to a {self.config.kind} "
                                         "shard")
            out.rejected.append((i, err))
            self.stats.rejected[err.reason] += 1
        self.stats.events += len(events)
        return out

    def _scan(self, events: Sequence[Event], pos: int,
              out: EngineOutput) -> tuple[int, list[tuple[int, list[float | None]]]]:
        """Validate and order events from ``pos`` until the current segment is full.

        Returns the next position and the accepted ``(position, raw values)`` of the segment.
        """
        cfg = self.config
        names = self.value_names
        assert names is not None
        k1, h = cfg.learner.k1, cfg.model.horizon
        learn = self.learning
        tol = cfg.state.late_tolerance_ms
        reject_missing = cfg.features.missing == "reject"
        table = self.table
        local: dict[str, list[Any]] = {}  # key -> [n, last_ts, last values or None]
        seg: list[tuple[int, list[float | None]]] = []
        n_names = len(names)
        bound = cfg.features.max_abs_value
        while pos < len(events):
            if self._segment_full():
                break
            ev = events[pos]
            i = pos
            pos += 1
            if ev.kind != cfg.kind:
                self._reject(out, i, EventError("bad_kind", f"{ev.kind!r} event on a "
                                                            f"{cfg.kind} shard"))
                continue
            vals = ev.values
            if len(vals) > n_names or not self.value_set.issuperset(vals):
                extra = sorted(set(vals) - self.value_set)
                self._reject(out, i, EventError(
                    "unknown_fields", f"values {extra[:5] or sorted(vals)[:5]} differ from the "
                                      f"shard's {list(names)[:5]}"))
                continue
            raw = [vals.get(n) for n in names]
            bad = next((x for x in raw if x is not None and not -bound <= x <= bound), None)
            if bad is not None:
                self._reject(out, i, EventError(
                    "out_of_range" if math.isfinite(bad) else "non_finite",
                    f"value {bad!r} outside +-{bound:g}"))
                continue
            if None in raw:
                if all(x is None for x in raw):
                    self._reject(out, i, EventError("missing_value", "no known value in event"))
                    continue
                if reject_missing:
                    lacking = [n for n, x in zip(names, raw, strict=True) if x is None]
                    self._reject(out, i, EventError("missing_value", f"missing {lacking[:5]}"))
                    continue
            st = local.get(ev.key)
            if st is None:
                slot = table.keys.get(ev.key)
                if slot is None:
                    st = [0, None, None]
                else:
                    st = [int(table.arrays["n"][slot]), int(table.last_ts[slot]), slot]
                local[ev.key] = st
            if ev.id is not None and self.last_ids.get(ev.key) == ev.id:
                self._drop(out, i, "duplicate")
                continue
            last_ts = st[1]
            if last_ts is not None:
                if ev.ts_ms < last_ts - tol:
                    self._drop(out, i, "late")
                    continue
                if ev.ts_ms == last_ts and self._same_values(st[2], raw):
                    self._drop(out, i, "duplicate")
                    continue
            m = st[0] + 1 - h
            due = learn and m > 0 and m % k1 == 0
            if due and ev.key in self.segment_due_keys:
                # the key's previous window has not been learned yet: an update point comes
                # first, so a key with few companions still learns every k1 of its events
                self.segment_closed = True
                pos = i
                break
            st[1] = ev.ts_ms if last_ts is None else max(last_ts, ev.ts_ms)
            st[0] += 1
            st[2] = raw
            if ev.id is not None:
                self.last_ids[ev.key] = ev.id
            seg.append((i, raw))
            self.segment_events += 1
            if due:
                self.segment_windows += 1
                self.segment_due_keys.add(ev.key)
        return pos, seg

    def _segment_full(self) -> bool:
        lc = self.config.learner
        return (self.segment_closed or self.segment_windows >= lc.batch_windows
                or self.segment_events >= lc.max_segment)

    def _same_values(self, last: Any, raw: list[float | None]) -> bool:
        """Whether ``raw`` repeats the key's last event (a list, or a table slot)."""
        if last is None:
            return False
        if isinstance(last, list):
            return last == raw
        known = np.array(raw, dtype=np.float64)
        return bool(np.array_equal(known, self.table.arrays["last_in"][last], equal_nan=True))

    def _reject(self, out: EngineOutput, i: int, err: EventError) -> None:
        out.rejected.append((i, err))
        self.stats.rejected[err.reason] += 1

    def _drop(self, out: EngineOutput, i: int, reason: str) -> None:
        out.dropped.append((i, reason))
        self.stats.dropped[reason] += 1

    def _run_segment(self, events: Sequence[Event], seg: list[tuple[int, list[float | None]]],
                     out: EngineOutput, applied: np.ndarray) -> None:
        positions = np.fromiter((p for p, _ in seg), dtype=np.int64, count=len(seg))
        raw = np.array([r for _, r in seg], dtype=np.float64)
        keys = [events[p].key for p in positions]
        ts = np.fromiter((events[p].ts_ms for p in positions), dtype=np.int64,
                         count=len(seg))
        slots = self.table.slots_for(keys)
        # waves: the j-th event of each key in this chunk
        occ = np.empty(len(seg), dtype=np.int64)
        seen: dict[int, int] = {}
        for i, s in enumerate(slots.tolist()):
            j = seen.get(s, 0)
            occ[i] = j
            seen[s] = j + 1
        seqs = self.seq + np.arange(len(seg), dtype=np.int64) + 1
        self.seq += len(seg)
        if occ.max(initial=0) == 0:
            waves = [np.arange(len(seg))]
        else:
            order = np.argsort(occ, kind="stable")
            bounds = np.flatnonzero(np.diff(occ[order])) + 1
            waves = np.split(order, bounds)
        for w in waves:
            self._step(w, positions[w], slots[w], ts[w], raw[w], seqs[w], out)
        applied[positions] = True
        self.stats.accepted += len(seg)
        self.max_ts = max(self.max_ts, int(ts.max()))

    # ------------------------------------------------------------------ one wave
    def _step(self, w: np.ndarray, pos: np.ndarray, sl: np.ndarray, ts: np.ndarray,
              raw: np.ndarray, seqs: np.ndarray, out: EngineOutput) -> None:
        cfg = self.config
        fc = cfg.features
        A = self.table.arrays
        table = self.table
        v, t, h = len(self.codes), len(self.target_names), cfg.model.horizon
        n = A["n"][sl]
        miss = np.isnan(raw)
        last_raw = A["last_raw"][sl]
        filled = np.where(miss, last_raw, raw)
        unknown = np.isnan(filled)
        safe = np.where(unknown, 0.0, filled)
        u = forward_transform(self.codes, safe, last_raw)
        has_prev = n > 0
        dt_ms = np.where(has_prev, np.maximum(ts - table.last_ts[sl], 0), 0)
        u_all = np.concatenate([u, np.log1p(dt_ms / 1000.0)[:, None]], axis=1)
        obs = np.concatenate([~miss, has_prev[:, None]], axis=1)
        if fc.scaling == "fixed":
            obs &= ~A["frozen"][sl][:, None]
        cnt, mean, m2 = A["sc_count"], A["sc_mean"], A["sc_m2"]
        welford_update(cnt, mean, m2, sl, u_all, obs)
        if fc.scaling == "fixed" and fc.fixed_warmup > 0:
            A["frozen"][sl] |= cnt[sl, 0] >= fc.fixed_warmup
        z, std = zscore(u_all, cnt[sl], mean[sl], m2[sl], fc.target_clip)
        z[:, :v][unknown] = 0.0
        z_in = np.clip(z, -fc.clip, fc.clip)  # the recurrent inputs stay bounded
        base = z[:, :t].astype(np.float32)  # persistence base: the (wider-clipped) scaled value
        parts = [z_in[:, :v], miss.astype(np.float64)]
        if fc.dt:
            parts.append(z_in[:, v:])
        if fc.calendar:
            parts.append(calendar_features(ts))
        x = np.concatenate(parts, axis=1).astype(np.float32)

        # (1) score the forecasts whose target is this event
        truth = raw[:, :t]
        if self.scoring:
            rows = w
            for j in range(1, h + 1):
                has = n >= j
                if not has.any():
                    continue
                age = (n - j) % h
                pred = A["pend_y"][sl, age, j - 1]
                pers = A["last_vals"][sl, age]
                sc = A["pend_scale"][sl, age]
                em = truth - pred
                ep = truth - pers
                ok = has[:, None] & ~np.isnan(em) & ~np.isnan(ep)
                em_ok, ep_ok = np.where(ok, em, 0.0), np.where(ok, ep, 0.0)
                A["m_abs"][sl, j - 1] += np.abs(em_ok)
                A["m_sq"][sl, j - 1] += em_ok * em_ok
                A["p_abs"][sl, j - 1] += np.abs(ep_ok)
                A["p_sq"][sl, j - 1] += ep_ok * ep_ok
                A["cnt"][sl, j - 1] += ok
                out.err_model[pos, j - 1] = np.where(ok, em, np.nan)
                out.err_persistence[pos, j - 1] = np.where(ok, ep, np.nan)
                out.scale[pos, j - 1] = sc
                if j == 1:
                    self._score_z(sl, ok, em_ok, ep_ok, sc, rows, out)

        # (2) advance the hidden state and forecast
        sl_t = torch.from_numpy(sl)
        h0 = table.state[:, sl_t]
        p = n % self.ring
        A["ring_h"][sl, p] = h0.permute(1, 0, 2).numpy()
        A["ring_x"][sl, p] = x
        # training targets: levels as wide as the base; returns and sizes winsorized at clip
        A["ring_y"][sl, p] = np.where(self.level_targets, base,
                                      np.clip(base, -fc.clip, fc.clip))
        A["ring_m"][sl, p] = ~(miss[:, :t] | unknown[:, :t])
        with torch.no_grad():
            y, h1 = self.model.step(torch.from_numpy(x), h0, torch.from_numpy(base))
        table.state[:, sl_t] = h1
        yz = y.double().numpy()
        std_t, mean_t = std[:, :t], mean[sl, :t]
        last_t = filled[:, :t]
        yhat = invert_forecast(self.target_codes, yz * std_t[:, None] + mean_t[:, None], last_t)
        yhat[np.broadcast_to(unknown[:, None, :t], yhat.shape)] = np.nan
        unit = np.where(self.target_codes == CODES["logret"], np.abs(last_t) * std_t,
                        np.where(self.target_codes == CODES["log1p"],
                                 (1.0 + np.abs(last_t)) * std_t, std_t))
        unit = np.where(np.isfinite(unit) & (unit > 0), unit, 1.0)
        slot_h = n % h
        A["pend_y"][sl, slot_h] = yhat
        A["pend_scale"][sl, slot_h] = unit
        A["last_vals"][sl, slot_h] = last_t
        out.yhat[pos] = yhat
        out.version[pos] = self.learner.applied
        dt_prev = A["dt_ema"][sl]
        dt_ema = np.where(n >= 2, 0.9 * dt_prev + 0.1 * dt_ms, np.where(n == 1, dt_ms, 0.0))
        A["dt_ema"][sl] = dt_ema
        out.target_ts[pos] = ts[:, None] + np.rint(
            dt_ema[:, None] * np.arange(1, h + 1)[None, :]).astype(np.int64)

        # (3) bookkeeping
        n1 = n + 1
        A["n"][sl] = n1
        A["last_raw"][sl] = np.where(miss, last_raw, raw)
        A["last_in"][sl] = raw
        table.last_ts[sl] = np.maximum(table.last_ts[sl], ts)
        table.last_seen[sl] = seqs

        # (4) capture the TBPTT windows that fell due
        if self.learning:
            m = n1 - h
            due = (m > 0) & (m % cfg.learner.k1 == 0)
            if due.any():
                self._capture(sl[due], m[due], seqs[due])

    def _score_z(self, sl: np.ndarray, ok: np.ndarray, em: np.ndarray, ep: np.ndarray,
                 sc: np.ndarray, rows: np.ndarray, out: EngineOutput) -> None:
        zm = np.abs(em) / sc
        zp = np.abs(ep) / sc
        cnt = ok.sum(axis=1)
        self.stats.z_abs_model += float(zm.sum())
        self.stats.z_abs_persistence += float(zp.sum())
        self.stats.z_scored += int(cnt.sum())
        dcfg = self.config.drift
        if dcfg.detector == "none":
            return
        per_key = zm.sum(axis=1) / np.maximum(cnt, 1)
        reset: list[int] = []
        for slot, e, c in zip(sl.tolist(), per_key.tolist(), cnt.tolist(), strict=True):
            if c and self.drift.update(slot, e):
                self.stats.drift_events += 1
                out.drift_events += 1
                if dcfg.action == "reset":
                    reset.append(slot)
                elif dcfg.action == "boost_lr" and self.value_names is not None:
                    self.learner.boost(dcfg.boost_factor, dcfg.boost_updates)
        if reset:
            self.table.reset(reset, state_only=True)

    def _capture(self, sl: np.ndarray, m: np.ndarray, seqs: np.ndarray) -> None:
        cfg = self.config
        k1, k2, h, L = cfg.learner.k1, cfg.learner.k2, cfg.model.horizon, self.ring
        A = self.table.arrays
        e = m - 1
        s = np.maximum(0, e - k2 + 1)
        length = e - s + 1
        steps = np.arange(k2)
        idx = (s[:, None] + steps[None, :]) % L
        x = A["ring_x"][sl[:, None], idx]
        b = A["ring_y"][sl[:, None], idx]  # each position's own scaled value: the base
        tidx = (s[:, None, None] + steps[None, :, None] + np.arange(1, h + 1)[None, None, :]) % L
        y = A["ring_y"][sl[:, None, None], tidx]
        wm = A["ring_m"][sl[:, None, None], tidx]
        learn_from = np.maximum(length - k1, 0)
        in_loss = (steps[None, :] >= learn_from[:, None]) & (steps[None, :] < length[:, None])
        wm = wm * in_loss[:, :, None, None]
        h0 = A["ring_h"][sl, s % L]
        self.learner.pending.append(x, y, wm.astype(np.float32), h0.copy(), length, b, seqs)

    def _update_point(self, out: EngineOutput) -> None:
        res = self.learner.update()
        if res.windows:
            out.updates.append(res)
            self.stats.last_loss = res.loss
            self.stats.last_grad_norm = res.grad_norm
            if res.applied:
                self.stats.updates_applied += 1
            else:
                self.stats.updates_skipped += 1
        self.segment_events = 0
        self.segment_windows = 0
        self.segment_due_keys.clear()
        self.segment_closed = False
        out.evicted += self._evict()

    def _evict(self) -> int:
        sc = self.config.state
        ttl = None if sc.idle_ttl_s is None else int(sc.idle_ttl_s * 1000)
        slots = self.table.eviction_candidates(sc.max_keys, ttl, int(self.max_ts))
        if slots.size == 0:
            return 0
        assert self.evicted_totals is not None
        A = self.table.arrays
        self.evicted_totals.add(ErrorTotals.from_arrays(
            {n: A[n][slots].sum(axis=0) for n in METRIC_ARRAYS}))
        self.drift.forget(slots.tolist())
        gone = self.table.evict(slots)
        for key in gone:
            self.last_ids.pop(key, None)
        self.stats.evicted += len(gone)
        return len(gone)

    # ------------------------------------------------------------------ offline warm-up
    def fit_scaler(self, events: Sequence[Event]) -> None:
        """Fixed scaling: set each key's statistics from ``events`` and freeze them."""
        if self.value_names is None:
            self._build(sorted(events[0].values) if self.config.values is None
                        else self.config.values)
        names = self.value_names
        assert names is not None
        by_key: dict[str, list[Event]] = {}
        for e in events:
            by_key.setdefault(e.key, []).append(e)
        A = self.table.arrays
        for key, evs in by_key.items():
            raw = np.array([[e.values.get(n) for n in names] for e in evs], dtype=np.float64)
            prev = np.vstack([np.full((1, raw.shape[1]), np.nan), raw[:-1]])
            u = forward_transform(self.codes, np.nan_to_num(raw), prev)
            u[np.isnan(raw)] = np.nan
            ts = np.array([e.ts_ms for e in evs], dtype=np.float64)
            dt = np.log1p(np.maximum(np.diff(ts), 0) / 1000.0)
            slot = int(self.table.slots_for([key])[0])
            cols = [u[:, j] for j in range(u.shape[1])] + [dt]
            for j, col in enumerate(cols):
                col = col[~np.isnan(col)]
                A["sc_count"][slot, j] = len(col)
                A["sc_mean"][slot, j] = col.mean() if len(col) else 0.0
                A["sc_m2"][slot, j] = ((col - col.mean()) ** 2).sum() if len(col) else 0.0
            A["frozen"][slot] = True

    def reset_streams(self, keep_scalers: bool = True) -> None:
        """Forget every key's stream position (hidden state, buffers, pending forecasts,
        per-key metrics) but keep the weights (and, by default, the scalers). Used between
        warm-up epochs and before online evaluation starts."""
        if self.value_names is None:
            return
        A = self.table.arrays
        saved = {n: A[n].copy() for n in ("sc_count", "sc_mean", "sc_m2", "frozen")}
        live = np.fromiter(self.table.keys.values(), dtype=np.int64)
        self.table.reset(live)
        if keep_scalers:
            for name, arr in saved.items():
                A[name][:] = arr
        self.drift = DriftMonitor(self.config.drift.delta)
        self.max_ts = np.iinfo(np.int64).min

    # ------------------------------------------------------------------ reporting
    def key_totals(self) -> dict[str, ErrorTotals]:
        """Per-key error sums of live keys."""
        if self.value_names is None:
            return {}
        A = self.table.arrays
        return {k: ErrorTotals(*(A[n][s].copy() for n in METRIC_ARRAYS))
                for k, s in self.table.keys.items()}

    def totals(self) -> ErrorTotals:
        """Error sums over all keys ever held (live and evicted)."""
        if self.value_names is None or self.evicted_totals is None:
            return ErrorTotals.zeros(1, 1)
        A = self.table.arrays
        live = np.fromiter(self.table.keys.values(), dtype=np.int64)
        t = ErrorTotals.from_arrays({n: A[n][live].sum(axis=0) for n in METRIC_ARRAYS})
        t.add(self.evicted_totals)
        return t

    def summary(self) -> dict[str, Any]:
        """Overall MAE, RMSE, MSE and MASE for the model and persistence."""
        return summarize(self.totals())

    # ------------------------------------------------------------------ persistence
    def state_dict(self) -> dict[str, Any]:
        """Complete engine state as tensors and plain types (``torch.load(weights_only=True)``)."""
        d: dict[str, Any] = {
            "format_version": FORMAT_VERSION,
            "config": self.config.to_dict(),
            "value_names": list(self.value_names) if self.value_names else None,
            "stats": self.stats.to_dict(),
            "seq": self.seq,
            "max_ts": int(self.max_ts),
            "segment_events": self.segment_events,
            "segment_windows": self.segment_windows,
            "segment_due_keys": sorted(self.segment_due_keys),
            "segment_closed": self.segment_closed,
            "learning": self.learning,
            "scoring": self.scoring,
            "last_ids": dict(self.last_ids),
        }
        if self.value_names is not None:
            assert self.evicted_totals is not None
            d["model"] = self.model.state_dict()
            d["learner"] = self.learner.state_dict()
            d["table"] = self.table.state_dict()
            d["drift"] = self.drift.state_dict()
            d["evicted_totals"] = {n: torch.from_numpy(getattr(self.evicted_totals, n).copy())
                                   for n in METRIC_ARRAYS}
        return d

    def load_state_dict(self, d: dict[str, Any], *, weights_only: bool = False) -> None:
        """Restore a state from :meth:`state_dict`.

        Refuses another format version or another architecture (cell, sizes, horizon,
        value names) with :class:`~streamseq.exceptions.CheckpointError`. With
        ``weights_only`` only the model weights are taken (warm start of a new stream).
        """
        version = d.get("format_version")
        if version != FORMAT_VERSION:
            raise CheckpointError(f"checkpoint format {version} != supported {FORMAT_VERSION}")
        saved = EngineConfig.from_dict(d["config"])
        if saved.model != self.config.model:
            raise CheckpointError(f"checkpoint architecture {saved.model} does not match the "
                                  f"configured {self.config.model}")
        names = d["value_names"]
        if names is None:
            return
        if self.value_names is None:
            self._build(names if self.config.values is None else self.config.values)
        if list(self.value_names or ()) != list(names):
            raise CheckpointError(f"checkpoint value names {names} != {list(self.value_names or ())}")
        self.model.load_state_dict(d["model"])
        if weights_only:
            return
        self.learner.load_state_dict(d["learner"])
        self.table.load_state_dict(d["table"])
        self.drift.load_state_dict(d["drift"])
        self.evicted_totals = ErrorTotals.from_arrays(
            {n: d["evicted_totals"][n].numpy() for n in METRIC_ARRAYS})
        self.stats = EngineStats.from_dict(d["stats"])
        self.seq = int(d["seq"])
        self.max_ts = int(d["max_ts"])
        self.segment_events = int(d["segment_events"])
        self.segment_windows = int(d["segment_windows"])
        self.segment_due_keys = set(d["segment_due_keys"])
        self.segment_closed = bool(d["segment_closed"])
        self.learning = bool(d["learning"])
        self.scoring = bool(d["scoring"])
        self.last_ids = dict(d.get("last_ids", {}))
