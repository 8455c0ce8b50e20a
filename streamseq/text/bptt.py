"""Gradients of the language model's TBPTT windows from recorded steps, without autograd.

The learning half of predict-then-learn. The forward pass of a window is a record per
step (:func:`streamseq.text.scoring.advance`: each layer's new ``h``, ``c`` and gate
activations), either the one the scorer wrote while scoring the window's tokens under the
same weights, or one run again from the window's start state
(:meth:`~streamseq.text.scoring.CompiledScorer.record`, bit for bit the same). From it:

* the head, its log-softmax loss and the gradient into the top layer's outputs, over all
  the windows' steps at once (torch matrix products);
* the recurrence backward, step by step and window by window (numba,
  :func:`backprop_windows`, with :func:`~streamseq.models.kernels.gate_gradients`): the
  gate gradients of every step;
* the weight gradients as one matrix product per weight over all steps (torch), the
  embedding's by ``index_add``.

:class:`~streamseq.text.lm.TokenLanguageModel` under autograd is the reference
(tests/unit/test_text.py compares every gradient).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

import numba as nb
import numpy as np
import torch

from streamseq.models.kernels import LSTM, ParamLayout, gate_gradients

if TYPE_CHECKING:
    from streamseq.text.lm import TokenLanguageModel

__all__ = ["WindowBatch", "DropoutMasks", "backprop_windows", "softmax_gradient",
           "window_gradients"]

_JIT = {"cache": True, "nogil": True, "error_model": "numpy"}


@nb.njit(**_JIT)
def _add_products(acc: np.ndarray, w: np.ndarray, dg: np.ndarray, rows: np.ndarray,
                  m: int) -> None:
    """``acc[a] += W^T dg[rows[a]]`` for ``a < m``, ``w`` holding ``W``'s rows ``[gates,
    n]``. Four rows of ``W`` are read once for all the ``m`` windows (the windows' steps
    share the weights' passes through the cache); each output adds its terms in row order.
    """
    gates = w.shape[0]
    n_four = gates - gates % 4
    for k in range(0, n_four, 4):
        r0, r1, r2, r3 = w[k], w[k + 1], w[k + 2], w[k + 3]
        for a in range(m):
            d = dg[rows[a]]
            x0, x1, x2, x3 = d[k], d[k + 1], d[k + 2], d[k + 3]
            out = acc[a]
            for j in range(out.shape[0]):
                out[j] = out[j] + r0[j] * x0 + r1[j] * x1 + r2[j] * x2 + r3[j] * x3
    for k in range(n_four, gates):
        row = w[k]
        for a in range(m):
            x = dg[rows[a], k]
            out = acc[a]
            for j in range(out.shape[0]):
                out[j] += row[j] * x


@nb.njit(**_JIT)
def backprop_windows(cell: int, hidden: int, theta: np.ndarray, offs: np.ndarray,
                     rec: np.ndarray, starts: np.ndarray, state0: np.ndarray,
                     dtop: np.ndarray, drop_mid: np.ndarray, dgi: np.ndarray, dgh: np.ndarray,
                     hprev: np.ndarray) -> None:
    """Backward through time of windows ``starts[i] .. starts[i + 1]`` (rows of ``rec
    [rows, layers, 6 * hidden]``, window ``i`` from ``state0 [i, layers, state_size]``),
    given the gradient ``dtop [rows, hidden]`` of the loss in the top layer's outputs.

    Writes the gate gradients ``dgi``, ``dgh [layers, rows, gates]`` (of the input and
    recurrent pre-activations) and ``hprev [layers, rows, hidden]``, the ``h`` before each
    step: the weight gradients are their products with the steps' inputs. ``drop_mid
    [rows, layers - 1, hidden]`` are the dropout masks between layers (empty for none).

    The windows go back in step together, aligned at their last steps, so that each step's
    products with ``W_hh`` read the weights once for all of them; a window's numbers do not
    depend on the others.
    """
    n = starts.shape[0] - 1
    layers = rec.shape[1]
    gates = (4 if cell == LSTM else 3) * hidden
    lengths = starts[1:] - starts[:-1]
    longest = 0
    for i in range(n):
        longest = max(longest, lengths[i])
    dh_rec = np.zeros((n, layers, hidden), np.float32)
    dc_rec = np.zeros((n, layers, hidden), np.float32)
    dh = np.zeros((n, hidden), np.float32)  # per window going back in this step
    d_inp = np.zeros((n, hidden), np.float32)
    dh_prev = np.zeros((n, hidden), np.float32)
    dc_prev = np.zeros((n, hidden), np.float32)
    which = np.zeros(n, np.int64)
    rows = np.zeros(n, np.int64)
    for s in range(longest):
        m = 0
        for i in range(n):
            if lengths[i] > s:
                which[m] = i
                rows[m] = starts[i + 1] - 1 - s
                dh[m] = dtop[rows[m]]
                m += 1
        for layer in range(layers - 1, -1, -1):
            for a in range(m):
                i, r = which[a], rows[a]
                for k in range(hidden):
                    dh[a, k] += dh_rec[i, layer, k]
                if r > starts[i]:
                    h_prev = rec[r - 1, layer, :hidden]
                    c_prev = rec[r - 1, layer, hidden:2 * hidden]
                else:
                    h_prev = state0[i, layer, :hidden]
                    c_prev = state0[i, layer, hidden:] if cell == LSTM else h_prev
                gate_gradients(cell, hidden, h_prev, c_prev, rec[r, layer, hidden:2 * hidden],
                               rec[r, layer, 2 * hidden:], dh[a], dc_rec[i, layer],
                               dgi[layer, r], dgh[layer, r], dh_prev[a], dc_prev[a])
                hprev[layer, r] = h_prev
            o_ih, o_hh = offs[layer, 0], offs[layer, 1]
            _add_products(dh_prev, theta[o_hh:o_hh + gates * hidden].reshape(gates, hidden),
                          dgh[layer], rows, m)
            if layer > 0:
                d_inp[:m] = 0.0
                _add_products(d_inp, theta[o_ih:o_ih + gates * hidden].reshape(gates, hidden),
                              dgi[layer], rows, m)
            for a in range(m):
                i = which[a]
                dh_rec[i, layer] = dh_prev[a]
                if cell == LSTM:
                    dc_rec[i, layer] = dc_prev[a]
                if layer > 0:
                    if drop_mid.shape[0] > 0:
                        for k in range(hidden):
                            dh[a, k] = d_inp[a, k] * drop_mid[rows[a], layer - 1, k]
                    else:
                        dh[a] = d_inp[a]


@nb.njit(**_JIT)
def softmax_gradient(logits: np.ndarray, targets: np.ndarray) -> float:
    """Mean log-softmax loss of the rows of ``logits [rows, classes]`` whose target is not
    negative; ``logits`` is overwritten with the loss's gradient (softmax minus one-hot,
    over the number of such rows; zero on the other rows)."""
    count = 0
    for r in range(targets.shape[0]):
        if targets[r] >= 0:
            count += 1
    scale = np.float32(1.0 / max(count, 1))
    total = 0.0
    for r in range(logits.shape[0]):
        z = logits[r]
        y = targets[r]
        if y < 0:
            z[:] = 0.0
            continue
        top = z[0]
        for j in range(1, z.shape[0]):
            top = max(top, z[j])
        total -= z[y] - top
        s = np.float32(0.0)
        for j in range(z.shape[0]):
            z[j] = np.exp(z[j] - top)
            s += z[j]
        total += np.log(s)
        inv = scale / s
        for j in range(z.shape[0]):
            z[j] *= inv
        z[y] -= scale
    return total / max(count, 1)


@dataclass(frozen=True)
class DropoutMasks:
    """Inverted-dropout masks of one update (already scaled by ``1 / (1 - p)``):
    embeddings ``emb [rows, embed]``, between layers ``mid [rows, layers - 1, hidden]``,
    the head's inputs ``top [rows, hidden]``."""

    emb: np.ndarray
    mid: np.ndarray
    top: np.ndarray

    @classmethod
    def draw(cls, rows: int, lay: ParamLayout, p: float,
             generator: torch.Generator) -> DropoutMasks:
        def mask(*shape: int) -> np.ndarray:
            m = torch.empty(shape).bernoulli_(1.0 - p, generator=generator) / (1.0 - p)
            return m.numpy()

        return cls(mask(rows, lay.inputs), mask(rows, lay.layers - 1, lay.hidden),
                   mask(rows, lay.hidden))


@dataclass(frozen=True)
class WindowBatch:
    """The windows of one update, their steps one after another.

    ``inputs [rows]`` token ids, ``targets [rows]`` (``-100``: context, not learned),
    window ``i``'s steps ``starts[i] .. starts[i + 1]`` from ``state0 [i, layers,
    state_size]``, and ``rec [rows, layers, 6 * hidden]`` the steps' records.
    """

    inputs: np.ndarray
    targets: np.ndarray
    starts: np.ndarray
    state0: np.ndarray
    rec: np.ndarray


def window_gradients(model: TokenLanguageModel, lay: ParamLayout, theta: np.ndarray,
                     batch: WindowBatch, known: int, masks: DropoutMasks | None
                     ) -> tuple[float, list[torch.Tensor]]:
    """The mean log-loss of the batch's learned targets (ids ``0 .. known - 1`` and the
    shared class of the rest, see
    :meth:`~streamseq.text.lm.TokenLanguageModel.known_logits`) and its gradient in each
    of ``model.parameters()``, in their order.

    ``theta`` is the flat copy of the recurrent and head weights the records were made
    with (:class:`~streamseq.text.scoring.CompiledScorer`'s).
    """
    hd, layers = lay.hidden, lay.layers
    rows = batch.inputs.shape[0]
    rec = torch.from_numpy(batch.rec)
    top = rec[:, layers - 1, :hd].contiguous()
    if masks is not None:
        top.mul_(torch.from_numpy(masks.top))
    head = model.head
    with torch.no_grad():
        dz = model.known_logits(top, known)  # the logits, then their gradient
        classes = dz.shape[1]
        loss = softmax_gradient(dz.numpy(), batch.targets)
        g_head_w = torch.zeros_like(head.weight)
        g_head_b = torch.zeros_like(head.bias)
        torch.mm(dz.t(), top, out=g_head_w[:classes])
        torch.sum(dz, 0, out=g_head_b[:classes])
        dtop = dz @ head.weight[:classes]
        if masks is not None:
            dtop.mul_(torch.from_numpy(masks.top))
    no_mid = np.zeros((0, 0, hd), np.float32)
    dgi = np.empty((layers, rows, lay.gates), np.float32)
    # an LSTM's recurrent gate gradients are its input ones: one array for both
    dgh = dgi if lay.cell == LSTM else np.empty((layers, rows, lay.gates), np.float32)
    hprev = np.empty((layers, rows, hd), np.float32)
    backprop_windows(lay.cell, hd, theta, lay.offsets, batch.rec, batch.starts,
                     batch.state0, dtop.numpy(), masks.mid if masks is not None else no_mid,
                     dgi, dgh, hprev)
    with torch.no_grad():
        emb = model.embed.weight
        ids = torch.from_numpy(batch.inputs)
        x = emb[ids]
        if masks is not None:
            x.mul_(torch.from_numpy(masks.emb))
        grads = []
        for layer in range(layers):
            gi, gh = torch.from_numpy(dgi[layer]), torch.from_numpy(dgh[layer])
            if layer == 0:
                inp = x
            else:
                inp = rec[:, layer - 1, :hd]
                if masks is not None:
                    inp = inp * torch.from_numpy(masks.mid[:, layer - 1])
            grads += [gi.t() @ inp, gh.t() @ torch.from_numpy(hprev[layer]), gi.sum(0),
                      gh.sum(0)]
        w_ih0 = cast(torch.Tensor, model.rnn.layers[0].weight_ih_l0)
        d_emb = torch.from_numpy(dgi[0]) @ w_ih0
        if masks is not None:
            d_emb.mul_(torch.from_numpy(masks.emb))
        g_emb = torch.zeros_like(emb).index_add_(0, ids, d_emb)
    return loss, [g_emb, *grads, g_head_w, g_head_b]
