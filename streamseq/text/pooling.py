"""The classifier's experts combined by a log-linear pool learned online.

``p(c) ~ exp(sum_e w_e * scale * log p_e(c) + b_c)``: a weighted geometric mean of the
experts' class probabilities, the weights (one per expert, plus a bias per class) learned by
AdaGrad on the log-loss of each label as it arrives, after that label has been scored. An
expert that is overconfident (Naive Bayes over many overlapping features) gets a small
weight; one that is often right a large one. Weights start equal.

Examples
--------
>>> import numpy as np
>>> pool = LogLinearPool(2, max_classes=2, lr=0.5)
>>> good, bad = np.log([[0.9, 0.1]]), np.log([[0.2, 0.8]])
>>> for _ in range(200):
...     pool.learn(np.concatenate([good, bad]), 0)
>>> bool(pool.weights[0] > pool.weights[1])
True
>>> p = pool.proba(np.concatenate([good, bad]))
>>> round(float(p.sum()), 6), bool(p[0] > 0.5)
(1.0, True)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

__all__ = ["LogLinearPool"]

#: Experts' log-probabilities are clipped to this floor before pooling.
LOG_FLOOR = -50.0


class LogLinearPool:
    """Online log-linear pool of ``n_experts`` class distributions.

    Parameters
    ----------
    n_experts
        Number of experts.
    max_classes
        Size of the bias vector.
    lr
        AdaGrad learning rate.
    scale
        Fixed factor on the experts' log-probabilities.
    initial
        Initial weights (default: ``1 / n_experts`` each, before ``scale``).
    """

    def __init__(self, n_experts: int, max_classes: int, lr: float = 0.01,
                 scale: float = 0.1, initial: Sequence[float] | None = None) -> None:
        self.lr = float(lr)
        self.scale = float(scale)
        init = np.full(n_experts, 1.0 / n_experts) if initial is None else np.array(initial)
        if init.shape != (n_experts,):
            raise ValueError("one initial weight per expert")
        self.weights = init.astype(np.float64) / scale
        self.bias = np.zeros(max_classes)
        self._g2w = np.full(n_experts, 1e-8)
        self._g2b = np.full(max_classes, 1e-8)

    def _inputs(self, logp: np.ndarray) -> np.ndarray:
        return np.maximum(logp, LOG_FLOOR) * self.scale

    def proba(self, logp: np.ndarray) -> np.ndarray:
        """Pooled probabilities ``[classes]`` of ``logp [experts, classes]``."""
        n = logp.shape[1]
        z = self.weights @ self._inputs(logp) + self.bias[:n]
        z = np.exp(z - z.max())
        return z / z.sum()

    def learn(self, logp: np.ndarray, y: int) -> None:
        """One AdaGrad step on ``-log p(y)``."""
        x = self._inputs(logp)
        n = x.shape[1]
        g = self.proba(logp)
        g[y] -= 1.0
        gw = x @ g
        self._g2w += gw * gw
        self.weights -= self.lr * gw / np.sqrt(self._g2w)
        self._g2b[:n] += g * g
        self.bias[:n] -= self.lr * g / np.sqrt(self._g2b[:n])

    def state_dict(self) -> dict[str, Any]:
        return {name: torch.from_numpy(getattr(self, name).copy())
                for name in ("weights", "bias", "_g2w", "_g2b")}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name in ("weights", "bias", "_g2w", "_g2b"):
            mine = getattr(self, name)
            value = state[name].numpy().astype(np.float64)
            if value.shape != mine.shape:
                raise ValueError(f"pool {name} has shape {tuple(value.shape)} in the "
                                 f"checkpoint, {mine.shape} here")
            setattr(self, name, value.copy())
