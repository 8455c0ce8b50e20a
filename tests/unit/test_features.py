"""Per-key features: vectorised scaling agrees with river, transforms invert, calendar."""

from __future__ import annotations

import numpy as np
import pytest
from river.preprocessing import StandardScaler

from streamseq.features import (
    calendar_features,
    default_transform,
    forward_transform,
    invert_forecast,
    welford_update,
    zscore,
)
from streamseq.features.transforms import CODES


def test_scaling_matches_river_per_key_and_value() -> None:
    """Many keys updated in one numpy call give river's StandardScaler, key by key, with
    missing observations skipped."""
    rng = np.random.default_rng(3)
    n_keys, n_vals, steps = 5, 3, 200
    count = np.zeros((n_keys, n_vals))
    mean = np.zeros((n_keys, n_vals))
    m2 = np.zeros((n_keys, n_vals))
    rivers = [StandardScaler() for _ in range(n_keys)]
    for _ in range(steps):
        slots = rng.choice(n_keys, size=3, replace=False)
        u = rng.normal(5.0, 3.0, size=(3, n_vals)) * (1 + slots[:, None])
        observed = rng.random((3, n_vals)) > 0.2
        welford_update(count, mean, m2, slots, u, observed)
        z, _ = zscore(u, count[slots], mean[slots], m2[slots], clip=1e9)
        for row, s in enumerate(slots.tolist()):
            x = {j: float(u[row, j]) for j in range(n_vals) if observed[row, j]}
            rivers[s].learn_one(x)
            expected = rivers[s].transform_one(x)
            for j, v in expected.items():
                assert z[row, j] == pytest.approx(v, rel=1e-9, abs=1e-9)
    for s, r in enumerate(rivers):
        for j in range(n_vals):
            assert mean[s, j] == pytest.approx(r.means[j], rel=1e-12)
            assert m2[s, j] / count[s, j] == pytest.approx(r.vars[j], rel=1e-9)


def test_zscore_clips_and_handles_no_spread() -> None:
    count = np.array([[1.0, 3.0]])
    mean = np.array([[5.0, 0.0]])
    m2 = np.array([[0.0, 3.0]])  # var 0 and var 1
    z, std = zscore(np.array([[5.0, 100.0]]), count, mean, m2, clip=8.0)
    assert z.tolist() == [[0.0, 8.0]]
    assert std.tolist() == [[1.0, 1.0]]


def test_transforms_and_inverse() -> None:
    codes = np.array([CODES["level"], CODES["logret"], CODES["log1p"]])
    prev = np.array([[1.0, 100.0, 0.0]])
    x = np.array([[2.5, 110.0, 9.0]])
    u = forward_transform(codes, x, prev)
    assert u[0, 0] == 2.5
    assert u[0, 1] == pytest.approx(np.log(1.1))
    assert u[0, 2] == pytest.approx(np.log(10.0))
    # a log return without a valid previous price is 0, not NaN
    u0 = forward_transform(codes, x, np.full((1, 3), np.nan))
    assert u0[0, 1] == 0.0 and np.isfinite(u0).all()
    # inverse: level stays, cumulative returns compound on the last price, log1p expm1
    u_hat = np.array([[[1.0, 0.1, np.log(5.0)], [2.0, 0.1, np.log(7.0)]]])
    y = invert_forecast(codes, u_hat, np.array([[0.0, 100.0, 0.0]]))
    assert y[0, :, 0].tolist() == [1.0, 2.0]
    assert y[0, :, 1] == pytest.approx([100 * np.exp(0.1), 100 * np.exp(0.2)])
    assert y[0, :, 2] == pytest.approx([4.0, 6.0])


def test_default_transforms() -> None:
    assert default_transform("price", "price") == "logret"
    assert default_transform("price", "size") == "log1p"
    assert default_transform("price", "ask_close") == "logret"
    assert default_transform("sensor", "price") == "level"


def test_calendar_features_on_unit_circle() -> None:
    ts = np.array([0, 3_600_000 * 6, 86_400_000 * 4, 1_704_067_200_000])  # 2024-01-01 Monday
    f = calendar_features(ts)
    assert f.shape == (4, 4)
    assert np.allclose(f[:, 0] ** 2 + f[:, 1] ** 2, 1) and np.allclose(f[:, 2] ** 2 + f[:, 3] ** 2, 1)
    assert f[3, 2:].tolist() == pytest.approx([0.0, 1.0])  # Monday is angle 0
    assert f[2, 2:] == pytest.approx(f[3, 2:])  # 1970-01-05 was a Monday too
