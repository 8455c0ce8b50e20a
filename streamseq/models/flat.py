"""The model's weights as one flat float32 vector, shared with the torch module.

The compiled kernels (:mod:`streamseq.models.kernels`) read and the optimizer updates one
contiguous vector; the torch module's parameters are views into it, so
``model.state_dict()``, ``model.parameters()`` and a torch forward always see the current
weights.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch

from streamseq.models.kernels import ParamLayout
from streamseq.models.recurrent import RecurrentForecaster

__all__ = ["FlatWeights"]


class FlatWeights:
    """``theta`` (torch layout, aliased by ``model``'s parameters) and ``theta_t`` (every
    matrix transposed, for the forward kernels; call :meth:`refresh` after changing
    ``theta``).

    Examples
    --------
    >>> from streamseq.config import ModelConfig
    >>> m = RecurrentForecaster(3, 1, ModelConfig(hidden=4))
    >>> w = FlatWeights(m)
    >>> w.theta[:] = 0.5; w.refresh()
    >>> float(m.rnn.weight_hh_l0[0, 0].detach()), w.layout.size == sum(p.numel() for p in m.parameters())
    (0.5, True)
    """

    def __init__(self, model: RecurrentForecaster) -> None:
        cfg = model.config
        self.model = model
        self.layout = ParamLayout.build(cfg.cell, cfg.layers, cfg.hidden, model.n_inputs,
                                        cfg.horizon * model.n_targets)
        self.theta = torch.cat([p.detach().flatten() for p in model.parameters()]).numpy()
        self._alias()
        self.theta_t = np.zeros(self.layout.t_size, dtype=np.float32)
        self.residual = model.residual_mask.numpy().astype(np.float32)
        self.refresh()

    def _alias(self) -> None:
        """Make the module's parameters views into ``theta``."""
        at = 0
        for p in self.model.parameters():
            n = p.numel()
            p.data = torch.from_numpy(self.theta[at:at + n]).view(p.shape)
            at += n

    def __deepcopy__(self, memo: dict[int, Any]) -> FlatWeights:
        new = type(self).__new__(type(self))
        memo[id(self)] = new
        for name, value in self.__dict__.items():
            setattr(new, name, copy.deepcopy(value, memo))
        new._alias()  # the copied module's parameters view the copied vector
        return new

    def refresh(self) -> None:
        """Rebuild the transposed copy from ``theta``."""
        self.layout.transpose(self.theta, self.theta_t)

    def load(self, state: dict[str, torch.Tensor]) -> None:
        """Copy a module ``state_dict`` into the flat vector (in place)."""
        with torch.no_grad():
            for name, p in self.model.named_parameters():
                p.copy_(state[name])
        self.refresh()

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The module's state as tensors of their own (not views of the vector)."""
        return {k: v.detach().clone() for k, v in self.model.state_dict().items()}
