"""Torch pieces shared by the text models: seeded dropout, stacked recurrent layers, one
guarded optimizer step (from a loss, or from gradients already computed).

Dropout draws its masks from a :class:`torch.Generator` owned by the learner (and saved in
its checkpoint), never from the global RNG: a restored learner continues with exactly the
masks an uninterrupted one would have drawn, whatever else runs in the process.
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["CELLS", "RecurrentStack", "seeded_dropout", "guarded_step", "guarded_apply"]

CELLS = ("gru", "lstm")


def seeded_dropout(x: torch.Tensor, p: float, generator: torch.Generator | None,
                   training: bool) -> torch.Tensor:
    """Inverted dropout whose mask comes from ``generator``.

    Examples
    --------
    >>> g = torch.Generator().manual_seed(0)
    >>> y = seeded_dropout(torch.ones(1000), 0.5, g, training=True)
    >>> sorted(set(y.tolist())), 400 < int((y > 0).sum()) < 600
    ([0.0, 2.0], True)
    >>> seeded_dropout(torch.ones(3), 0.5, g, training=False).tolist()
    [1.0, 1.0, 1.0]
    """
    if not training or p <= 0.0:
        return x
    mask = torch.empty_like(x).bernoulli_(1.0 - p, generator=generator)
    return x * mask / (1.0 - p)


class RecurrentStack(nn.Module):
    """Stacked GRU/LSTM layers (optionally bidirectional) with seeded dropout between them.

    The recurrent state is one tensor ``[layers * directions, batch, state_size]``: ``h``
    for a GRU, ``h`` and ``c`` side by side for an LSTM (``state_size = 2 * hidden``).

    Examples
    --------
    >>> s = RecurrentStack("lstm", 4, 8, layers=2)
    >>> out, st = s(torch.randn(3, 5, 4), s.init_state(3))
    >>> tuple(out.shape), tuple(st.shape)
    ((3, 5, 8), (2, 3, 16))
    >>> b = RecurrentStack("gru", 4, 8, bidirectional=True)
    >>> tuple(b(torch.randn(3, 5, 4))[0].shape)
    (3, 5, 16)
    """

    def __init__(self, cell: str, input_size: int, hidden: int, layers: int = 1,
                 bidirectional: bool = False, dropout: float = 0.0) -> None:
        super().__init__()
        if cell not in CELLS:
            raise ValueError(f"cell must be one of {CELLS}, not {cell!r}")
        self.cell = cell
        self.hidden = hidden
        self.num_layers = layers
        self.directions = 2 if bidirectional else 1
        self.dropout = dropout
        rnn_cls = nn.LSTM if cell == "lstm" else nn.GRU
        self.layers = nn.ModuleList(
            rnn_cls(input_size if i == 0 else hidden * self.directions, hidden,
                    batch_first=True, bidirectional=bidirectional)
            for i in range(layers))

    @property
    def state_size(self) -> int:
        return self.hidden * (2 if self.cell == "lstm" else 1)

    @property
    def output_size(self) -> int:
        return self.hidden * self.directions

    def init_state(self, batch: int = 1) -> torch.Tensor:
        p = next(self.parameters())
        return torch.zeros(self.num_layers * self.directions, batch, self.state_size,
                           device=p.device, dtype=p.dtype)

    def _split(self, s: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        if self.cell != "lstm":
            return s.contiguous()
        h, c = s.split(self.hidden, dim=-1)
        return h.contiguous(), c.contiguous()

    @staticmethod
    def _join(s: torch.Tensor | tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        return torch.cat(s, dim=-1) if isinstance(s, tuple) else s

    def forward(self, x: torch.Tensor, state: torch.Tensor | None = None,
                lengths: torch.Tensor | None = None,
                generator: torch.Generator | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """Run ``x [batch, time, input]``; returns outputs ``[batch, time, output_size]``
        (zeros past each sequence's length) and the final state.

        ``lengths`` (CPU int64) marks left-aligned sequences shorter than ``time``.
        """
        if state is None:
            state = self.init_state(x.shape[0])
        d = self.directions
        finals = []
        out = x
        for i, rnn in enumerate(self.layers):
            if i > 0:
                out = seeded_dropout(out, self.dropout, generator, self.training)
            s = self._split(state[i * d:(i + 1) * d])
            if lengths is not None:
                packed = nn.utils.rnn.pack_padded_sequence(out, lengths, batch_first=True,
                                                           enforce_sorted=False)
                out_p, s_new = rnn(packed, s)
                out, _ = nn.utils.rnn.pad_packed_sequence(out_p, batch_first=True,
                                                          total_length=x.shape[1])
            else:
                out, s_new = rnn(out, s)
            finals.append(self._join(s_new))
        return out, torch.cat(finals, dim=0)


def guarded_step(params: list[nn.Parameter],
                 optimizers: torch.optim.Optimizer | list[torch.optim.Optimizer],
                 loss: torch.Tensor, clip: float) -> tuple[bool, float, float]:
    """zero_grad -> backward -> clip the gradient norm -> step, skipped if anything is not
    finite.

    Returns ``(applied, loss, grad_norm_before_clipping)``. NaN or inf never reaches the
    weights: a non-finite loss or gradient leaves them (and the optimizer state) untouched.
    Sparse gradients (``nn.Embedding(sparse=True)`` with ``SparseAdam``) are supported.

    Examples
    --------
    >>> w = nn.Parameter(torch.ones(2))
    >>> opt = torch.optim.SGD([w], lr=0.5)
    >>> guarded_step([w], opt, (w * 2).sum(), clip=10.0)[0], w.tolist()
    (True, [0.0, 0.0])
    >>> guarded_step([w], opt, (w * float("nan")).sum(), clip=10.0)[0], w.tolist()
    (False, [0.0, 0.0])
    """
    opts = optimizers if isinstance(optimizers, list) else [optimizers]
    for opt in opts:
        opt.zero_grad(set_to_none=True)
    loss_value = float(loss.detach())
    if math.isfinite(loss_value):
        loss.backward()
    return guarded_apply(params, opts, loss_value, clip)


def guarded_apply(params: list[nn.Parameter],
                  optimizers: torch.optim.Optimizer | list[torch.optim.Optimizer],
                  loss_value: float, clip: float) -> tuple[bool, float, float]:
    """The second half of :func:`guarded_step`, for gradients already in the parameters'
    ``.grad``: clip their norm and step, unless the loss or a gradient is not finite (then
    the gradients are dropped and nothing moves). Returns what :func:`guarded_step` does.
    """
    opts = optimizers if isinstance(optimizers, list) else [optimizers]
    if not math.isfinite(loss_value):
        for opt in opts:
            opt.zero_grad(set_to_none=True)
        return False, loss_value, float("nan")
    dense, sparse = [], []
    for p in params:
        g = p.grad
        if g is None:
            continue
        if g.is_sparse:
            sparse.append(g.coalesce())
            p.grad = sparse[-1]
        else:
            dense.append(g)
    # one norm per tensor in one call (get_total_norm's bookkeeping costs more here)
    sq = torch.stack(torch._foreach_norm(dense)).square().sum() if dense else torch.zeros(())
    for g in sparse:
        sq = sq + g.values().pow(2).sum()
    norm = float(sq.sqrt())
    if not math.isfinite(norm):
        for opt in opts:
            opt.zero_grad(set_to_none=True)
        return False, loss_value, norm
    if clip > 0 and norm > clip:
        coef = clip / (norm + 1e-6)
        if dense:
            torch._foreach_mul_(dense, coef)
        for g in sparse:
            g.mul_(coef)
    for opt in opts:
        opt.step()
    return True, loss_value, norm
