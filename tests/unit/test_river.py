"""The River adapters (streamseq.river) checked by River itself, and what its checks do not
cover: forecasts that change nothing, a pickle that continues the same stream, features
that come and go."""

from __future__ import annotations

import doctest
import math
import pickle
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from river import checks, datasets, time_series
from river.base import Estimator

from streamseq.river import RNNForecaster, RNNRegressor


def _river_checks() -> Iterator[Any]:
    for cls in (RNNForecaster, RNNRegressor):
        for i, params in enumerate(cls._unit_test_params()):
            model = cls(**params)
            for check in checks.yield_checks(model):
                if check.__name__ in model._unit_test_skips():
                    continue
                yield pytest.param(model, check, id=f"{cls.__name__}{i}-{check.__name__}")


@pytest.mark.parametrize("model, check", list(_river_checks()))
def test_river_estimator_checks(model: Estimator, check: Callable[[Estimator], None]) -> None:
    """Every check of ``river.checks.yield_checks`` (what ``check_estimator`` runs) passes,
    each on a fresh clone: repr, clone, parameters, pickling, pure learn and predict,
    predict before learn, clone independence, seeding, features that come and go, bounded
    memory, and the forecaster's checks."""
    check(model.clone())


def test_both_classes_are_checked_as_their_river_kind() -> None:
    names = {p.values[1].__name__ for p in _river_checks()}
    assert {"check_forecast", "check_pickling", "check_seeding_is_idempotent",
            "check_emerging_features", "check_bounded_memory_growth",
            "check_clone_is_independent", "check_predict_one_before_any_learn"} <= names
    assert isinstance(RNNForecaster(), time_series.base.Forecaster)


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_forecast_changes_nothing_and_pickles_continue_the_stream(cell: str) -> None:
    model = RNNForecaster(cell=cell, hidden=8, k1=2, k2=4, seed=3)
    ys = [10 + math.sin(t / 3) + 0.01 * t for t in range(300)]
    for y in ys[:200]:
        model.learn_one(y, {"t": float(y > 10)})
    frozen = pickle.dumps(model)
    first = model.forecast(6, xs=[{"t": 1.0}] * 6)
    assert pickle.dumps(model) == frozen
    assert model.forecast(6, xs=[{"t": 1.0}] * 6) == first
    assert all(math.isfinite(v) for v in first) and abs(first[0] - ys[200]) < 1.0
    twin = pickle.loads(frozen)
    for y in ys[200:]:
        model.learn_one(y, {"t": float(y > 10)})
        twin.learn_one(y, {"t": float(y > 10)})
    assert model.forecast(3) == twin.forecast(3)
    assert 145 <= model.engine.stats.updates_applied <= 150  # a step every k1 = 2 values


def test_forecast_before_learning_and_of_no_steps() -> None:
    model = RNNForecaster(hidden=8, seed=0)
    assert model.forecast(3) == [0.0, 0.0, 0.0]
    assert model.forecast(0) == []
    model.learn_one(5.0)
    assert model.forecast(2) == [5.0, 5.0]  # untrained residual head: the last value


def test_regressor_predicts_without_changing_and_features_take_columns_in_name_order() -> None:
    a, b = RNNRegressor(hidden=8, max_features=3, seed=1), RNNRegressor(hidden=8, max_features=3,
                                                                        seed=1)
    stream = list(datasets.TrumpApproval().take(120))
    for x, y in stream:
        frozen = pickle.dumps(a)
        assert a.predict_one(x) == b.predict_one(dict(reversed(list(x.items()))))
        assert pickle.dumps(a) == frozen
        a.learn_one(x, y)
        b.learn_one(dict(reversed(list(x.items()))), y)
    assert a._columns == b._columns and len(a._columns) == 3  # past max_features: ignored
    assert list(a._columns) == sorted(stream[0][0])[:3]
    assert a.engine.stats.accepted == 120
    # a feature that disappears is carried with its missing flag; a new one takes no column
    assert math.isfinite(a.predict_one({"unseen": 1.0}))
    a.learn_one({"unseen": 1.0}, 40.0)
    assert "unseen" not in a._columns and a.engine.stats.accepted == 121


def test_the_readme_section_runs() -> None:
    """The README's "Use it from River" example, as a doctest."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme[readme.index("## Use it from River"):readme.index("## Metrics")]
    code = section.split("```python")[1].split("```")[0]
    test = doctest.DocTestParser().get_doctest(code, {}, "README: Use it from River",
                                               "README.md", 0)
    runner = doctest.DocTestRunner()
    runner.run(test)
    assert runner.summarize(verbose=False).failed == 0 and len(test.examples) >= 5


def test_names_without_numbers_take_no_column() -> None:
    """River's airline passengers carry a date in ``x``: it takes no input column."""
    model = RNNForecaster(hidden=8, max_features=2, seed=0)
    for x, y in datasets.AirlinePassengers().take(30):
        model.learn_one(y, x)
        model.learn_one(y, {**x, "flag": True, "name": "a", "nan": math.nan})
    assert model._columns == {"flag": 1, "nan": 2}
    assert all(math.isfinite(v) for v in model.forecast(3, xs=[x] * 3))
