"""Forecasts after hypothetical events of one key, leaving the key's state as it was.

:meth:`Engine.peek <streamseq.engine.Engine.peek>` answers "what would the model forecast if
these events came next?": a recursive multi-step forecast (the model run forward on its own
predictions) or a prediction for inputs whose target is not known yet (a regressor's
``predict_one``). It runs the same compiled steps as the per-event path
(:func:`~streamseq.features.pipeline.featurize`,
:func:`~streamseq.engine.advance.step_forecast`, :func:`~streamseq.evaluation.scoring.record_forecast`)
on copies of the key's row: its hidden state, scaler statistics and last values, so a peek
changes nothing the engine holds.
"""

from __future__ import annotations

import math

import numba as nb
import numpy as np

from streamseq.engine.advance import step_forecast
from streamseq.evaluation.scoring import record_forecast
from streamseq.features.calendar import N_CALENDAR
from streamseq.features.pipeline import featurize
from streamseq.learner.windows import from_half, to_half

__all__ = ["peek_steps"]


@nb.njit(cache=True, nogil=True, error_model="numpy")
def peek_steps(raw: np.ndarray, ts: np.ndarray, position: int, newest_ts: int, roll: bool,
               first: np.ndarray, state: np.ndarray, feat: tuple, feat_opts: tuple,
               model: tuple, model_opts: tuple, out: np.ndarray) -> None:
    """Apply ``raw [steps, values]`` (times ``ts``) to one key's copied row; write the
    model's forecast after each step to ``out [steps, horizon, targets]`` (original units).

    ``feat`` holds one-row copies of the key's feature arrays and ``state`` a copy of its
    recurrent state (both changed in place); ``position`` and ``newest_ts`` are the key's
    event count and newest time. With ``roll``, a missing target of step ``s`` takes the
    one-step forecast made before it: ``first`` (the key's last forecast) for step 0, the
    forecast after step ``s - 1`` for the others.
    """
    codes, last_raw, count, mean, m2, frozen, _gap_ema = feat
    fixed, fixed_warmup, clip, target_clip, use_gap, use_calendar, _level = feat_opts
    hidden_size = model_opts[1]
    steps, v = raw.shape
    horizon, n_t = out.shape[1], out.shape[2]
    n_in = 2 * v + (1 if use_gap else 0) + (N_CALENDAR if use_calendar else 0)
    x = np.zeros(n_in, np.float32)
    x_half = np.zeros(n_in, np.uint16)
    z = np.zeros(v + 1)
    std = np.zeros(v + 1)
    filled = np.zeros(v)
    unknown = np.zeros(v, np.bool_)
    head = np.zeros(horizon * n_t, np.float32)
    y_scaled = np.zeros((horizon, n_t))
    row = np.zeros(v)
    kept = np.zeros((1, horizon, horizon, n_t))  # record_forecast's per-key stores, unused
    unit = np.zeros((1, horizon, n_t))
    persistence = np.zeros((1, horizon, n_t))
    scratch = np.zeros(16 * hidden_size + n_in, np.float32)
    newest = newest_ts
    for s in range(steps):
        row[:] = raw[s]
        if roll:
            for c in range(n_t):
                if math.isnan(row[c]):
                    row[c] = first[c] if s == 0 else out[s - 1, 0, c]
        n = position + s
        gap = max(ts[s] - newest, 0) if n > 0 else 0
        newest = max(newest, ts[s]) if n > 0 else ts[s]
        featurize(0, row, n, gap, ts[s], codes, last_raw, count, mean, m2, frozen, fixed,
                  fixed_warmup, clip, target_clip, use_gap, use_calendar, x, z, std, filled,
                  unknown)
        to_half(x, x_half)  # the inputs at the precision the per-event path uses
        from_half(x_half, x)
        step_forecast(x, state, z, model, model_opts, scratch, head, y_scaled)
        record_forecast(0, 0, y_scaled, mean[0, :n_t], std[:n_t], filled[:n_t],
                        unknown[:n_t], codes[:n_t], kept, unit, persistence, out[s])
