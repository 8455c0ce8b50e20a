"""What both River adapters share: one key of a streamseq :class:`~streamseq.engine.Engine`
behind River's one-event-at-a-time verbs.

An adapter holds an engine configured from its constructor arguments (River style: the
hyperparameters are the arguments, stored under the same names) with one value column for
the target and ``max_features`` columns for the features of ``x``. A feature name takes the
next free column the first time :meth:`EngineAdapter._learn_names` sees it (names new in
the same call in sorted order, so a dict's order changes nothing); names past
``max_features`` are ignored. A feature absent from ``x`` is missing: the engine carries its
last value forward and sets its missing flag (a column never seen is 0 with the flag set).

Pickling (River's checks, ``copy.deepcopy``) goes through the engine's ``state_dict``: the
pickle holds the constructor arguments, the adapter's own fields and plain arrays, never the
live engine with its compiled kernels and torch module.
"""

from __future__ import annotations

import math
import numbers
import random
from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np
import torch

from streamseq.config import (
    DriftConfig,
    EngineConfig,
    FeatureConfig,
    ForecastConfig,
    LearnerConfig,
    ModelConfig,
)
from streamseq.engine import Engine

__all__ = ["EngineAdapter", "KEY", "TARGET"]

KEY = "river"  # the engine key of the one stream an adapter models
TARGET = "y"


def _to_arrays(tree: Any) -> Any:
    """Tensors of an engine ``state_dict`` as numpy arrays of their own."""
    if isinstance(tree, torch.Tensor):
        return tree.detach().numpy().copy()
    if isinstance(tree, dict):
        return {k: _to_arrays(v) for k, v in tree.items()}
    if isinstance(tree, list | tuple):
        return type(tree)(_to_arrays(v) for v in tree)
    return tree


def _to_tensors(tree: Any) -> Any:
    if isinstance(tree, np.ndarray):
        return torch.from_numpy(tree.copy())
    if isinstance(tree, dict):
        return {k: _to_tensors(v) for k, v in tree.items()}
    if isinstance(tree, list | tuple):
        return type(tree)(_to_tensors(v) for v in tree)
    return tree


def _is_number(value: Any) -> bool:
    kind = type(value)  # float and int first: the ABC check is slow
    return kind is float or kind is int or isinstance(value, numbers.Real)


class EngineAdapter:
    """The engine, the feature columns and the event clock of one River estimator.

    Subclasses define ``__init__`` with the hyperparameters (``cell``, ``hidden``,
    ``layers``, ``k1``, ``k2``, ``lr``, ``residual``, ``max_features``, ``seed``) and call
    :meth:`_build`.
    """

    cell: str
    hidden: int
    layers: int
    k1: int
    k2: int
    lr: float
    residual: bool
    max_features: int
    seed: int | None

    def _build(self) -> None:
        seed = self.seed if self.seed is not None else random.SystemRandom().getrandbits(31)
        values = (TARGET,) + tuple(f"x{i}" for i in range(self.max_features))
        self._engine = Engine(EngineConfig(
            values=values, targets=(TARGET,),
            model=ModelConfig(cell=self.cell, hidden=self.hidden, layers=self.layers,
                              residual=self.residual),
            features=FeatureConfig(dt=False, calendar=False),
            learner=LearnerConfig(k1=self.k1, k2=self.k2, lr=self.lr, seed=seed),
            drift=DriftConfig(detector="none"),
            forecast=ForecastConfig(experts=())))
        self._columns: dict[Hashable, int] = {}  # feature name -> value column (1-based)
        self._step = 0  # event clock: one tick per learn_one (ms of the engine's time)

    @property
    def engine(self) -> Engine:
        """The wrapped engine (one key)."""
        return self._engine

    def _learn_names(self, x: Mapping[Hashable, Any] | None) -> None:
        """Give the names of ``x`` not seen before their columns, while columns are free
        (names with a number: a date or a category takes no column)."""
        if not x or len(self._columns) >= self.max_features:
            return
        new = [k for k, v in x.items() if k not in self._columns and _is_number(v)]
        for name in sorted(new, key=str)[:self.max_features - len(self._columns)]:
            self._columns[name] = len(self._columns) + 1

    def _row(self, y: float | None, x: Mapping[Hashable, Any] | None,
             out: np.ndarray | None = None) -> np.ndarray:
        """Engine values of one event: the target, then the feature columns (NaN: missing;
        values that are not finite numbers count as missing)."""
        row = np.full(1 + self.max_features, np.nan) if out is None else out
        if y is not None:
            row[0] = y
        if x:
            columns = self._columns
            for name, value in x.items():
                col = columns.get(name)
                if col is None:
                    continue
                if _is_number(value):
                    v = float(value)
                    if math.isfinite(v):
                        row[col] = v
        return row

    # -- pickling: arguments, own fields and the engine's state as plain arrays ----------
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        engine: Engine = state.pop("_engine")
        state["_engine_state"] = _to_arrays(engine.state_dict())
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        state = dict(state)
        saved = _to_tensors(state.pop("_engine_state"))
        self.__dict__.update(state)
        self._engine = Engine(EngineConfig.from_dict(saved["config"]))
        self._engine.load_state_dict(saved)
