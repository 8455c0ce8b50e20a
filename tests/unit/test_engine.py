"""The core engine's contract (issue 2): chunking invariance, no leakage, learning works,
bad input, GRU/LSTM conformance, duplicates and late events.

Checkpoint exactness is in test_checkpoint.py, the backtest command in test_backtest.py.
"""

from __future__ import annotations

import copy
import itertools
import math
from collections.abc import Iterator, Sequence
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from streamseq.config import (
    DriftConfig,
    EngineConfig,
    FeatureConfig,
    LearnerConfig,
    ModelConfig,
    StateConfig,
)
from streamseq.engine import Engine, Shard
from streamseq.events import Event, EventDecoder, EventError
from streamseq.forecast import FORECASTERS
from streamseq.io.files import read_events
from streamseq.learner.tbptt import OnlineLearner

torch.set_num_threads(1)  # 2 shared cores: multi-threaded torch is slow and adds noise

CELLS = ("gru", "lstm")


# ---------------------------------------------------------------------------- helpers
def make_config(cell: str = "gru", horizon: int = 1, values: Sequence[str] | None = ("x", "y"),
                targets: Sequence[str] | None = None, hidden: int = 8,
                drift: DriftConfig | None = None, features: FeatureConfig | None = None,
                state: StateConfig | None = None, **learner: Any) -> EngineConfig:
    lc = {"k1": 3, "k2": 6, "batch_windows": 4, "lr": 1e-2, **learner}
    return EngineConfig(
        values=tuple(values) if values is not None else None,
        targets=tuple(targets) if targets is not None else None,
        model=ModelConfig(cell=cell, hidden=hidden, horizon=horizon),
        features=features or FeatureConfig(),
        learner=LearnerConfig(**lc),
        drift=drift or DriftConfig(),
        state=state or StateConfig(),
    )


def multi_key_stream(n: int, keys: int = 5, seed: int = 0, p_missing: float = 0.15,
                     late: bool = False) -> list[Event]:
    """Interleaved keys, irregular times, a sine plus noise in ``x`` and noise in ``y``,
    with missing readings (None) in either value (never both)."""
    rng = np.random.default_rng(seed)
    out: list[Event] = []
    last: dict[str, int] = {}
    for _ in range(n):
        k = f"k{int(rng.integers(keys))}"
        t = last.get(k, 1_700_000_000_000) + int(rng.integers(1_000, 120_000))
        last[k] = t
        x: float | None = float(np.sin(t / 3.6e6) + 0.1 * rng.normal())
        y: float | None = float(rng.normal(10.0, 2.0))
        r = rng.random()
        if r < p_missing / 2:
            x = None
        elif r < p_missing:
            y = None
        out.append(Event("sensor", k, t, {"x": x, "y": y}))
        if late and rng.random() < 0.03:
            out.append(Event("sensor", k, t - 500_000, {"x": 0.0, "y": 1.0}))
    return out


def weights(engine: Engine) -> torch.Tensor:
    return torch.cat([p.detach().flatten().clone() for p in engine.model.parameters()])


class Run:
    """Outputs of one engine over a stream, aligned with the stream's positions."""

    def __init__(self, config: EngineConfig, events: Sequence[Event], chunk: int) -> None:
        self.engine = Engine(config)
        h = config.model.horizon
        t = len(config.targets or config.values or ("x",))
        n = len(events)
        self.yhat = np.full((n, h, t), np.nan)
        self.err = np.full((n, h, t), np.nan)
        self.err_p = np.full((n, h, t), np.nan)
        self.model_yhat = np.full((n, h, t), np.nan)
        self.interval = np.full((n, h, 2 * t), np.nan)
        self.mix_err = np.full((n, t), np.nan)
        self.applied = np.zeros(n, dtype=bool)
        self.rejected: list[tuple[int, str]] = []
        self.dropped: list[tuple[int, str]] = []
        self.updates = 0
        for start in range(0, n, chunk):
            out = self.engine.process(events[start:start + chunk])
            idx = out.index + start
            self.yhat[idx], self.err[idx], self.err_p[idx] = (out.yhat, out.err_model,
                                                              out.err_persistence)
            self.model_yhat[idx] = out.model_yhat
            self.interval[idx] = np.concatenate([out.lo, out.hi], axis=2)
            self.mix_err[idx] = out.forecaster_errors[:, :, FORECASTERS.index("mixture")]
            self.applied[idx] = True
            self.rejected += [(start + i, e.reason) for i, e in out.rejected]
            self.dropped += [(start + i, r) for i, r in out.dropped]
            self.updates += sum(u.applied for u in out.updates)
        self.weights = weights(self.engine)

    def mae(self, skip: int = 0, h: int = 0, target: int = 0) -> float:
        e = np.abs(self.err[skip:, h, target])
        return float(np.nanmean(e))

    def mae_persistence(self, skip: int = 0, h: int = 0, target: int = 0) -> float:
        return float(np.nanmean(np.abs(self.err_p[skip:, h, target])))


# ---------------------------------------------------------------------------- chunking
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("horizon", [1, 3])
def test_chunking_invariance(cell: str, horizon: int) -> None:
    """Event by event, batches of 7 and one batch: same forecasts, errors and weights."""
    events = multi_key_stream(420, keys=6, seed=horizon, late=True)
    events.insert(50, Event("sensor", "k1", events[49].ts_ms, {"z": 1.0}))  # rejected
    cfg = make_config(cell, horizon, drift=DriftConfig(action="reset"))
    runs = [Run(cfg, events, chunk) for chunk in (1, 7, len(events))]
    ref = runs[0]
    assert ref.updates >= 20, "the stream must reach many update points to mean anything"
    assert np.isnan(ref.err).any() and (~np.isnan(ref.err)).sum() > 300
    assert ref.rejected == [(50, "unknown_fields")] and ref.dropped
    for other in runs[1:]:
        np.testing.assert_array_equal(other.applied, ref.applied)
        assert other.rejected == ref.rejected and other.dropped == ref.dropped
        assert other.updates == ref.updates
        np.testing.assert_allclose(other.yhat, ref.yhat, rtol=0, atol=1e-6)
        np.testing.assert_allclose(other.err, ref.err, rtol=0, atol=1e-6)
        np.testing.assert_allclose(other.interval, ref.interval, rtol=0, atol=1e-6)
        np.testing.assert_allclose(other.mix_err, ref.mix_err, rtol=0, atol=1e-6)
        torch.testing.assert_close(other.weights, ref.weights, rtol=0, atol=1e-6)
        for a, b in zip(other.engine.summary()["model"].values(),
                        ref.engine.summary()["model"].values(), strict=True):
            assert a == pytest.approx(b, rel=1e-6)
        assert other.engine.stats.dropped == ref.engine.stats.dropped
        assert other.engine.model_version == ref.engine.model_version


# ---------------------------------------------------------------------------- no leakage
@pytest.mark.parametrize("horizon", [1, 3])
def test_learner_never_receives_a_target_before_its_forecast(
        monkeypatch: pytest.MonkeyPatch, horizon: int) -> None:
    """Instrument the engine: log when each event's truth enters, when each forecast is
    recorded, and what every TBPTT window handed to the learner contains. Windows are
    identified by content (the exact input row and target value of each event), not by the
    engine's own index arithmetic. The compiled per-event path takes a segment's events one
    after another in stream order, each fully (enters, forecast) before the next: the
    clock gives each event two ticks in that order."""
    clock = itertools.count()
    arrived: dict[tuple[str, int], int] = {}  # (key, n) -> clock when event n entered
    forecast_at: dict[tuple[str, int], int] = {}  # (key, n) -> clock after its forecast
    input_of: dict[bytes, list[tuple[str, int]]] = {}  # model input row -> [(key, n)]
    target_of: dict[tuple[str, int], np.ndarray] = {}  # (key, n) -> scaled target of event n
    learned: list[tuple[str, int, int]] = []  # (key, position p, horizon j)
    real_advance, real_update = Shard._advance, OnlineLearner.update

    def advance(self: Shard, poll: Any, rows: np.ndarray, plan: Any, *rest: Any) -> None:
        slots, n = plan[0][rows], plan[1][rows]
        keys = [poll.keys[poll.key_index[r]] for r in rows.tolist()]
        ticks = [next(clock) for _ in range(2 * len(rows))]
        for e, (k, ni) in enumerate(zip(keys, n.tolist(), strict=True)):
            arrived[(k, ni)] = ticks[2 * e]
        real_advance(self, poll, rows, plan, *rest)
        ring = self.windows.arrays
        length = self.windows.length
        for e, (k, ni) in enumerate(zip(keys, n.tolist(), strict=True)):
            forecast_at[(k, ni)] = ticks[2 * e + 1]
            row = ring["x"][slots[e], ni % length].view(np.float16).astype(np.float32)
            input_of.setdefault(row.tobytes(), []).append((k, ni))
            target_of[(k, ni)] = ring["y"][slots[e], ni % length].copy()

    def update(self: OnlineLearner) -> Any:
        t_learn = next(clock)
        if len(self.pending):
            x, y, wt, _h0, lengths, _base = self.pending.view()
            n_t = y.shape[2] // horizon
            for i in range(len(x)):
                for s in range(int(lengths[i])):
                    if not wt[i, s].any():
                        continue
                    matches = input_of.get(x[i, s].tobytes(), [])
                    assert len(matches) == 1, "every learned input row is one event's row"
                    k, p = matches[0]
                    for j in range(1, horizon + 1):
                        cols = slice((j - 1) * n_t, j * n_t)
                        if not wt[i, s, cols].any():
                            continue
                        q = p + j
                        # the truth of event q has arrived before the learner receives it ...
                        assert (k, q) in arrived and arrived[(k, q)] < t_learn
                        # ... and the forecast scored against it was recorded before that
                        assert forecast_at[(k, p)] < arrived[(k, q)] < t_learn
                        # and the target really is event q's value (no shifted alignment)
                        np.testing.assert_array_equal(y[i, s, cols], target_of[(k, q)])
                        learned.append((k, p, j))
        return real_update(self)

    monkeypatch.setattr(Shard, "_advance", advance)
    monkeypatch.setattr(OnlineLearner, "update", update)
    events = multi_key_stream(300, keys=3, seed=7, p_missing=0.1)
    cfg = make_config("gru", horizon, k1=2, k2=5, batch_windows=3)
    eng = Engine(cfg)
    eng.process(events[:150])
    for i in range(150, len(events), 13):
        eng.process(events[i:i + 13])
    assert len(learned) > 150
    assert len(set(learned)) == len(learned), "each (position, horizon) target learned once"


def test_forecast_scored_against_the_truth_that_came_after_it() -> None:
    """err_model at event q, horizon j = truth(q) - model forecast made j events earlier;
    the published mixture's one-step error likewise."""
    h = 3
    events = multi_key_stream(200, keys=3, seed=11, p_missing=0.0)
    run = Run(make_config("gru", h, values=("x", "y")), events, chunk=17)
    by_key: dict[str, list[int]] = {}
    for i, e in enumerate(events):
        by_key.setdefault(e.key, []).append(i)
    checked = 0
    for positions in by_key.values():
        for a, q in enumerate(positions):
            for j in range(1, h + 1):
                if a - j < 0:
                    assert np.isnan(run.err[q, j - 1]).all()
                    continue
                p = positions[a - j]
                truth = np.array([events[q].values["x"], events[q].values["y"]])
                np.testing.assert_allclose(run.err[q, j - 1], truth - run.model_yhat[p, j - 1],
                                           rtol=0, atol=1e-9)
                if j == 1:
                    np.testing.assert_allclose(run.mix_err[q], truth - run.yhat[p, 0],
                                               rtol=0, atol=1e-9)
                checked += 1
    assert checked > 500


@pytest.mark.parametrize("horizon", [1, 3])
def test_future_dependent_stream_does_not_leak(horizon: int) -> None:
    """x_t = noise_{t+1}: every value is a function of the next noise, so only the future
    tells it. The same engine given a one-step peek of the future as an input learns to
    score near zero; without the peek its online error stays at the level of the best
    forecaster that cannot see the future (the running mean)."""
    n, skip = (1600, 400) if horizon == 1 else (1000, 300)
    noise = np.random.default_rng(5).normal(size=n + 2)
    x = noise[1:n + 1]
    honest_events = [Event("sensor", "a", 60_000 * i, {"x": float(x[i])}) for i in range(n)]
    cfg = make_config("gru", horizon, values=("x",), hidden=16, k1=4, k2=8, batch_windows=1,
                      features=FeatureConfig(calendar=False))
    honest = Run(cfg, honest_events, chunk=64)
    running_mean = np.cumsum(x)[:-1] / np.arange(1, n)
    for j in range(horizon):
        # best non-leaking baseline: running mean of the values seen before the forecast
        base = np.abs(x[skip:] - running_mean[skip - 1 - j:n - 1 - j]).mean()
        assert honest.mae(skip, h=j) > 0.9 * base, (j, honest.mae(skip, h=j), base)
    if horizon == 1:
        peek = [Event("sensor", "a", 60_000 * i, {"x": float(x[i]),
                                                  "peek": float(x[i + 1] if i + 1 < n else 0)})
                for i in range(n)]
        leaky_cfg = cfg.replace(values=("x", "peek"), targets=("x",))
        leaky = Run(leaky_cfg, peek, chunk=64)
        assert leaky.mae(skip) < 0.25 * honest.mae(skip), "the stream must expose a leak"


# ---------------------------------------------------------------------------- learning
def test_learning_beats_persistence_and_frozen_weights_on_noisy_sine() -> None:
    n, skip, period = 1500, 500, 20  # period not a day: calendar features cannot help
    rng = np.random.default_rng(0)
    t = np.arange(n)
    x = np.sin(2 * np.pi * t / period) + 0.1 * rng.normal(size=n)
    events = [Event("sensor", "s", 3_600_000 * i, {"x": float(x[i])}) for i in range(n)]
    cfg = make_config("gru", 1, values=("x",), hidden=16, k1=2, k2=12, batch_windows=1)
    learn = Run(cfg, events, chunk=50)
    frozen = Run(cfg.replace(**{"learner.learn": False}), events, chunk=50)
    assert frozen.updates == 0 and frozen.engine.model_version == 0
    assert learn.mae(skip) < 0.8 * learn.mae_persistence(skip)
    assert learn.mae(skip) < 0.8 * frozen.mae(skip)


def test_learning_beats_persistence_and_frozen_weights_on_real_series(data_dir: Path) -> None:
    path = data_dir / "sensor" / "nab" / "data" / "realKnownCause" / "nyc_taxi.csv"
    events = list(islice(read_events([path]), 2000))
    skip = 500
    cfg = make_config("gru", 1, values=None, hidden=16, k1=4, k2=8, batch_windows=1, lr=3e-3)
    learn = Run(cfg, events, chunk=256)
    frozen = Run(cfg.replace(**{"learner.learn": False}), events, chunk=256)
    assert learn.mae(skip) < 0.9 * learn.mae_persistence(skip)
    assert learn.mae(skip) < 0.9 * frozen.mae(skip)


# ---------------------------------------------------------------------------- bad input
def test_bad_events_are_rejected_with_their_reason() -> None:
    eng = Engine(make_config(values=("x", "y"), features=FeatureConfig(missing="reject")))
    t0 = 1_700_000_000_000
    events = [
        Event("sensor", "a", t0, {"x": 1.0, "y": 2.0}),
        Event("price", "a", t0 + 1, {"x": 1.0, "y": 2.0}),  # wrong kind for the shard
        Event("sensor", "a", t0 + 2, {"x": 1.0, "z": 2.0}),  # unknown field set
        Event("sensor", "a", t0 + 3, {"x": 1.0, "y": None}),  # missing, policy reject
        Event("sensor", "a", t0 + 4, {"x": None, "y": None}),  # nothing known
        Event("sensor", "a", t0 + 5, {"x": 1.5, "y": 2.5}),
    ]
    out = eng.process(events)
    assert [(i, e.reason) for i, e in out.rejected] == [
        (1, "bad_kind"), (2, "unknown_fields"), (3, "missing_value"), (4, "missing_value")]
    assert all(isinstance(e, EventError) for _, e in out.rejected)
    assert out.index.tolist() == [0, 5]
    assert dict(eng.stats.rejected) == {"bad_kind": 1, "unknown_fields": 1, "missing_value": 2}


def test_missing_values_carry_and_never_reach_the_model() -> None:
    events = multi_key_stream(300, keys=2, seed=3, p_missing=0.4)
    events += [Event("sensor", "new", events[-1].ts_ms + i, {"x": None, "y": 1.0 + i})
               for i in range(1, 6)]  # a key that never shows x
    events.append(Event("sensor", "k0", events[-1].ts_ms + 1, {"x": float("nan"), "y": 2.0}))
    run = Run(make_config(k1=1, batch_windows=1), events, chunk=32)
    eng = run.engine
    assert torch.isfinite(run.weights).all() and torch.isfinite(eng.table.state).all()
    assert np.isfinite(eng.table.parts["windows"]["x"].view(np.float16)).all()
    assert np.isfinite(eng.table.parts["windows"]["y"]).all()
    shown: dict[str, set[str]] = {}
    for i, e in enumerate(events[:-6]):  # finite wherever the key has shown that value
        shown.setdefault(e.key, set()).update(k for k, v in e.values.items() if v is not None)
        for j, name in enumerate(("x", "y")):
            assert name not in shown[e.key] or np.isfinite(run.yhat[i, :, j]).all()
    # a NaN in an Event built in code: either dead-lettered or handled as a missing reading
    last = len(events) - 1
    assert (last, "non_finite") in run.rejected or np.isfinite(run.yhat[last]).all()


def test_forecast_of_a_value_the_key_never_showed_is_nan() -> None:
    """EngineOutput documents yhat as NaN "where the key has never shown a value of that
    target" (published as null). Regression test: a level target without any value yet once
    got the model's raw output on a default mean 0 / std 1 scale, a made-up number in
    original units."""
    eng = Engine(make_config())
    out = eng.process([Event("sensor", "a", 1_000 * i, {"x": None, "y": 1.0 + i})
                       for i in range(5)])
    assert np.isfinite(out.yhat[:, :, 1]).all()
    assert np.isnan(out.yhat[:, :, 0]).all(), out.yhat[:, 0, 0]


def test_decoded_stream_nan_and_inf_never_change_the_weights() -> None:
    """Messages carrying NaN/inf are dead-lettered by the decoder, so a stream with them
    trains exactly like the stream without them."""
    clean = multi_key_stream(200, keys=3, seed=4, p_missing=0.0)
    decoder = EventDecoder()
    lines = [f'{{"key": "{e.key}", "ts": {e.ts_ms}, "values": {{"x": {e.values["x"]}, '
             f'"y": {e.values["y"]}}}}}' for e in clean]
    dirty = list(lines)
    for i, bad in ((20, "NaN"), (60, "Infinity"), (100, "-Infinity"), (140, "1e999")):
        dirty.insert(i, f'{{"key": "k1", "ts": {clean[i].ts_ms}, "values": {{"x": {bad}, '
                        f'"y": 1.0}}}}')
    decoded, reasons = [], []
    for line in dirty:
        try:
            decoded.append(decoder.decode(line.encode()))
        except EventError as err:
            reasons.append(err.reason)
    assert reasons == ["non_finite"] * 4
    a = Run(make_config(k1=1, batch_windows=2), clean, chunk=25)
    b = Run(make_config(k1=1, batch_windows=2), decoded, chunk=25)
    assert torch.equal(a.weights, b.weights) and a.updates > 50


@pytest.mark.parametrize("bad", [math.inf, -math.inf])
def test_engine_rejects_infinite_values(bad: float) -> None:
    """An Event built in code (not via the decoder) with an infinite value must be
    dead-lettered as ``non_finite``: it must not change the weights nor poison the key's
    scaler (an inf makes the key's running mean/variance inf/NaN forever)."""
    clean = multi_key_stream(150, keys=2, seed=8, p_missing=0.0)
    dirty = list(clean)
    dirty.insert(60, Event("sensor", clean[59].key, clean[59].ts_ms + 1, {"x": bad, "y": 1.0}))
    a = Run(make_config(k1=1, batch_windows=1), clean, chunk=10)
    b = Run(make_config(k1=1, batch_windows=1), dirty, chunk=10)
    assert (60, "non_finite") in b.rejected
    assert torch.equal(a.weights, b.weights)


def test_absurd_finite_values_do_not_poison_weights_or_forecasts() -> None:
    """1e308 is finite and passes decoding; it must not produce NaN weights, and the key's
    later forecasts (and the shard's accuracy figures) must stay finite."""
    good = [Event("sensor", "a", 60_000 * i, {"x": float(np.sin(i / 4))}) for i in range(40)]
    other = [Event("sensor", "b", 60_000 * i + 1, {"x": float(np.cos(i / 4))}) for i in range(80)]
    bad = [Event("sensor", "a", 60_000 * 40, {"x": 1e308}),
           Event("sensor", "a", 60_000 * 41, {"x": -1e308})]
    after = [Event("sensor", "a", 60_000 * (42 + i), {"x": float(np.sin(i / 4))})
             for i in range(38)]
    events = sorted(good + bad + after + other, key=lambda e: e.ts_ms)
    with np.errstate(all="ignore"):
        run = Run(make_config(values=("x",), k1=1, batch_windows=1), events, chunk=16)
    eng = run.engine
    assert torch.isfinite(run.weights).all(), "absurd values reached the weights"
    assert torch.isfinite(eng.table.state).all()
    assert eng.stats.updates_applied > 50
    keys = np.array([e.key for e in events])
    last_a = np.flatnonzero(keys == "a")[-5:]
    assert np.isfinite(run.yhat[last_a]).all(), "key 'a' forecasts are inf/NaN forever"
    assert eng.summary()["model"]["mae"] is not None
    assert math.isfinite(eng.summary()["model"]["mae"]), "one reading made the shard MAE inf"


def test_nan_guard_skips_an_update_and_keeps_the_weights() -> None:
    eng = Engine(make_config(k1=1, batch_windows=1000))
    eng.process(multi_key_stream(60, keys=2, seed=1, p_missing=0.0))
    assert len(eng.learner.pending) > 0
    eng.learner.pending.x[0, 0, 0] = np.nan
    before = weights(eng)
    res = eng.learner.update()
    assert not res.applied and res.windows > 0 and eng.learner.skipped == 1
    assert torch.equal(weights(eng), before)
    assert all(torch.isfinite(p).all() for p in eng.model.parameters())


# ---------------------------------------------------------------------------- contract
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("horizon", [1, 2])
def test_predict_before_any_learn_is_persistence(cell: str, horizon: int) -> None:
    """The head starts at zero: before the first update every model forecast is the last
    value (carried forward where missing), for every horizon."""
    events = multi_key_stream(60, keys=3, seed=2, p_missing=0.2)
    eng = Engine(make_config(cell, horizon, k1=100, k2=100))  # no window falls due
    out = eng.process(events)
    assert eng.model_version == 0 and eng.stats.updates_applied == 0
    last: dict[str, dict[str, float]] = {}
    for row, i in enumerate(out.index.tolist()):
        e = events[i]
        known = last.setdefault(e.key, {})
        known.update({k: v for k, v in e.values.items() if v is not None})
        expect = np.array([known.get("x", np.nan), known.get("y", np.nan)])
        seen = ~np.isnan(expect)  # never-shown values: see the test just below
        for j in range(horizon):
            np.testing.assert_allclose(out.model_yhat[row, j][seen], expect[seen],
                                       rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("cell", CELLS)
def test_inputs_not_mutated(cell: str) -> None:
    events = multi_key_stream(120, keys=3, seed=6)
    snapshot = copy.deepcopy(events)
    value_dicts = [e.values for e in events]
    eng = Engine(make_config(cell, 2, k1=1, batch_windows=2))
    eng.process(events)
    assert events == snapshot
    assert all(e.values is d for e, d in zip(events, value_dicts, strict=True))
    assert [e.values for e in events] == [e.values for e in snapshot]


def _churn(n_keys: int, per_key: int) -> Iterator[Event]:
    """Key i is live for ``per_key`` consecutive rounds, then never seen again."""
    for r in range(n_keys + per_key - 1):
        for i in range(max(0, r - per_key + 1), min(r, n_keys - 1) + 1):
            yield Event("sensor", f"key-{i}", 1_000 * r, {"x": float(np.sin(r + i))})


@pytest.mark.parametrize("cell", CELLS)
def test_bounded_memory_under_key_churn(cell: str) -> None:
    max_keys, max_segment = 300, 256
    cfg = make_config(cell, 1, values=("x",), k1=1, batch_windows=64, max_segment=max_segment,
                      state=StateConfig(max_keys=max_keys, idle_ttl_s=5.0))
    eng = Engine(cfg)
    events = list(_churn(10_000, 3))
    sizes, nbytes, scored = [], [], 0
    for start in range(0, len(events), 1000):
        out = eng.process(events[start:start + 1000])
        scored += int((~np.isnan(out.err_model)).sum())
        sizes.append(len(eng.table))
        nbytes.append(eng.table.nbytes())
    assert len({e.key for e in events}) == 10_000
    assert max(sizes) <= max_keys + max_segment
    assert nbytes[-1] == nbytes[len(nbytes) // 5], "table memory kept growing"
    assert eng.stats.evicted >= 10_000 - max(sizes)
    assert int(eng.totals().cnt.sum()) == scored, "evicted keys' accuracy figures were lost"


@pytest.mark.parametrize("cell", CELLS)
def test_same_seed_same_output_different_seed_different_weights(cell: str) -> None:
    events = multi_key_stream(150, keys=3, seed=9)
    a = Run(make_config(cell, 1, seed=1), events, chunk=40)
    b = Run(make_config(cell, 1, seed=1), events, chunk=40)
    c = Run(make_config(cell, 1, seed=2), events, chunk=40)
    np.testing.assert_array_equal(a.yhat, b.yhat)
    assert torch.equal(a.weights, b.weights)
    assert not torch.allclose(a.weights, c.weights)
    assert a.updates > 10


@pytest.mark.parametrize("cell", CELLS)
def test_chunking_invariance_with_dropout_and_stacked_layers(cell: str) -> None:
    """With dropout the windows' order inside an update decides which dropout mask each
    window gets. Regression test: windows were once appended to ``learner.pending`` in wave
    order (the j-th event of every key of a chunk), which depends on how the stream was
    chunked, so results depended on the polls (differences of ~0.05 in forecasts here, not
    1e-7)."""
    events = multi_key_stream(150, keys=3, seed=10)
    cfg = make_config(cell, 2).replace(**{"model.layers": 2, "model.dropout": 0.2})
    a, b = Run(cfg, events, chunk=1), Run(cfg, events, chunk=150)
    np.testing.assert_allclose(a.yhat, b.yhat, rtol=0, atol=1e-6)
    torch.testing.assert_close(a.weights, b.weights, rtol=0, atol=1e-6)


def test_stacked_layers_without_dropout_are_chunking_invariant() -> None:
    events = multi_key_stream(150, keys=3, seed=10)
    cfg = make_config("lstm", 2).replace(**{"model.layers": 2})
    a, b = Run(cfg, events, chunk=1), Run(cfg, events, chunk=150)
    np.testing.assert_allclose(a.yhat, b.yhat, rtol=0, atol=1e-6)
    torch.testing.assert_close(a.weights, b.weights, rtol=0, atol=1e-6)


# ---------------------------------------------------------------------------- ordering
def test_duplicates_and_late_events_are_dropped_not_learned() -> None:
    clean = multi_key_stream(240, keys=3, seed=12, p_missing=0.0)
    dirty: list[Event] = []
    expect: list[tuple[int, str]] = []
    keep: list[int] = []
    for i, e in enumerate(clean):
        keep.append(len(dirty))
        dirty.append(e)
        if i % 17 == 5:
            expect.append((len(dirty), "duplicate"))
            dirty.append(Event(e.kind, e.key, e.ts_ms, dict(e.values)))
        if i % 23 == 7:
            expect.append((len(dirty), "late"))
            dirty.append(Event(e.kind, e.key, e.ts_ms - 1, {"x": 0.5, "y": 0.5}))
    cfg = make_config(k1=1, batch_windows=2)
    ref = Run(cfg, clean, chunk=240)
    for chunk in (1, 7, len(dirty)):
        run = Run(cfg, dirty, chunk=chunk)
        assert run.dropped == expect
        assert dict(run.engine.stats.dropped) == {
            "duplicate": sum(r == "duplicate" for _, r in expect),
            "late": sum(r == "late" for _, r in expect)}
        np.testing.assert_allclose(run.yhat[keep], ref.yhat, rtol=0, atol=1e-6)
        torch.testing.assert_close(run.weights, ref.weights, rtol=0, atol=1e-6)
        assert run.engine.stats.accepted == len(clean)


def test_same_time_different_values_is_not_a_duplicate() -> None:
    e = Event("sensor", "a", 1_000, {"x": 1.0, "y": 2.0})
    eng = Engine(make_config())
    out = eng.process([e, Event("sensor", "a", 1_000, {"x": 1.0, "y": 3.0})])
    assert out.index.tolist() == [0, 1] and not out.dropped


def test_duplicate_with_a_missing_value_is_dropped_however_the_stream_is_chunked() -> None:
    """A re-delivered event that has a missing reading must be dropped as a duplicate both
    when it arrives in the same poll as the original and in the next poll. Regression test:
    inside a chunk ``_scan`` once compared the raw lists (None == None) and across chunks the
    table's carried-forward ``last_raw``, so only the first case was dropped."""
    t0 = 1_700_000_000_000
    events = []
    for i in range(30):
        e = Event("sensor", "a", t0 + 60_000 * i,
                  {"x": float(np.sin(i)), "y": None if i % 5 == 3 else float(i)})
        events.append(e)
        if i % 5 == 3:
            events.append(Event("sensor", "a", e.ts_ms, dict(e.values)))
    expect = [(i, "duplicate") for i in range(1, len(events)) if events[i] == events[i - 1]]
    for chunk in (len(events), 7, 1):
        assert Run(make_config(), events, chunk=chunk).dropped == expect, chunk


@pytest.mark.parametrize("cell, horizon", [("gru", 1), ("lstm", 3)])
def test_results_are_bit_identical_however_the_stream_is_chunked(cell: str,
                                                                 horizon: int) -> None:
    """Issue 15.4: a key's numbers do not depend on which other keys share a call (per-key
    kernels, update batches defined by the stream), so re-chunking a stream of many keys
    (one event per call, ragged chunks, one call) gives the same bits, not only close
    ones: forecasts, errors, weights and the z-scored totals."""
    events = multi_key_stream(900, keys=12, seed=21, late=True)
    cfg = make_config(cell, horizon, k1=2, k2=6, batch_windows=8,
                      drift=DriftConfig(action="reset", threshold=2.0, min_instances=10))
    rng = np.random.default_rng(0)
    ragged = Run.__new__(Run)  # chunks of 1..300 events
    runs = [Run(cfg, events, 1), Run(cfg, events, len(events))]
    cuts = np.cumsum(rng.integers(1, 300, size=50))
    cuts = [0, *[int(c) for c in cuts if c < len(events)], len(events)]
    eng = Engine(cfg)
    yh = np.full((len(events), horizon, 2), np.nan)
    for a, b in itertools.pairwise(cuts):
        out = eng.process(events[a:b])
        yh[a + out.index] = out.yhat
    ragged.engine, ragged.yhat, ragged.weights = eng, yh, weights(eng)
    ref = runs[0]
    assert ref.updates > 30 and ref.engine.stats.drift_events > 0
    for other in (runs[1], ragged):
        np.testing.assert_array_equal(other.yhat, ref.yhat)
        assert torch.equal(other.weights, ref.weights)
        assert other.engine.stats.z_abs_model == ref.engine.stats.z_abs_model
        assert other.engine.summary() == ref.engine.summary()
    np.testing.assert_array_equal(runs[1].err, ref.err)


# ---------------------------------------------------------------------------- one event, peek
def _raw(engine: Engine, e: Event) -> np.ndarray:
    return np.array([np.nan if e.values.get(n) is None else e.values[n]
                     for n in engine.value_names or ()], dtype=np.float64)


def _same_state(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor):  # NaN equals NaN (missing values, pending forecasts)
        return a.dtype == b.dtype and (torch.equal(a, b) or (
            a.is_floating_point() and torch.equal(a.isnan(), b.isnan())
            and torch.equal(a.nan_to_num(), b.nan_to_num())))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same_state(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(_same_state(x, y) for x, y in zip(a, b, strict=True))
    return a == b or (isinstance(a, float) and math.isnan(a) and math.isnan(b))


@pytest.mark.parametrize("cell, horizon", [("gru", 1), ("lstm", 3)])
def test_process_one_gives_the_bits_of_process(cell: str, horizon: int) -> None:
    """The lean one-event path (the River adapters') is the same engine: the model's
    forecasts, weights, drops and totals equal those of one process call over the stream."""
    events = multi_key_stream(700, keys=6, seed=5, late=True)
    cfg = make_config(cell, horizon, k1=2, k2=6, batch_windows=4,
                      drift=DriftConfig(action="reset", threshold=2.0, min_instances=10))
    ref = Run(cfg, events, len(events))
    eng = Engine(cfg)
    yhat = np.full_like(ref.model_yhat, np.nan)
    for i, e in enumerate(events):
        got = eng.process_one(e.key, _raw(eng, e), e.ts_ms)
        if got is not None:
            yhat[i] = got
    assert ref.updates > 20 and ref.dropped
    np.testing.assert_array_equal(yhat, ref.model_yhat)
    assert torch.equal(weights(eng), ref.weights)
    assert eng.stats.dropped == ref.engine.stats.dropped
    assert eng.stats.z_abs_model == ref.engine.stats.z_abs_model
    assert eng.stats.accepted == ref.engine.stats.accepted


@pytest.mark.parametrize("cell", CELLS)
def test_peek_changes_nothing_and_runs_the_real_steps(cell: str) -> None:
    """A peek leaves every state as it was, and its forecasts are those the real path makes
    for the same events with fixed weights; rolled forward, the real path fed its own
    forecasts."""
    events = multi_key_stream(300, keys=3, seed=8)
    eng = Engine(make_config(cell, values=("x", "y")))
    eng.process(events)
    before = eng.state_dict()
    ts = events[-1].ts_ms + 60_000 * np.arange(1, 5)
    given = np.array([[0.3, 9.0], [np.nan, 11.0], [-0.2, np.nan], [0.1, 10.0]])
    peeked = eng.peek("k1", given, ts)
    rolled = eng.peek("k1", np.full((4, 2), np.nan), ts, roll=True)
    fresh = eng.peek("new-key", given, ts)
    assert _same_state(eng.state_dict(), before)

    def real(key: str, rows: np.ndarray, roll: bool) -> np.ndarray:
        twin = Engine(eng.config)
        twin.load_state_dict(copy.deepcopy(before))
        twin.learning = False
        prev = twin.last_forecast(key)[0]
        out = []
        for row, t in zip(rows, ts, strict=True):
            row = np.where(np.isnan(row), prev, row) if roll else row
            got = twin.process_one(key, row, int(t))
            assert got is not None
            out.append(got.copy())
            prev = got[0]
        return np.array(out)

    np.testing.assert_array_equal(peeked, real("k1", given, roll=False))
    np.testing.assert_array_equal(rolled, real("k1", np.full((4, 2), np.nan), roll=True))
    np.testing.assert_array_equal(fresh, real("new-key", given, roll=False))
    assert np.isfinite(rolled).all()


def test_process_one_rejects_what_process_rejects() -> None:
    eng = Engine(make_config(values=("x", "y")))
    for row in ([np.nan, np.nan], [1e13, 1.0], [np.inf, 1.0], [-np.inf, np.nan]):
        assert eng.process_one("a", np.array(row), 1) is None
    assert eng.stats.rejected == {"missing_value": 1, "out_of_range": 1, "non_finite": 2}
    assert eng.process_one("a", np.array([np.nan, 2.0]), 2) is not None
    assert eng.process_one("a", np.array([np.nan, 2.0]), 2) is None  # a duplicate
    assert eng.stats.dropped == {"duplicate": 1} and eng.stats.accepted == 1
    ref = Engine(make_config(values=("x", "y")))
    out = ref.process([Event("sensor", "a", 1, {"x": None, "y": None}),
                       Event("sensor", "a", 1, {"x": 1e13, "y": 1.0}),
                       Event("sensor", "a", 1, {"x": math.inf, "y": 1.0})])
    assert [e.reason for _, e in out.rejected] == ["missing_value", "out_of_range",
                                                   "non_finite"]


def test_building_an_engine_leaves_the_callers_torch_random_state_alone() -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    Shard(EngineConfig(), ["x"])
    assert torch.equal(torch.rand(3), expected)
