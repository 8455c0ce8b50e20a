"""streamseq from River: stateful recurrent estimators that pass River's estimator checks.

:class:`RNNForecaster` (a :class:`river.time_series.base.Forecaster`) and
:class:`RNNRegressor` (a :class:`river.base.Regressor`) each wrap one key of the streamseq
engine: the same features, compiled GRU/LSTM kernels and truncated-BPTT learner as the
Kafka service, one event per ``learn_one``.
"""

from __future__ import annotations

from streamseq.river.forecaster import RNNForecaster
from streamseq.river.regressor import RNNRegressor

__all__ = ["RNNForecaster", "RNNRegressor"]
