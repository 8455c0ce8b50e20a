"""Truncated BPTT over windows that fell due, batched across keys.

A window is captured (copied out of the key's ring buffers) when it falls due and learned
at the shard's next update point, where all captured windows run as one batch from their
stored start states. Between update points the weights do not change, so capturing early
and learning late gives the same result as learning at once (see DESIGN.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from streamseq.config import LearnerConfig
from streamseq.models import RecurrentForecaster

__all__ = ["OnlineLearner", "UpdateResult", "Windows"]


_FIELDS = ("x", "y", "w", "h0", "lengths", "base", "order")


@dataclass
class Windows:
    """Captured TBPTT windows, left-aligned: inputs ``x [n, k2, F]``, targets
    ``y [n, k2, H, T]``, loss weights ``w`` (same shape; 0 = not learned), start states
    ``h0 [n, layers, state]`` and valid ``lengths [n]``."""

    x: list[np.ndarray] = field(default_factory=list)
    y: list[np.ndarray] = field(default_factory=list)
    w: list[np.ndarray] = field(default_factory=list)
    h0: list[np.ndarray] = field(default_factory=list)
    lengths: list[np.ndarray] = field(default_factory=list)
    base: list[np.ndarray] = field(default_factory=list)
    order: list[np.ndarray] = field(default_factory=list)

    def __len__(self) -> int:
        return int(sum(len(a) for a in self.lengths))

    def append(self, x: np.ndarray, y: np.ndarray, w: np.ndarray, h0: np.ndarray,
               lengths: np.ndarray, base: np.ndarray, order: np.ndarray) -> None:
        """Add windows; ``order`` is the stream sequence number of the event that made each
        window fall due (the batch is sorted by it, so it never depends on polls)."""
        for name, a in zip(_FIELDS, (x, y, w, h0, lengths, base, order), strict=True):
            getattr(self, name).append(a)

    def take(self) -> tuple[np.ndarray, ...]:
        arrays = [np.concatenate(getattr(self, n)) for n in _FIELDS]
        for n in _FIELDS:
            setattr(self, n, [])
        idx = np.argsort(arrays[-1], kind="stable")
        return tuple(a[idx] for a in arrays[:-1])

    def state_dict(self) -> dict[str, Any]:
        if not len(self):
            return {"n": 0}
        arrays = [np.concatenate(getattr(self, n)) for n in _FIELDS]
        return {"n": len(self), **{n: torch.from_numpy(a.copy()) for n, a in
                                   zip(_FIELDS, arrays, strict=True)}}

    def load_state_dict(self, d: dict[str, Any]) -> None:
        for n in _FIELDS:
            setattr(self, n, [])
        if d["n"]:
            self.append(*(d[n].numpy().copy() for n in _FIELDS))


@dataclass(frozen=True)
class UpdateResult:
    """Outcome of one update point."""

    applied: bool
    windows: int
    loss: float
    grad_norm: float


class OnlineLearner:
    """Optimizer, pending windows and the update step of one shard.

    Parameters
    ----------
    model
        The shard's forecaster (its weights are shared by all keys of the shard).
    config
        Learning settings (optimizer, lr, clipping, seed).
    """

    def __init__(self, model: RecurrentForecaster, config: LearnerConfig) -> None:
        self.model = model
        self.config = config
        params = list(model.parameters())
        if config.optimizer == "sgd":
            self.optimizer: torch.optim.Optimizer = torch.optim.SGD(
                params, lr=config.lr, weight_decay=config.weight_decay)
        elif config.optimizer == "adamw":
            self.optimizer = torch.optim.AdamW(params, lr=config.lr,
                                               weight_decay=config.weight_decay)
        else:
            self.optimizer = torch.optim.Adam(params, lr=config.lr,
                                              weight_decay=config.weight_decay)
        self.pending = Windows()
        self.steps = 0  # update points reached (applied or skipped)
        self.applied = 0
        self.skipped = 0
        self.lr_scale = 1.0
        self.boost_left = 0

    def boost(self, factor: float, updates: int) -> None:
        """Raise the learning rate by ``factor`` for the next ``updates`` steps."""
        self.lr_scale = factor
        self.boost_left = updates

    def update(self) -> UpdateResult:
        """Learn from all pending windows in one optimizer step (a no-op without windows)."""
        n = len(self.pending)
        if n == 0:
            return UpdateResult(False, 0, math.nan, math.nan)
        x, y, w, h0, lengths, base = self.pending.take()
        self.steps += 1
        model = self.model
        for group in self.optimizer.param_groups:
            group["lr"] = self.config.lr * (self.lr_scale if self.boost_left > 0 else 1.0)
        if self.boost_left > 0:
            self.boost_left -= 1
        xt = torch.from_numpy(x)
        yt = torch.from_numpy(y)
        wt = torch.from_numpy(w)
        state = torch.from_numpy(h0).permute(1, 0, 2).contiguous()
        lens = torch.from_numpy(lengths)
        packed = lens if bool((lens < xt.shape[1]).any()) else None
        model.train()
        with torch.random.fork_rng(devices=[], enabled=model.config.dropout > 0):
            if model.config.dropout > 0:
                torch.manual_seed(self.config.seed * 1_000_003 + self.steps)
            self.optimizer.zero_grad(set_to_none=True)
            pred, _ = model(xt, state, packed, base=torch.from_numpy(base))
        model.eval()
        sq = (pred - yt).pow(2) * wt
        per_window = sq.flatten(1).sum(1) / wt.flatten(1).sum(1).clamp_min(1e-12)
        has = wt.flatten(1).sum(1) > 0
        loss = per_window[has].mean() if bool(has.any()) else per_window.sum() * 0.0
        loss_value = float(loss.detach())
        if not math.isfinite(loss_value):
            self.skipped += 1
            self.optimizer.zero_grad(set_to_none=True)
            return UpdateResult(False, n, loss_value, math.nan)
        loss.backward()
        grad_norm = float(nn.utils.clip_grad_norm_(model.parameters(), self.config.clip_grad))
        if not math.isfinite(grad_norm):
            self.skipped += 1
            self.optimizer.zero_grad(set_to_none=True)
            return UpdateResult(False, n, loss_value, grad_norm)
        self.optimizer.step()
        self.applied += 1
        return UpdateResult(True, n, loss_value, grad_norm)

    def state_dict(self) -> dict[str, Any]:
        return {
            "optimizer": self.optimizer.state_dict(),
            "pending": self.pending.state_dict(),
            "steps": self.steps,
            "applied": self.applied,
            "skipped": self.skipped,
            "lr_scale": self.lr_scale,
            "boost_left": self.boost_left,
        }

    def load_state_dict(self, d: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(d["optimizer"])
        self.pending.load_state_dict(d["pending"])
        self.steps = int(d["steps"])
        self.applied = int(d["applied"])
        self.skipped = int(d["skipped"])
        self.lr_scale = float(d["lr_scale"])
        self.boost_left = int(d["boost_left"])
