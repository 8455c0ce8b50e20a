"""The per-event path of one segment, compiled: every applied event, in stream order.

For each event: (1) features from its values and its key's statistics, (2) the forecasts
whose target it is are scored, and the drift detector sees the one-step error, (3) the
step is kept for TBPTT and the key's recurrent state advances, (4) the next ``horizon``
values are forecast and stored for scoring, (5) a due TBPTT window is captured.

Each part's work is a compiled function of its own module; this loop only calls them in
order. Every key's numbers depend on its own events only (per-key kernels), so the loop
runs events in stream order without grouping keys and gives the same bits whatever the
batch.
"""

from __future__ import annotations

import math

import numba as nb
import numpy as np

from streamseq.evaluation.drift import page_hinkley_update
from streamseq.evaluation.scoring import record_forecast, score_event
from streamseq.features.pipeline import featurize
from streamseq.learner.windows import capture, from_half, record_step, to_half
from streamseq.models.kernels import cell_step, forecast_head

__all__ = ["advance_segment", "step_forecast", "DRIFT_NONE", "DRIFT_RESET", "DRIFT_BOOST"]

DRIFT_NONE, DRIFT_RESET, DRIFT_BOOST = 0, 1, 2


@nb.njit(cache=True, nogil=True, error_model="numpy")
def step_forecast(x: np.ndarray, state: np.ndarray, z: np.ndarray, model: tuple,
                  model_opts: tuple, scratch: np.ndarray, head: np.ndarray,
                  y_scaled: np.ndarray) -> None:
    """Advance one key's ``state`` by input ``x`` and forecast: ``y_scaled [horizon,
    targets]`` is the residual base (the scaled current value ``z``) plus the head's
    change, in scaled units (the per-event path and :mod:`~streamseq.engine.peek`)."""
    theta, theta_t, offs, toffs, residual = model
    cell, hidden_size, head_off, head_t_off = model_opts
    cell_step(cell, hidden_size, x, state, theta, theta_t, offs, toffs, scratch)
    forecast_head(state[-1, :hidden_size], theta, theta_t, head_off, head_t_off, head)
    horizon, n_t = y_scaled.shape
    for j in range(horizon):
        for c in range(n_t):
            b = np.float32(z[c]) * residual[c]
            y_scaled[j, c] = np.float64(head[j * n_t + c] + b)


@nb.njit(cache=True, nogil=True, error_model="numpy")
def advance_segment(ev: tuple, raw: np.ndarray, hidden: np.ndarray, feat: tuple,
                    feat_opts: tuple, score: tuple, scoring_on: bool, drift: tuple,
                    drift_opts: tuple, model: tuple, model_opts: tuple, win: tuple,
                    win_opts: tuple, pend: tuple, out: tuple, totals: np.ndarray,
                    version: int) -> None:
    """Apply the segment's events in order: ``ev`` is the poll positions of the applied
    events and the planner's per-poll arrays (slots, positions in the key's stream, time
    gaps, times, sequence numbers, due flags).

    ``totals`` accumulates ``[z_abs_model, z_abs_persistence, z_scored, drift events,
    boost requests]`` (the first two are running sums carried across calls); output rows in ``out`` are indexed by poll position.
    """
    positions, slots, key_pos, gaps, times, _seqs, dues = ev
    codes, last_raw, count, mean, m2, frozen, gap_ema = feat
    fixed, fixed_warmup, clip, target_clip, use_gap, use_calendar, level_targets = feat_opts
    forecast, unit, persistence, m_abs, m_sq, p_abs, p_sq, cnt = score
    drift_n, drift_stats = drift
    drift_on, drift_action, min_inst, delta, threshold, alpha = drift_opts
    hidden_size = model_opts[1]
    ring_x, ring_y, ring_mask, start_state, start_at = win
    learn, k1, k2 = win_opts
    px, py, pw, ph0, plen, pbase, pcount = pend
    yhat, yhat_z, err_model, err_persistence, scale, target_ts, version_out, z_mean, \
        z_std = out
    v = raw.shape[1]
    n_t = yhat.shape[2]
    horizon = yhat.shape[1]
    n_in = ring_x.shape[2]
    x = np.zeros(n_in, np.float32)
    x_half = np.zeros(n_in, np.uint16)
    z = np.zeros(v + 1)
    std = np.zeros(v + 1)
    filled = np.zeros(v)
    unknown = np.zeros(v, np.bool_)
    target = np.zeros(n_t, np.float32)
    mask = np.zeros(n_t, np.bool_)
    head = np.zeros(horizon * n_t, np.float32)
    y_scaled = np.zeros((horizon, n_t))
    one_step = np.zeros(2)
    scratch = np.zeros(16 * hidden_size + n_in, np.float32)
    for e in range(positions.shape[0]):
        row = positions[e]
        slot = slots[row]
        n = key_pos[row]
        # (1) features
        featurize(slot, raw[row], n, gaps[row], times[row], codes, last_raw, count, mean, m2,
                  frozen, fixed, fixed_warmup, clip, target_clip, use_gap, use_calendar, x,
                  z, std, filled, unknown)
        # (2) score the forecasts whose target this is; drift on the one-step error
        if scoring_on:
            scored = score_event(slot, n, raw[row, :n_t], forecast, unit, persistence, m_abs,
                                 m_sq, p_abs, p_sq, cnt, err_model[row], err_persistence[row],
                                 scale[row], one_step)
            totals[0] += one_step[0]
            totals[1] += one_step[1]
            totals[2] += scored
            if drift_on and scored > 0 and page_hinkley_update(
                    slot, one_step[0] / scored, drift_n, drift_stats, min_inst, delta,
                    threshold, alpha):
                totals[3] += 1
                if drift_action == DRIFT_RESET:
                    hidden[slot] = 0.0
                elif drift_action == DRIFT_BOOST:
                    totals[4] += 1
        # (3) inputs at float16 precision (what the window ring keeps), the step kept
        # for TBPTT, the key's state advanced
        to_half(x, x_half)
        from_half(x_half, x)
        for c in range(n_t):
            # training targets: levels as wide as the base; returns and sizes at clip
            target[c] = z[c] if level_targets[c] else min(max(z[c], -clip), clip)
            mask[c] = not (math.isnan(raw[row, c]) or unknown[c])
        state = hidden[slot]
        record_step(slot, n, x, target, mask, state, k1, k2, ring_x, ring_y, ring_mask,
                    start_state, start_at)
        # (4) forecast: residual base (the scaled value) plus the head's change
        step_forecast(x, state, z, model, model_opts, scratch, head, y_scaled)
        yhat_z[row] = y_scaled
        for c in range(n_t):
            z_mean[row, c] = mean[slot, c]
            z_std[row, c] = std[c]
        record_forecast(slot, n, y_scaled, mean[slot, :n_t], std[:n_t], filled[:n_t],
                        unknown[:n_t], codes[:n_t], forecast, unit, persistence, yhat[row])
        version_out[row] = version
        g = gaps[row]
        ema = 0.9 * gap_ema[slot] + 0.1 * g if n >= 2 else (np.float64(g) if n == 1 else 0.0)
        gap_ema[slot] = ema
        for j in range(horizon):
            target_ts[row, j] = times[row] + np.int64(np.rint(ema * (j + 1)))
        # (5) capture the TBPTT window that fell due
        if learn and dues[row]:
            capture(slot, n + 1 - horizon, k1, k2, horizon, ring_x, ring_y, ring_mask,
                    start_state, start_at, px, py, pw, ph0, plen, pbase, pcount)
