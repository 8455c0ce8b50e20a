"""Per-key experts, their mixture, intervals and anomaly flags (streamseq.forecast), each
checked against an independent oracle: river's Holt, batch weighted least squares, plain
loops of the published update rules, hand-computed cases, and the same stream cut into
other chunks or restored from a snapshot."""

from __future__ import annotations

import io
import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from river.time_series import HoltWinters

from streamseq.config import ForecastConfig
from streamseq.features.transforms import CODES
from streamseq.forecast import EXPERTS, FORECASTERS, ExpertAggregator
from streamseq.forecast.autoregression import rls_reset, rls_update
from streamseq.forecast.conformal import aci_step, quantile_multiplier
from streamseq.forecast.mixture import fixed_share_update, mix
from streamseq.forecast.smoothing import holt_forecast, holt_update

LEVEL, LOGRET = CODES["level"], CODES["logret"]
MIN5 = 300_000


def _run(cfg: ForecastConfig, y: np.ndarray, model: np.ndarray | None = None, *,
         codes: tuple[int, ...] = (LEVEL,), horizon: int = 1, dt: int = MIN5,
         weights: bool = False) -> tuple[ExpertAggregator, object]:
    agg = ExpertAggregator(cfg, np.array(codes), horizon)
    values = y.reshape(len(y), -1)
    out = agg.process(np.zeros(len(y), np.int64), dt * np.arange(len(y)), values, model,
                      weights=weights)
    return agg, out


def _mae(agg: ExpertAggregator, name: str, h: int = 0) -> float:
    t = agg.totals()
    return float(t["tot_abs"][h, 0, FORECASTERS.index(name)] / t["tot_n"][h, 0])


# ---------------------------------------------------------------------- the experts
def test_holt_without_damping_is_rivers_holt() -> None:
    """Started from river's initial level and trend, damped Holt with phi = 1 gives river's
    HoltWinters(alpha, beta) forecasts at every step and horizon."""
    rng = np.random.default_rng(0)
    y = np.cumsum(rng.normal(0.3, 1.0, 300))
    alpha, beta = 0.4, 0.2
    river = HoltWinters(alpha=alpha, beta=beta)
    river.learn_one(float(y[0]))
    river.learn_one(float(y[1]))
    level, trend = river.level[-1], river.trend[-1]
    for v in y[2:]:
        river.learn_one(float(v))
        level, trend = holt_update(level, trend, float(v), alpha, beta, 1.0)
        expected = river.forecast(horizon=3)
        for h in range(3):
            assert holt_forecast(level, trend, 1.0, h + 1) == pytest.approx(expected[h],
                                                                            rel=1e-12)


def test_damped_trend_levels_off() -> None:
    far = holt_forecast(10.0, 1.0, 0.9, 1000)
    assert far == pytest.approx(10.0 + 0.9 / 0.1)  # the geometric series' limit
    assert holt_forecast(10.0, 1.0, 0.9, 1) == pytest.approx(10.9)


def test_rls_with_forgetting_is_weighted_ridge_least_squares() -> None:
    """RLS after t steps equals the closed-form minimiser of
    sum_i lam^(t-i) (y_i - x_i.theta)^2 + lam^t |theta|^2 / p0."""
    rng = np.random.default_rng(1)
    d, t, lam, p0 = 3, 60, 0.97, 0.5
    xs = rng.normal(size=(t, d))
    ys = xs @ np.array([0.5, -1.0, 2.0]) + rng.normal(0, 0.3, t)
    theta, cov = np.zeros(d), np.zeros((d, d))
    rls_reset(theta, cov, p0)
    for x, y in zip(xs, ys, strict=True):
        assert rls_update(theta, cov, x, float(y), lam, p0)
    w = lam ** np.arange(t - 1, -1, -1)
    a = (xs * w[:, None]).T @ xs + lam ** t * np.eye(d) / p0
    b = (xs * w[:, None]).T @ ys
    np.testing.assert_allclose(theta, np.linalg.solve(a, b), rtol=1e-8)


def test_rls_resets_instead_of_blowing_up() -> None:
    theta, cov = np.zeros(2), np.zeros((2, 2))
    rls_reset(theta, cov, 1.0)
    assert not rls_update(theta, cov, np.array([1.0, np.inf]), 1.0, 0.99, 1.0)
    assert theta.tolist() == [0.0, 0.0] and cov.tolist() == [[1.0, 0.0], [0.0, 1.0]]
    for _ in range(10_000):  # no excitation: forgetting alone would grow cov as 0.99^-t
        rls_update(theta, cov, np.array([1.0, 0.0]), 0.0, 0.99, 1.0)
    assert np.trace(cov) <= 2.0 + 1e-9


# ---------------------------------------------------------------------- the mixture
def _fixed_share_oracle(w: list[float], gap: float, loss: list[float], awake: list[bool],
                        share: float) -> tuple[list[float], float]:
    """The update written from the papers' formulas, one expert at a time."""
    n = len(w)
    idx = [e for e in range(n) if awake[e]]
    mass = sum(w[e] for e in idx)
    p = {e: w[e] / mass for e in idx}
    h = sum(p[e] * loss[e] for e in idx)
    if gap == 0:
        best = min(loss[e] for e in idx)
        leaders = [e for e in idx if loss[e] == best]
        post = {e: (p[e] / sum(p[b] for b in leaders) if e in leaders else 0.0) for e in idx}
        m = best
    else:
        eta = math.log(n) / gap
        z = sum(p[e] * math.exp(-eta * loss[e]) for e in idx)
        post = {e: p[e] * math.exp(-eta * loss[e]) / z for e in idx}
        m = -math.log(z) / eta
    new = [post[e] * mass if awake[e] else w[e] for e in range(n)]
    new = [(1 - share) * v + share / n for v in new]
    return new, gap + (h - m)


def test_fixed_share_update_matches_the_formulas_with_sleeping_experts() -> None:
    rng = np.random.default_rng(2)
    w = np.full(5, 0.2)
    gap = 0.0
    ow, ogap = list(w), 0.0
    for _ in range(300):
        loss = rng.exponential(1.0, 5) * np.array([1.0, 0.8, 1.2, 1.0, 0.9])
        awake = rng.random(5) > 0.3
        awake[1] = True
        gap = fixed_share_update(w, gap, loss, awake, 0.01)
        ow, ogap = _fixed_share_oracle(ow, ogap, loss.tolist(), awake.tolist(), 0.01)
        np.testing.assert_allclose(w, ow, rtol=1e-9, atol=1e-12)
        assert gap == pytest.approx(ogap, rel=1e-9)
    assert w.sum() == pytest.approx(1.0)
    assert int(np.argmax(w)) == 1  # the expert with the smallest expected loss
    assert w.min() >= 0.01 / 5 - 1e-12  # fixed share keeps every expert alive


def test_mix_of_one_awake_expert_is_exactly_its_forecast() -> None:
    f = np.array([0.1 + 0.2, 5.0, 7.0])
    assert mix(np.array([0.3, 0.3, 0.4]), f, np.array([True, False, False])) == f[0]
    assert math.isnan(mix(np.ones(3) / 3, f, np.zeros(3, dtype=np.bool_)))


def test_weights_follow_a_switch_of_the_best_expert() -> None:
    """A random walk (persistence is best), then a smooth sine the model forecasts exactly:
    the weight moves to the model within a few dozen events of the switch."""
    rng = np.random.default_rng(3)
    n = 1200
    walk = np.cumsum(rng.normal(0, 1, 600))
    sine = walk[-1] + 5 * np.sin(np.arange(1, 601) / 3.0)
    y = np.concatenate([walk, sine])
    model = np.full((n, 1, 1), np.nan)
    model[:600, 0, 0] = y[:600] + rng.normal(0, 3, 600)  # a bad model on the walk
    model[600:-1, 0, 0] = y[601:]  # a perfect model on the sine (forecast of the next value)
    _, out = _run(ForecastConfig(), y, model, weights=True)
    w = out.weights[:, 0, 0, :]
    assert w[550:599, EXPERTS.index("model")].mean() < 0.05
    assert w[650:1190, EXPERTS.index("model")].mean() > 0.9


def test_mixture_costs_at_most_a_constant_against_the_random_walk() -> None:
    """On a pure random walk (persistence is optimal) with a noisy model, the published
    forecast's MAE stays within half a percent of persistence's ((A,B)-Prod's guarantee)."""
    rng = np.random.default_rng(4)
    n = 6000
    y = 100 * np.exp(np.cumsum(rng.standard_t(3, n) * 1e-3))
    model = (y * np.exp(rng.normal(0, 1e-3, n)))[:, None, None]
    agg, _ = _run(ForecastConfig(), y, model, codes=(LOGRET,))
    assert _mae(agg, "mixture") <= 1.005 * _mae(agg, "persistence")
    assert _mae(agg, "model") > 1.2 * _mae(agg, "persistence")


def test_mixture_tracks_the_best_expert_on_a_noisy_seasonal_stream() -> None:
    rng = np.random.default_rng(5)
    t = np.arange(3000)
    y = 10 * np.sin(2 * np.pi * t / 288) + np.cumsum(rng.normal(0, 0.2, 3000)) \
        + rng.normal(0, 1.0, 3000)
    agg, _ = _run(ForecastConfig(), y)
    experts = {name: _mae(agg, name) for name in ("persistence", "smoother", "seasonal",
                                                  "linear")}
    assert _mae(agg, "mixture") < 1.01 * min(experts.values())
    assert _mae(agg, "mixture") < 0.9 * experts["persistence"]


def test_bare_model_publishes_the_model() -> None:
    rng = np.random.default_rng(6)
    y = np.cumsum(rng.normal(0, 1, 300))
    model = (y + rng.normal(0, 0.5, 300))[:, None, None]
    _, out = _run(ForecastConfig(experts=()), y, model)
    np.testing.assert_array_equal(out.yhat, model)


# ---------------------------------------------------------------------- seasons
def test_configured_period_gives_the_value_one_period_before_the_target() -> None:
    y = np.arange(100, dtype=np.float64) ** 1.5
    agg, out = _run(ForecastConfig(period=7), y, horizon=3)
    # forecasts made at event i for i+h: seasonal = y[i + h - 7]; recover them from errors
    err = out.errors[:, 0, FORECASTERS.index("seasonal")]
    for i in range(20, 99):
        assert y[i + 1] - err[i + 1] == pytest.approx(y[i + 1 - 7])


def test_daily_season_is_detected_from_event_times() -> None:
    """A daily on/off pattern every 5 minutes: the period (288 events) is found from the
    event times and the seasonal expert wakes once a period of evidence has come in."""
    rng = np.random.default_rng(7)
    t = np.arange(2000)
    phase = t % 288
    y = 10.0 * ((phase > 96) & (phase < 216)) + rng.normal(0, 0.3, 2000)
    agg, out = _run(ForecastConfig(), y, weights=True)
    assert int(agg.state["period"][0]) == 288
    awake = out.weights[:, 0, 0, EXPERTS.index("seasonal")] > 0
    assert not awake[:48 + 2 * 288].any() and awake[-1000:].all()
    assert _mae(agg, "mixture") < 0.95 * _mae(agg, "persistence")


@pytest.mark.parametrize("dt", [MIN5, 3_600_000])
def test_no_season_without_evidence(dt: int) -> None:
    rng = np.random.default_rng(8)
    y = np.cumsum(rng.normal(0, 1, 3000))
    agg, out = _run(ForecastConfig(), y, dt=dt, weights=True)
    assert int(agg.state["period"][0]) == 86_400_000 // dt
    assert (out.weights[:, 0, 0, EXPERTS.index("seasonal")] == 0).all()


def test_no_season_when_turned_off() -> None:
    t = np.arange(1000)
    agg, out = _run(ForecastConfig(period=0), np.sin(2 * np.pi * t / 288), weights=True)
    assert int(agg.state["period"][0]) == 0
    assert (out.weights[:, 0, 0, EXPERTS.index("seasonal")] == 0).all()


# ---------------------------------------------------------------------- intervals
def test_quantile_map_and_aci_step_by_hand() -> None:
    assert quantile_multiplier(math.exp(-2.0)) == pytest.approx(2.0)
    level = 0.1
    for miss in (True, False, False):
        level = aci_step(level, 0.1, miss, 0.5)
    assert level == pytest.approx(0.1 + 0.5 * (0.1 - 1) + 2 * 0.5 * 0.1)


@pytest.mark.parametrize("noise", ["gauss", "student", "garch"])
def test_interval_coverage_is_near_nominal(noise: str) -> None:
    rng = np.random.default_rng(9)
    n = 5000
    if noise == "gauss":
        e = rng.normal(0, 1, n)
    elif noise == "student":
        e = rng.standard_t(2.5, n)
    else:  # volatility clusters
        vol = np.exp(np.convolve(rng.normal(0, 0.3, n), np.ones(50) / 7, "same"))
        e = rng.normal(0, 1, n) * vol
    y = np.cumsum(e)
    for cov in (0.8, 0.9):
        agg, _ = _run(ForecastConfig(coverage=cov), y)
        t = agg.totals()
        assert t["cov_in"][0, 0] / t["cov_n"][0, 0] == pytest.approx(cov, abs=0.015)


def test_interval_follows_the_key_scale_and_prices_stay_positive() -> None:
    rng = np.random.default_rng(10)
    y = 50 * np.exp(np.cumsum(rng.normal(0, 0.01, 800)))
    _, small = _run(ForecastConfig(), y, codes=(LOGRET,))
    _, large = _run(ForecastConfig(), 1000 * y, codes=(LOGRET,))
    np.testing.assert_allclose(large.hi[5:] - large.lo[5:], 1000 * (small.hi[5:] - small.lo[5:]),
                               rtol=1e-9)
    assert (small.lo[1:] > 0).all() and (small.lo[1:] < small.yhat[1:]).all()
    assert (small.hi[1:] > small.yhat[1:]).all()


def test_spikes_are_flagged_as_anomalies() -> None:
    rng = np.random.default_rng(11)
    y = np.sin(np.arange(3000) / 10) + rng.normal(0, 0.05, 3000)
    spikes = np.arange(500, 3000, 250)
    y[spikes] += 3.0
    agg, out = _run(ForecastConfig(), y)
    flagged = np.flatnonzero(out.anomaly[:, 0])
    assert set(spikes.tolist()) <= set(flagged.tolist())
    assert len(flagged) < 2 * len(spikes) + 0.01 * len(y)
    assert agg.totals()["anomalies"][0] == len(flagged)
    i = spikes[0]
    fc, lo, hi = out.checked[i, 0]
    assert lo <= fc <= hi < y[i]


# ---------------------------------------------------------------------- determinism
def _stream(n_keys: int = 5, n: int = 1500, seed: int = 12) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    keys = rng.integers(0, n_keys, n)
    ts = np.zeros(n, np.int64)
    vals = np.zeros((n, 2))
    state = np.zeros((n_keys, 2))
    count = np.zeros(n_keys, np.int64)
    for i, k in enumerate(keys):
        count[k] += 1
        ts[i] = count[k] * 3_600_000
        state[k] += rng.normal(0, 1, 2)
        vals[i] = state[k] + np.array([0.0, 100.0 + 10 * k])
        vals[i, 1] = abs(vals[i, 1])
    vals[rng.random((n, 2)) < 0.05] = np.nan
    model = (vals + rng.normal(0, 0.5, (n, 2)))[:, None, :]
    return keys, ts, vals, np.repeat(model, 2, axis=1)


def test_results_do_not_depend_on_how_the_stream_is_chunked() -> None:
    keys, ts, vals, model = _stream()
    cfg = ForecastConfig()
    codes = np.array([LEVEL, LOGRET])

    def run(bounds: list[int]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        agg = ExpertAggregator(cfg, codes, horizon=2, capacity=1)
        outs = [agg.process(keys[a:b], ts[a:b], vals[a:b], model[a:b])
                for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
        stacked = np.concatenate([np.concatenate([o.yhat, o.lo, o.hi], axis=2) for o in outs])
        return stacked, agg.totals()

    n = len(keys)
    ref, ref_tot = run([0, n])
    for bounds in ([0, 1, 2, 700, n], list(range(0, n, 37)) + [n]):
        got, tot = run(bounds)
        np.testing.assert_array_equal(got, ref)
        for name in ref_tot:
            np.testing.assert_array_equal(tot[name], ref_tot[name])


def test_snapshot_restores_exactly_in_weights_only_mode() -> None:
    keys, ts, vals, model = _stream()
    codes = np.array([LEVEL, LOGRET])
    cfg = ForecastConfig()
    whole = ExpertAggregator(cfg, codes, horizon=2)
    ref = whole.process(keys, ts, vals, model)
    first = ExpertAggregator(cfg, codes, horizon=2)
    first.process(keys[:800], ts[:800], vals[:800], model[:800])
    buf = io.BytesIO()
    torch.save(first.state_dict(), buf)
    buf.seek(0)
    second = ExpertAggregator(cfg, codes, horizon=2)
    second.load_state_dict(torch.load(buf, weights_only=True))
    rest = second.process(keys[800:], ts[800:], vals[800:], model[800:])
    np.testing.assert_array_equal(rest.yhat, ref.yhat[800:])
    np.testing.assert_array_equal(rest.lo, ref.lo[800:])
    assert whole.totals()["tot_abs"].tolist() == second.totals()["tot_abs"].tolist()


def test_slots_grow_evict_and_reuse() -> None:
    cfg = ForecastConfig()
    agg = ExpertAggregator(cfg, np.array([LEVEL]), horizon=1, capacity=1)
    y = np.arange(50, dtype=np.float64)[:, None]
    a = agg.process(np.full(50, 5), np.arange(50) * 1000, y)
    assert agg.state.capacity >= 6
    before = agg.totals()["tot_n"].copy()
    agg.forget([5])
    agg.state.reset([5])  # what the key table does to its parts on eviction
    assert agg.totals()["tot_n"].tolist() == before.tolist()  # kept as evicted totals
    assert int(agg.state["n"][5]) == 0
    b = agg.process(np.full(50, 5), np.arange(50) * 1000, y)  # a fresh key in the old slot
    np.testing.assert_array_equal(a.yhat, b.yhat)


def test_missing_values_carry_and_are_not_scored() -> None:
    y = np.array([1.0, 2.0, np.nan, 4.0, 5.0])
    agg, out = _run(ForecastConfig(), y)
    assert np.isnan(out.errors[2]).all() and np.isfinite(out.errors[3]).all()
    assert agg.totals()["tot_n"][0, 0] == 3  # events 1, 3, 4


def test_inputs_are_not_mutated() -> None:
    keys, ts, vals, model = _stream(n=200)
    copies = [x.copy() for x in (keys, ts, vals, model)]
    ExpertAggregator(ForecastConfig(), np.array([LEVEL, LOGRET]), 2).process(keys, ts, vals,
                                                                             model)
    for a, b in zip((keys, ts, vals, model), copies, strict=True):
        np.testing.assert_array_equal(a, b)


def test_config_is_validated() -> None:
    from streamseq.exceptions import ConfigError

    for bad in ({"experts": ("oracle",)}, {"period": 1}, {"share": 0.0},
                {"coverage": 1.0}, {"period": 500, "max_period": 288}):
        with pytest.raises(ConfigError):
            replace(ForecastConfig(), **bad)
