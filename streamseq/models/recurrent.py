"""A stacked GRU/LSTM that forecasts the next ``horizon`` values of its target columns."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from streamseq.config import ModelConfig

__all__ = ["RecurrentForecaster"]


class RecurrentForecaster(nn.Module):
    """GRU or LSTM, stacked, with dropout and a linear multi-horizon head.

    The first ``n_targets`` input features must be the scaled current values of the target
    columns. With ``residual`` the head predicts the change from them for the targets marked
    in ``residual_mask``; the head starts at zero, so an untrained model is persistence.

    The recurrent state is one tensor ``[layers, batch, state_size]``: ``h`` for a GRU,
    ``h`` and ``c`` side by side for an LSTM (``state_size = 2 * hidden``).

    Examples
    --------
    >>> m = RecurrentForecaster(5, 2, ModelConfig(cell="lstm", hidden=8, horizon=3))
    >>> x = torch.randn(4, 6, 5)
    >>> y, s = m(x, m.init_state(4))
    >>> tuple(y.shape), tuple(s.shape)
    ((4, 6, 3, 2), (1, 4, 16))
    >>> torch.allclose(y[:, :, 0], x[:, :, :2])  # untrained residual head = persistence
    True
    >>> y1, s1 = m.step(x[:, 0], m.init_state(4))  # the per-event path agrees with forward
    >>> torch.allclose(y1, y[:, 0], atol=1e-6), torch.allclose(s1, m(x[:, :1], m.init_state(4))[1], atol=1e-6)
    (True, True)
    """

    def __init__(self, n_inputs: int, n_targets: int, config: ModelConfig,
                 residual_mask: Sequence[bool] | None = None) -> None:
        super().__init__()
        self.config = config
        self.n_inputs = n_inputs
        self.n_targets = n_targets
        rnn_cls = nn.GRU if config.cell == "gru" else nn.LSTM
        self.rnn = rnn_cls(n_inputs, config.hidden, num_layers=config.layers, batch_first=True,
                           dropout=config.dropout if config.layers > 1 else 0.0)
        self.drop = nn.Dropout(config.dropout)
        self.head = nn.Linear(config.hidden, config.horizon * n_targets)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        mask = [True] * n_targets if residual_mask is None else list(residual_mask)
        if not config.residual:
            mask = [False] * n_targets
        self.residual_mask: torch.Tensor
        self.register_buffer("residual_mask", torch.tensor(mask, dtype=torch.float32))

    @property
    def is_lstm(self) -> bool:
        return self.config.cell == "lstm"

    @property
    def state_size(self) -> int:
        return self.config.hidden * (2 if self.is_lstm else 1)

    def init_state(self, batch: int) -> torch.Tensor:
        p = next(self.parameters())
        return torch.zeros(self.config.layers, batch, self.state_size, device=p.device,
                           dtype=p.dtype)

    def _split(self, state: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        if not self.is_lstm:
            return state.contiguous()
        h, c = state.split(self.config.hidden, dim=-1)
        return h.contiguous(), c.contiguous()

    def _join(self, state: torch.Tensor | tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        return torch.cat(state, dim=-1) if isinstance(state, tuple) else state

    def step(self, x: torch.Tensor, state: torch.Tensor,
             base: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """One time step for a batch of keys, ``x [batch, inputs]`` -> forecasts
        ``[batch, horizon, targets]`` and the new state. Inference only (no dropout): the
        per-event path, with the cell kernels called directly (no module overhead).
        """
        rnn, hidden = self.rnn, self.config.hidden
        inp = x
        layers = []
        for layer in range(self.config.layers):
            w_ih = getattr(rnn, f"weight_ih_l{layer}")
            w_hh = getattr(rnn, f"weight_hh_l{layer}")
            b_ih = getattr(rnn, f"bias_ih_l{layer}")
            b_hh = getattr(rnn, f"bias_hh_l{layer}")
            if self.is_lstm:
                h, c = torch.lstm_cell(inp, (state[layer, :, :hidden], state[layer, :, hidden:]),
                                       w_ih, w_hh, b_ih, b_hh)
                layers.append(torch.cat([h, c], dim=-1))
            else:
                h = torch.gru_cell(inp, state[layer], w_ih, w_hh, b_ih, b_hh)
                layers.append(h)
            inp = h
        delta = self.head(inp).view(x.shape[0], self.config.horizon, self.n_targets)
        level = x[:, : self.n_targets] if base is None else base
        return (level * self.residual_mask).unsqueeze(1) + delta, torch.stack(layers)

    def forward(self, x: torch.Tensor, state: torch.Tensor,
                lengths: torch.Tensor | None = None,
                base: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Run ``x [batch, time, inputs]`` from ``state``; returns the forecasts
        ``[batch, time, horizon, targets]`` after every step and the final state.

        ``lengths`` (CPU int64) marks left-aligned sequences shorter than ``time``: their
        padded steps do not touch the state and their outputs are meaningless. ``base``
        ``[batch, time, targets]`` is the value the residual head starts from (default: the
        first ``targets`` inputs; the engine passes the unclipped scaled values).
        """
        if lengths is not None:
            packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
            out_p, new_state = self.rnn(packed, self._split(state))
            out, _ = pad_packed_sequence(out_p, batch_first=True, total_length=x.shape[1])
        else:
            out, new_state = self.rnn(x, self._split(state))
        b, t, _ = out.shape
        delta = self.head(self.drop(out)).view(b, t, self.config.horizon, self.n_targets)
        level = x[..., : self.n_targets] if base is None else base
        return (level * self.residual_mask).unsqueeze(2) + delta, self._join(new_state)
