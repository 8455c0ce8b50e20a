"""A stateful recurrent regressor with River's :class:`~river.base.Regressor` interface."""

from __future__ import annotations

from collections.abc import Hashable, Iterator
from typing import Any

import numpy as np
from river import base

from streamseq.river.base import KEY, EngineAdapter

__all__ = ["RNNRegressor"]


class RNNRegressor(EngineAdapter, base.Regressor):
    """Online GRU/LSTM regressor over a stream of feature dicts, with a recurrent state
    carried from one ``learn_one`` to the next.

    A stateful alternative to deep-river's rolling regressors: rather than re-running a
    window of past inputs at every call, the model keeps its hidden state and advances it
    by one step per ``learn_one``, learning by truncated BPTT (a window of the last ``k2``
    steps every ``k1`` of them) on the streamseq engine's compiled kernels. The step of
    ``learn_one(x, y)`` sees ``x`` and the previous target (known by then in any online
    loop), and its output is the prediction of ``y``; ``predict_one(x)`` runs that step on
    a copy of the state, so it changes nothing.

    Features may appear and disappear: a name takes the next of ``max_features`` columns
    the first time ``learn_one`` sees it (the names new in one call in sorted order, so dict
    order changes nothing; names past ``max_features`` are ignored). A feature absent from
    ``x`` is missing: its last value is carried forward with a missing flag as an input (a
    column never seen is 0 with its flag set). Values that are not finite numbers count as
    missing, and a name seen only with values that are not numbers takes no column.
    Features and the target are scaled by running means and variances.

    Parameters
    ----------
    cell
        ``"gru"`` or ``"lstm"``.
    hidden
        Width of the recurrent state.
    layers
        Stacked recurrent layers.
    k1
        An optimizer step every ``k1`` events.
    k2
        Backpropagation length (``k2 >= k1``).
    lr
        Adam's learning rate.
    residual
        Predict the change from the previous target rather than the target (an untrained
        model then predicts the previous target).
    max_features
        Feature columns.
    seed
        Seed of the initial weights (``None``: a random one).

    Attributes
    ----------
    engine
        The wrapped :class:`~streamseq.engine.Engine` (one key).

    Examples
    --------
    Progressive validation (predict, then learn) on the Trump approval ratings bundled
    with River, next to a linear regression:

    >>> from river import datasets, evaluate, linear_model, metrics, preprocessing
    >>> from streamseq.river import RNNRegressor
    >>> linear = preprocessing.StandardScaler() | linear_model.LinearRegression()
    >>> for model in (linear, RNNRegressor(seed=1)):
    ...     print(evaluate.progressive_val_score(datasets.TrumpApproval(), model,
    ...                                          metrics.MAE()))
    MAE: 1.314548
    MAE: 0.197649

    The ratings move slowly from day to day: the recurrent model's step sees the previous
    rating, which the linear model, given only ``x``, does not.
    """

    def __init__(self, cell: str = "gru", hidden: int = 64, layers: int = 1, k1: int = 4,
                 k2: int = 4, lr: float = 1e-3, residual: bool = True,
                 max_features: int = 16, seed: int | None = None) -> None:
        self.cell = cell
        self.hidden = hidden
        self.layers = layers
        self.k1 = k1
        self.k2 = k2
        self.lr = lr
        self.residual = residual
        self.max_features = max_features
        self.seed = seed
        self._build()
        self._last_y: float | None = None

    @classmethod
    def _unit_test_params(cls) -> Iterator[dict[str, Any]]:
        yield {"hidden": 8}
        yield {"cell": "lstm", "hidden": 8, "k1": 2, "k2": 4, "max_features": 4,
               "residual": False}

    def learn_one(self, x: dict[Hashable, Any], y: float) -> None:
        self._learn_names(x)
        self._engine.process_one(KEY, self._row(self._last_y, x), self._step)
        self._step += 1
        self._last_y = float(y)

    def predict_one(self, x: dict[Hashable, Any]) -> float:
        """Predict the target of ``x`` (the previous target, or 0.0, when nothing is known)."""
        row = self._row(self._last_y, x)
        if np.isnan(row).all():
            return 0.0 if self._last_y is None else self._last_y
        yhat = self._engine.peek(KEY, row[None], np.array([self._step]))[0, 0, 0]
        return 0.0 if np.isnan(yhat) else float(yhat)
