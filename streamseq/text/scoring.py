"""Compiled scoring of a message under the language model: the prediction half of
predict-then-learn, one token after another.

:class:`~streamseq.text.lm.TokenLanguageModel` is the reference (its ``features`` then
``known_logits`` and the log-loss); :class:`CompiledScorer` computes the same function with
the numba layer kernel of the numeric engine (:func:`streamseq.models.kernels.layer_forward`)
on a flat copy of the weights, refreshed after each optimizer step. Scoring a message is a
chain of single steps, so a call costs its tokens only (torch's CPU LSTM costs ~65 µs a call
before its first step, three times a typical 28-character line), and the state at any
position (where a TBPTT window will start) is there for free, without cutting the run.
Each step can be recorded (:func:`advance`) for the learner (:mod:`streamseq.text.bptt`),
which otherwise runs a window's steps again with :func:`record_tokens`.

A stream's numbers depend only on its own tokens and the weights: each step is computed per
stream, in a fixed order, whatever else was scored in the same poll.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numba as nb
import numpy as np
import torch

from streamseq.models.kernels import LSTM, ParamLayout, layer_forward, matvec_add

if TYPE_CHECKING:
    from streamseq.text.bptt import DropoutMasks
    from streamseq.text.lm import TokenLanguageModel

__all__ = ["CompiledScorer", "advance", "input_gates", "score_tokens", "record_tokens"]


_JIT = {"cache": True, "nogil": True, "error_model": "numpy"}


@nb.njit(**_JIT)
def input_gates(token: int, emb: np.ndarray, theta: np.ndarray, theta_t: np.ndarray,
                offs: np.ndarray, toffs: np.ndarray, table: np.ndarray,
                filled: np.ndarray) -> np.ndarray:
    """``b_ih + W_ih emb[token]`` of the first layer, computed once per token id and
    weights (``table [vocab, gates]``, rows valid where ``filled``; clear ``filled`` when
    the weights change), with the same operations as
    :func:`~streamseq.models.kernels.layer_forward`'s: the same bits."""
    if not filled[token]:
        gates, n_in = table.shape[1], emb.shape[1]
        row = table[token]
        row[:] = theta[offs[0, 2]:offs[0, 2] + gates]
        matvec_add(row, theta_t[toffs[0, 0]:toffs[0, 0] + n_in * gates].reshape(n_in, gates),
                   emb[token])
        filled[token] = True
    return table[token]


@nb.njit(**_JIT)
def advance(cell: int, hidden: int, x: np.ndarray, x_gates: np.ndarray, state: np.ndarray,
            theta: np.ndarray, theta_t: np.ndarray, offs: np.ndarray, toffs: np.ndarray,
            gi: np.ndarray, gh: np.ndarray, drop_mid: np.ndarray, mid: np.ndarray,
            rec: np.ndarray) -> None:
    """One step of every layer from input ``x``: ``state [layers, state_size]`` advanced in
    place, what the backward pass needs in ``rec [layers, 6 * hidden]`` (per layer the new
    ``h``, the new ``c`` (LSTM), then the gate activations of
    :func:`~streamseq.models.kernels.layer_forward`).

    ``x_gates``, if not empty, is the first layer's ``b_ih + W_ih x`` (from
    :func:`input_gates`). ``drop_mid [layers - 1, hidden]`` scales the inputs of the upper
    layers (dropout masks; empty for none, then the step is
    :func:`~streamseq.models.kernels.cell_step`'s bit for bit); ``mid`` is a work area of
    ``hidden``.
    """
    gates = (4 if cell == LSTM else 3) * hidden
    inp = x
    n_in = x.shape[0]
    for layer in range(state.shape[0]):
        b_ih = theta[offs[layer, 2]:offs[layer, 2] + gates]
        if layer == 0 and x_gates.shape[0] > 0:
            b_ih = x_gates
            inp = x[:0]
            n_in = 0
        w_ih_t = theta_t[toffs[layer, 0]:toffs[layer, 0] + n_in * gates].reshape(n_in, gates)
        w_hh_t = theta_t[toffs[layer, 1]:toffs[layer, 1] + hidden * gates].reshape(hidden, gates)
        h_new = rec[layer, :hidden]
        c_new = rec[layer, hidden:2 * hidden]
        layer_forward(cell, hidden, inp, state[layer, :hidden], state[layer, hidden:], w_ih_t,
                      w_hh_t, b_ih, theta[offs[layer, 3]:offs[layer, 3] + gates], gi, gh,
                      h_new, c_new, rec[layer, 2 * hidden:])
        state[layer, :hidden] = h_new
        if cell == LSTM:
            state[layer, hidden:] = c_new
        if drop_mid.shape[0] > 0 and layer + 1 < state.shape[0]:
            for k in range(hidden):
                mid[k] = h_new[k] * drop_mid[layer, k]
            inp = mid
        else:
            inp = state[layer, :hidden]
        n_in = hidden


@nb.njit(**_JIT)
def score_tokens(cell: int, hidden: int, emb: np.ndarray, inputs: np.ndarray,
                 targets: np.ndarray, state: np.ndarray, theta: np.ndarray,
                 theta_t: np.ndarray, offs: np.ndarray, toffs: np.ndarray, head_off: int,
                 head_t_off: int, known: int, escape: float, mark_at: np.ndarray,
                 marks: np.ndarray, scratch: np.ndarray, logits: np.ndarray,
                 rec: np.ndarray, table: np.ndarray, filled: np.ndarray) -> float:
    """Summed log-loss (nats) of ``targets``, reading ``inputs`` from ``state [layers,
    state_size]`` (advanced in place); NaN if the final state is not finite. ``marks[i]``
    receives the state after the first ``mark_at[i]`` inputs; ``rec [len(inputs), layers,
    6 * hidden]`` (or empty) each step's record from :func:`advance`; ``table`` and
    ``filled``: see :func:`input_gates`.

    The head covers ids ``0 .. known - 1`` and one class for the ids not given out yet
    (row ``known``'s logit plus ``escape``); a target from ``known`` up is scored in that
    class, less ``escape`` (see ``TokenLanguageModel.known_logits``).
    """
    n_out = theta_t.shape[0] - head_t_off
    n_out = n_out // hidden
    classes = min(known + 1, n_out)
    w_t = theta_t[head_t_off:head_t_off + hidden * n_out].reshape(hidden, n_out)
    bias = theta[head_off + n_out * hidden:head_off + n_out * hidden + n_out]
    top = state[state.shape[0] - 1, :hidden]
    gates = (4 if cell == LSTM else 3) * hidden
    gi, gh = scratch[:gates], scratch[gates:2 * gates]
    mid = scratch[2 * gates:2 * gates + hidden]
    work = np.empty((state.shape[0], 6 * hidden), np.float32)
    no_drop = np.empty((0, hidden), np.float32)
    total = 0.0
    m = 0
    for t in range(inputs.shape[0]):
        out = rec[t] if rec.shape[0] > 0 else work
        x_gates = input_gates(inputs[t], emb, theta, theta_t, offs, toffs, table, filled)
        advance(cell, hidden, emb[inputs[t]], x_gates, state, theta, theta_t, offs, toffs, gi,
                gh, no_drop, mid, out)
        z = logits[:classes]
        z[:] = bias[:classes]
        matvec_add(z, w_t, top)
        if classes <= known:  # every id given out: no shared class
            y = targets[t]
            extra = 0.0
        else:
            z[known] += np.float32(escape)
            y = min(targets[t], known)
            extra = escape if targets[t] >= known else 0.0
        top_z = z[0]
        for j in range(1, classes):
            top_z = max(top_z, z[j])
        s = np.float32(0.0)
        for j in range(classes):
            s += np.exp(z[j] - top_z)
        total += np.float64(np.log(s) + top_z - z[y]) + extra
        while m < mark_at.shape[0] and mark_at[m] == t + 1:
            marks[m] = state
            m += 1
    for i in range(state.shape[0]):
        for j in range(state.shape[1]):
            if not np.isfinite(state[i, j]):
                return np.nan
    return total


@nb.njit(**_JIT)
def record_tokens(cell: int, hidden: int, emb: np.ndarray, inputs: np.ndarray,
                  starts: np.ndarray, todo: np.ndarray, state0: np.ndarray, theta: np.ndarray,
                  theta_t: np.ndarray, offs: np.ndarray, toffs: np.ndarray,
                  drop_in: np.ndarray, drop_mid: np.ndarray, scratch: np.ndarray,
                  rec: np.ndarray, table: np.ndarray, filled: np.ndarray) -> None:
    """Run windows (rows ``starts[i] .. starts[i + 1]`` of ``inputs``, window ``i`` from
    ``state0[i]``; those with ``todo[i]`` only) and write each step's record (see
    :func:`advance`) into ``rec``.

    ``drop_in [rows, embed]`` and ``drop_mid [rows, layers - 1, hidden]`` are dropout masks
    on the embeddings and between layers (empty for none: then a row's record is the one
    :func:`score_tokens` writes from the same state, bit for bit); ``table`` and
    ``filled``: see :func:`input_gates`.
    """
    gates = (4 if cell == LSTM else 3) * hidden
    gi, gh = scratch[:gates], scratch[gates:2 * gates]
    mid = scratch[2 * gates:2 * gates + hidden]
    x = np.empty(emb.shape[1], np.float32)
    no_drop = np.empty((0, hidden), np.float32)
    no_gates = np.empty(0, np.float32)
    for i in range(starts.shape[0] - 1):
        if not todo[i]:
            continue
        state = state0[i].copy()
        for r in range(starts[i], starts[i + 1]):
            if drop_in.shape[0] > 0:
                for k in range(x.shape[0]):
                    x[k] = emb[inputs[r], k] * drop_in[r, k]
                advance(cell, hidden, x, no_gates, state, theta, theta_t, offs, toffs, gi, gh,
                        drop_mid[r], mid, rec[r])
            else:
                x_gates = input_gates(inputs[r], emb, theta, theta_t, offs, toffs, table,
                                      filled)
                advance(cell, hidden, emb[inputs[r]], x_gates, state, theta, theta_t, offs,
                        toffs, gi, gh, no_drop, mid, rec[r])


class CompiledScorer:
    """A :class:`~streamseq.text.lm.TokenLanguageModel`'s weights as flat buffers for
    :func:`score_tokens` (the module's parameters are moved into them) and their transposed
    copy; call :meth:`refresh` after the weights change.

    Examples
    --------
    >>> from torch.nn import functional as F
    >>> from streamseq.text.lm import TokenLanguageModel
    >>> m = TokenLanguageModel(40, embed_dim=8, hidden=16, layers=2, cell="lstm").eval()
    >>> scorer = CompiledScorer(m)
    >>> x, y = torch.tensor([[1, 5, 7, 12]]), torch.tensor([5, 7, 12, 30])
    >>> with torch.no_grad():
    ...     out, state = m.features(x, m.init_state(1))
    ...     ref = float(F.cross_entropy(m.known_logits(out[0], 13), y.clamp(max=13),
    ...                                 reduction="sum")) + m.escape_cost(13)
    >>> s = m.init_state(1)
    >>> nll, marks = scorer.score(s, [1, 5, 7, 12], [5, 7, 12, 30], known=13, mark_at=[4])
    >>> abs(nll - ref) < 1e-4, bool(torch.allclose(s, state, atol=1e-5)), marks[0].equal(s)
    (True, True, True)
    """

    def __init__(self, model: TokenLanguageModel) -> None:
        rnn = model.rnn
        self.model = model
        self.layout = lay = ParamLayout.build(rnn.cell, rnn.num_layers, rnn.hidden,
                                              model.embed.embedding_dim,
                                              model.head.out_features)
        self.params = [*rnn.parameters(), *model.head.parameters()]
        self.theta = np.zeros(lay.size, np.float32)
        self.theta_t = np.zeros(lay.t_size, np.float32)
        self.emb = np.zeros(tuple(model.embed.weight.shape), np.float32)
        self.scratch = np.zeros(2 * lay.gates + 6 * lay.hidden, np.float32)
        self.logits = np.zeros(lay.outputs, np.float32)
        self.no_record = np.zeros((0, lay.layers, 6 * lay.hidden), np.float32)
        #: the first layer's input gates per token id under the current weights
        self.table = np.zeros((model.embed.num_embeddings, lay.gates), np.float32)
        self.filled = np.zeros(model.embed.num_embeddings, np.bool_)
        self._ptrs: list[int] = []  # where the weights were when linked
        self._transposes: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.refresh()

    def refresh(self) -> None:
        """Take the module's current weights.

        The module's weights live in this scorer's flat buffers (they stay its parameters;
        the optimizer updates them in place), so only the transposed layout is copied (by
        torch's blocked copy: numba's element loop takes ~1 ms for a 1x128 model); a
        parameter given new storage meanwhile is copied in and moved back."""
        self.filled[:] = False
        weights = [*self.params, self.model.embed.weight]
        if [p.data_ptr() for p in weights] != self._ptrs:
            self._link()
        with torch.no_grad():
            for dst, src in self._transposes:
                dst.copy_(src)

    def _link(self) -> None:
        """Move the module's weights into the flat buffers; the transposed copy's sources."""
        lay = self.layout
        theta, theta_t = torch.from_numpy(self.theta), torch.from_numpy(self.theta_t)
        with torch.no_grad():
            at = 0
            for p in self.params:
                part = theta[at:at + p.numel()].view_as(p)
                if p.data_ptr() != part.data_ptr():
                    part.copy_(p)
                    p.data = part
                at += p.numel()
            emb = torch.from_numpy(self.emb)
            weight = self.model.embed.weight
            if weight.data_ptr() != emb.data_ptr():
                emb.copy_(weight)
                weight.data = emb
        # params: per layer weight_ih, weight_hh, bias_ih, bias_hh; head weight, bias
        mats = [(int(lay.t_offsets[i, j]), self.params[4 * i + j])
                for i in range(lay.layers) for j in (0, 1)]
        mats.append((lay.head_t_offset, self.params[-2]))
        self._transposes = [(theta_t[at:at + w.numel()].view(w.shape[1], w.shape[0]),
                             w.detach().t()) for at, w in mats]
        self._ptrs = [p.data_ptr() for p in [*self.params, self.model.embed.weight]]

    def score(self, state: torch.Tensor, inputs: list[int], targets: list[int], known: int,
              mark_at: list[int], rec: np.ndarray | None = None
              ) -> tuple[float, list[torch.Tensor]]:
        """Score ``targets`` after ``inputs`` from ``state [layers, 1, state_size]``
        (advanced in place); returns the summed log-loss (nats; NaN if the state is not
        finite) and the states after the first ``mark_at[i]`` inputs (ascending). ``rec``
        ``[len(inputs), layers, 6 * hidden]``, if given, receives each step's record (see
        :func:`advance`)."""
        lay = self.layout
        st = state.numpy()[:, 0]
        marks = np.zeros((len(mark_at), *st.shape), np.float32)
        escape = math.log(lay.outputs - known) if known < lay.outputs else 0.0
        nll = score_tokens(lay.cell, lay.hidden, self.emb, np.asarray(inputs, np.int64),
                           np.asarray(targets, np.int64), st, self.theta, self.theta_t,
                           lay.offsets, lay.t_offsets, lay.head_offsets[0], lay.head_t_offset,
                           known, escape, np.asarray(mark_at, np.int64), marks, self.scratch,
                           self.logits, self.no_record if rec is None else rec, self.table,
                           self.filled)
        return nll, [torch.from_numpy(mk).unsqueeze(1) for mk in marks]

    def record(self, inputs: np.ndarray, starts: np.ndarray, todo: np.ndarray,
               state0: np.ndarray, masks: DropoutMasks | None, rec: np.ndarray) -> None:
        """Fill ``rec [rows, layers, 6 * hidden]`` with the steps of windows ``inputs
        [starts[i]:starts[i + 1]]`` (those with ``todo[i]``) from states ``state0 [windows,
        layers, state_size]`` under the current weights, with dropout ``masks`` if given
        (see :func:`record_tokens`)."""
        lay = self.layout
        if masks is None:
            drop_in = np.zeros((0, lay.inputs), np.float32)
            drop_mid = np.zeros((0, 0, lay.hidden), np.float32)
        else:
            drop_in, drop_mid = masks.emb, masks.mid
        record_tokens(lay.cell, lay.hidden, self.emb, inputs, starts, todo, state0, self.theta,
                      self.theta_t, lay.offsets, lay.t_offsets, drop_in, drop_mid,
                      self.scratch, rec, self.table, self.filled)
