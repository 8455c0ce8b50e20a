"""Truncated BPTT over the windows that fell due, batched across keys.

Windows are captured when they fall due (:mod:`streamseq.learner.windows`) and learned at
the shard's next update point, all of them in one optimizer step from their stored start
states. Between update points the weights do not change, so capturing early and learning
late gives the same result as learning at once (see DESIGN.md).

One update: the compiled forward + backward of every window (in stream order,
:func:`~streamseq.models.kernels.window_gradients`), a NaN/inf guard, gradient-norm
clipping and one Adam/AdamW/SGD step on the flat weight vector. The result is a function
of the windows and the weights only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from streamseq.config import LearnerConfig
from streamseq.learner.windows import PendingWindows
from streamseq.models.flat import FlatWeights
from streamseq.models.kernels import adam_step, clip_gradients, sgd_step, window_gradients

__all__ = ["OnlineLearner", "UpdateResult"]

_BETAS, _EPS = (0.9, 0.999), 1e-8


@dataclass(frozen=True)
class UpdateResult:
    """Outcome of one update point."""

    applied: bool
    windows: int
    loss: float
    grad_norm: float


class OnlineLearner:
    """Optimizer state, pending windows and the update step of one shard.

    Parameters
    ----------
    weights
        The shard's weights (shared by all its keys).
    config
        Learning settings (optimizer, lr, clipping, seed).
    pending
        Where due windows are captured until the next update point.
    dropout
        The model's dropout probability (masks drawn per update from the seed and the
        update's number, so they are a function of the stream).

    Examples
    --------
    >>> from streamseq.config import ModelConfig
    >>> from streamseq.models import RecurrentForecaster
    >>> m = RecurrentForecaster(3, 1, ModelConfig(hidden=4))
    >>> learner = OnlineLearner(FlatWeights(m), LearnerConfig(k1=2, k2=2),
    ...                         PendingWindows(2, 2, 3, 1, 1, 1, 4))
    >>> learner.update()  # nothing captured: a no-op
    UpdateResult(applied=False, windows=0, loss=nan, grad_norm=nan)
    """

    def __init__(self, weights: FlatWeights, config: LearnerConfig, pending: PendingWindows,
                 dropout: float = 0.0) -> None:
        self.weights = weights
        self.config = config
        self.pending = pending
        self.dropout = dropout
        size = weights.layout.size
        self.grad = np.zeros(size, np.float32)
        self.exp_avg = np.zeros(size, np.float32)
        self.exp_avg_sq = np.zeros(size, np.float32)
        self.steps = 0  # update points reached (applied or skipped)
        self.applied = 0
        self.skipped = 0
        self.lr_scale = 1.0
        self.boost_left = 0

    def boost(self, factor: float, updates: int) -> None:
        """Raise the learning rate by ``factor`` for the next ``updates`` steps."""
        self.lr_scale = factor
        self.boost_left = updates

    def _dropout_masks(self, x: np.ndarray, layers: int, hidden: int
                       ) -> tuple[np.ndarray, np.ndarray]:
        if self.dropout <= 0:
            return np.zeros((0, 0, 0, 0), np.float32), np.zeros((0, 0, 0), np.float32)
        n, steps = x.shape[:2]
        rng = np.random.default_rng((self.config.seed, self.steps))
        keep = 1.0 - self.dropout
        between = (rng.random((n, steps, layers, hidden)) < keep) / keep
        head = (rng.random((n, steps, hidden)) < keep) / keep
        return between.astype(np.float32), head.astype(np.float32)

    def update(self) -> UpdateResult:
        """Learn from all pending windows in one optimizer step (a no-op without windows)."""
        n = len(self.pending)
        if n == 0:
            return UpdateResult(False, 0, math.nan, math.nan)
        x, y, w, h0, lengths, base = self.pending.view()
        self.steps += 1
        lr = self.config.lr * (self.lr_scale if self.boost_left > 0 else 1.0)
        if self.boost_left > 0:
            self.boost_left -= 1
        wts = self.weights
        lay = wts.layout
        drop_layers, drop_head = self._dropout_masks(x, lay.layers, lay.hidden)
        grad = self.grad
        grad[:] = 0.0
        loss = window_gradients(lay.cell, lay.hidden, x, y, w, h0, lengths, base, wts.residual,
                                wts.theta, wts.theta_t, lay.offsets, lay.t_offsets,
                                lay.head_offsets[0], lay.head_t_offset, drop_layers,
                                drop_head, grad)
        self.pending.clear()
        if not math.isfinite(loss):
            self.skipped += 1
            return UpdateResult(False, n, loss, math.nan)
        grad_norm = clip_gradients(grad, self.config.clip_grad)
        if not math.isfinite(grad_norm):
            self.skipped += 1
            return UpdateResult(False, n, loss, grad_norm)
        cfg = self.config
        if cfg.optimizer == "sgd":
            sgd_step(wts.theta, grad, lr, cfg.weight_decay)
        else:
            adam_step(wts.theta, grad, self.exp_avg, self.exp_avg_sq, self.applied + 1, lr,
                      _BETAS[0], _BETAS[1], _EPS, cfg.weight_decay, cfg.optimizer == "adamw")
        wts.refresh()
        self.applied += 1
        return UpdateResult(True, n, loss, grad_norm)

    def state_dict(self) -> dict[str, Any]:
        return {
            "exp_avg": torch.from_numpy(self.exp_avg.copy()),
            "exp_avg_sq": torch.from_numpy(self.exp_avg_sq.copy()),
            "pending": self.pending.state_dict(),
            "steps": self.steps,
            "applied": self.applied,
            "skipped": self.skipped,
            "lr_scale": self.lr_scale,
            "boost_left": self.boost_left,
        }

    def load_state_dict(self, d: dict[str, Any]) -> None:
        self.exp_avg[:] = d["exp_avg"].numpy()
        self.exp_avg_sq[:] = d["exp_avg_sq"].numpy()
        self.pending.load_state_dict(d["pending"])
        self.steps = int(d["steps"])
        self.applied = int(d["applied"])
        self.skipped = int(d["skipped"])
        self.lr_scale = float(d["lr_scale"])
        self.boost_left = int(d["boost_left"])
