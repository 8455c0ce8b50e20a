"""Compiled GRU/LSTM kernels: one key's step, windows' forward + backward, optimizer steps.

The torch module :class:`~streamseq.models.RecurrentForecaster` is the reference; these
numba kernels compute the same function on one flat float32 parameter vector (the module's
parameters, in their order and layout, see :class:`ParamLayout`) and are tested against
torch autograd (tests/unit/test_kernels.py).

Two properties matter beyond speed:

* **A key's numbers do not depend on its company.** Every matrix-vector product runs per
  key and accumulates ``out += W[:, k] * x[k]`` over ``k`` in a fixed order (vectorised
  over the outputs, never reassociating a sum), so a key's forecast is bit-identical
  whichever other keys share the call and however the stream was cut into polls.
* **An update is a function of its windows.** Windows are processed one after another in
  the order given (the stream's order), gradients accumulate in that order.

The weights are read in two layouts: ``theta`` (torch's, ``[out, in]`` row-major, the one
the optimizer updates and checkpoints store) and ``theta_t`` (every matrix transposed,
``[in, out]``, rebuilt after each optimizer step) so that both the forward products
(columns of ``W``) and the backward products (rows of ``W``) walk contiguous memory.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numba as nb
import numpy as np

__all__ = ["GRU", "LSTM", "ParamLayout", "cell_step", "window_gradients", "adam_step",
           "sgd_step", "transpose_into", "clip_gradients", "forecast_head", "matvec_add",
           "layer_forward", "layer_backward", "gate_gradients"]

GRU, LSTM = 0, 1
_JIT = {"cache": True, "error_model": "numpy", "nogil": True}


@dataclass(frozen=True)
class ParamLayout:
    """Where each weight of a stacked GRU/LSTM + linear head sits in the flat vector.

    The order is that of ``RecurrentForecaster.parameters()``: per layer ``weight_ih``,
    ``weight_hh``, ``bias_ih``, ``bias_hh``, then ``head.weight`` and ``head.bias``.

    Examples
    --------
    >>> lay = ParamLayout.build("gru", layers=2, hidden=4, inputs=3, outputs=1)
    >>> lay.offsets.tolist()  # [w_ih, w_hh, b_ih, b_hh] per layer
    [[0, 36, 84, 96], [108, 156, 204, 216]]
    >>> lay.head_offsets, lay.size
    ((228, 232), 233)
    """

    cell: int
    layers: int
    hidden: int
    inputs: int
    outputs: int
    offsets: np.ndarray  # [layers, 4] into theta
    t_offsets: np.ndarray  # [layers, 2] into theta_t: w_ih^T, w_hh^T
    head_offsets: tuple[int, int]  # head weight, head bias into theta
    head_t_offset: int  # head weight^T into theta_t
    size: int
    t_size: int

    @classmethod
    def build(cls, cell: str, layers: int, hidden: int, inputs: int,
              outputs: int) -> ParamLayout:
        gates = (4 if cell == "lstm" else 3) * hidden
        offs = np.zeros((layers, 4), dtype=np.int64)
        toffs = np.zeros((layers, 2), dtype=np.int64)
        at = t_at = 0
        for layer in range(layers):
            n_in = inputs if layer == 0 else hidden
            offs[layer] = (at, at + gates * n_in, at + gates * (n_in + hidden),
                           at + gates * (n_in + hidden) + gates)
            at += gates * (n_in + hidden) + 2 * gates
            toffs[layer] = (t_at, t_at + gates * n_in)
            t_at += gates * (n_in + hidden)
        head = (at, at + outputs * hidden)
        size = at + outputs * hidden + outputs
        return cls(LSTM if cell == "lstm" else GRU, layers, hidden, inputs, outputs, offs,
                   toffs, head, t_at, size, t_at + outputs * hidden)

    @property
    def gates(self) -> int:
        return (4 if self.cell == LSTM else 3) * self.hidden

    @property
    def state_size(self) -> int:
        return self.hidden * (2 if self.cell == LSTM else 1)

    def transpose(self, theta: np.ndarray, theta_t: np.ndarray) -> None:
        """Rebuild ``theta_t`` (every matrix transposed) from ``theta``."""
        transpose_into(theta, theta_t, self.offsets, self.t_offsets, self.gates, self.hidden,
                       self.inputs, self.head_offsets[0], self.head_t_offset, self.outputs)


# ---------------------------------------------------------------------------- helpers
@nb.njit(**_JIT)
def transpose_into(theta: np.ndarray, theta_t: np.ndarray, offs: np.ndarray,
                   toffs: np.ndarray, gates: int, hidden: int, inputs: int, head_off: int,
                   head_t_off: int, outputs: int) -> None:
    for layer in range(offs.shape[0]):
        n_in = inputs if layer == 0 else hidden
        for part, k_dim in ((0, n_in), (1, hidden)):
            src = theta[offs[layer, part]:offs[layer, part] + gates * k_dim].reshape(gates, k_dim)
            dst = theta_t[toffs[layer, part]:toffs[layer, part] + gates * k_dim].reshape(
                k_dim, gates)
            for j in range(gates):
                for k in range(k_dim):
                    dst[k, j] = src[j, k]
    src = theta[head_off:head_off + outputs * hidden].reshape(outputs, hidden)
    dst = theta_t[head_t_off:head_t_off + outputs * hidden].reshape(hidden, outputs)
    for o in range(outputs):
        for k in range(hidden):
            dst[k, o] = src[o, k]


_F32 = np.float32
_TANH_CLAMP = _F32(7.99881172180175781)


@nb.njit(inline="always", **_JIT)
def _tanh(a: float) -> float:
    """float32 tanh as a rational function (Eigen's ``generic_fast_tanh_float``): plain
    arithmetic, so loops of it vectorise (libm's ``tanhf`` costs ~25 ns a call here, this
    ~0.4 ns); within 4e-7 of the exact value."""
    x = min(max(a, -_TANH_CLAMP), _TANH_CLAMP)
    x2 = x * x
    p = x2 * _F32(-2.76076847742355e-16) + _F32(2.00018790482477e-13)
    p = x2 * p + _F32(-8.60467152213735e-11)
    p = x2 * p + _F32(5.12229709037114e-08)
    p = x2 * p + _F32(1.48572235717979e-05)
    p = x2 * p + _F32(6.37261928875436e-04)
    p = x2 * p + _F32(4.89352455891786e-03)
    q = x2 * _F32(1.19825839466702e-06) + _F32(1.18534705686654e-04)
    q = x2 * q + _F32(2.26843463243900e-03)
    q = x2 * q + _F32(4.89352518554385e-03)
    return a if abs(a) < _F32(0.0004) else x * p / q


@nb.njit(inline="always", **_JIT)
def _sigmoid(v: float) -> float:
    return _F32(0.5) + _F32(0.5) * _tanh(_F32(0.5) * v)


@nb.njit(inline="always", **_JIT)
def _axpy(y: np.ndarray, a: float, x: np.ndarray) -> None:
    for k in range(y.shape[0]):
        y[k] += a * x[k]


@nb.njit(inline="always", **_JIT)
def matvec_add(acc: np.ndarray, w_t: np.ndarray, x: np.ndarray) -> None:
    """``acc += W x`` with ``w_t = W^T`` (for the first ``len(acc)`` outputs of ``W``).

    Output ``j`` adds its terms one at a time in the order of ``k``, ``((acc[j] + w[j, 0]
    x[0]) + w[j, 1] x[1]) + ...``: the plain column-by-column loop's result bit for bit
    (tests/unit/test_kernels.py). The loop over ``k`` is unrolled by four: each pass over
    the outputs adds four columns, so ``acc`` is loaded and stored once per four terms; no
    sum is split into partial sums."""
    n_in = x.shape[0]
    n_four = n_in - n_in % 4
    for k in range(0, n_four, 4):
        x0, x1, x2, x3 = x[k], x[k + 1], x[k + 2], x[k + 3]
        r0, r1, r2, r3 = w_t[k], w_t[k + 1], w_t[k + 2], w_t[k + 3]
        for j in range(acc.shape[0]):
            acc[j] = acc[j] + r0[j] * x0 + r1[j] * x1 + r2[j] * x2 + r3[j] * x3
    for k in range(n_four, n_in):
        xk = x[k]
        row = w_t[k]
        for j in range(acc.shape[0]):
            acc[j] += row[j] * xk


@nb.njit(**_JIT)
def layer_forward(cell: int, hidden: int, inp: np.ndarray, h_prev: np.ndarray,
                  c_prev: np.ndarray, w_ih_t: np.ndarray, w_hh_t: np.ndarray,
                  b_ih: np.ndarray, b_hh: np.ndarray, gi: np.ndarray, gh: np.ndarray,
                  h_out: np.ndarray, c_out: np.ndarray, acts: np.ndarray) -> None:
    """One layer, one step. ``acts`` receives what the backward pass needs:
    GRU ``[r, z, n, W_hn h + b_hn]``, LSTM ``[i, f, g, o]`` (each ``hidden`` long)."""
    gi[:] = b_ih
    gh[:] = b_hh
    matvec_add(gi, w_ih_t, inp)
    matvec_add(gh, w_hh_t, h_prev)
    hd = hidden
    if cell == GRU:
        for j in range(hd):
            r = _sigmoid(gi[j] + gh[j])
            z = _sigmoid(gi[hd + j] + gh[hd + j])
            n = _tanh(gi[2 * hd + j] + r * gh[2 * hd + j])
            h_out[j] = (np.float32(1.0) - z) * n + z * h_prev[j]
            acts[j] = r
            acts[hd + j] = z
            acts[2 * hd + j] = n
            acts[3 * hd + j] = gh[2 * hd + j]
    else:
        for j in range(hd):
            i = _sigmoid(gi[j] + gh[j])
            f = _sigmoid(gi[hd + j] + gh[hd + j])
            g = _tanh(gi[2 * hd + j] + gh[2 * hd + j])
            o = _sigmoid(gi[3 * hd + j] + gh[3 * hd + j])
            c = f * c_prev[j] + i * g
            c_out[j] = c
            h_out[j] = o * _tanh(c)
            acts[j] = i
            acts[hd + j] = f
            acts[2 * hd + j] = g
            acts[3 * hd + j] = o


@nb.njit(**_JIT)
def cell_step(cell: int, hidden: int, x: np.ndarray, state: np.ndarray, theta: np.ndarray,
              theta_t: np.ndarray, offs: np.ndarray, toffs: np.ndarray,
              scratch: np.ndarray) -> None:
    """Advance one key's ``state [layers, state_size]`` by input ``x`` in place (inference).

    ``scratch`` is a float32 work area of at least ``12 * hidden + len(x)`` (reused across
    calls). The top layer's new ``h`` is ``state[-1, :hidden]``.
    """
    gates = (4 if cell == LSTM else 3) * hidden
    gi = scratch[:gates]
    gh = scratch[gates:2 * gates]
    acts = scratch[2 * gates:2 * gates + 4 * hidden]
    h_new = scratch[2 * gates + 4 * hidden:2 * gates + 5 * hidden]
    c_new = scratch[2 * gates + 5 * hidden:2 * gates + 6 * hidden]
    inp = x
    n_in = x.shape[0]
    for layer in range(state.shape[0]):
        w_ih_t = theta_t[toffs[layer, 0]:toffs[layer, 0] + n_in * gates].reshape(n_in, gates)
        w_hh_t = theta_t[toffs[layer, 1]:toffs[layer, 1] + hidden * gates].reshape(hidden, gates)
        b_ih = theta[offs[layer, 2]:offs[layer, 2] + gates]
        b_hh = theta[offs[layer, 3]:offs[layer, 3] + gates]
        h_prev = state[layer, :hidden]
        c_prev = state[layer, hidden:]
        layer_forward(cell, hidden, inp, h_prev, c_prev, w_ih_t, w_hh_t, b_ih, b_hh, gi, gh,
                       h_new, c_new, acts)
        state[layer, :hidden] = h_new
        if cell == LSTM:
            state[layer, hidden:] = c_new
        inp = state[layer, :hidden]
        n_in = hidden


@nb.njit(**_JIT)
def forecast_head(top: np.ndarray, theta: np.ndarray, theta_t: np.ndarray, head_off: int,
                  head_t_off: int, out: np.ndarray) -> None:
    """``out = head.bias + head.weight @ top`` (fixed order, per key)."""
    n_out = out.shape[0]
    hidden = top.shape[0]
    out[:] = theta[head_off + n_out * hidden:head_off + n_out * hidden + n_out]
    w_t = theta_t[head_t_off:head_t_off + hidden * n_out].reshape(hidden, n_out)
    matvec_add(out, w_t, top)


# ---------------------------------------------------------------------------- training
@nb.njit(**_JIT)
def gate_gradients(cell: int, hidden: int, h_prev: np.ndarray, c_prev: np.ndarray,
                   c_new: np.ndarray, acts: np.ndarray, dh: np.ndarray, dc: np.ndarray,
                   dgi: np.ndarray, dgh: np.ndarray, dh_prev: np.ndarray,
                   dc_prev: np.ndarray) -> None:
    """The element-wise part of :func:`layer_backward`: the gate gradients ``dgi``/``dgh``,
    ``dc_prev`` (LSTM) and the part of ``dh_prev`` that does not go through ``W_hh``."""
    hd = hidden
    one = np.float32(1.0)
    if cell == GRU:
        for j in range(hd):
            r, z, n, ghn = acts[j], acts[hd + j], acts[2 * hd + j], acts[3 * hd + j]
            d_n = dh[j] * (one - z) * (one - n * n)
            d_z = dh[j] * (h_prev[j] - n) * z * (one - z)
            d_r = d_n * ghn * r * (one - r)
            dgi[j] = d_r
            dgi[hd + j] = d_z
            dgi[2 * hd + j] = d_n
            dgh[j] = d_r
            dgh[hd + j] = d_z
            dgh[2 * hd + j] = d_n * r
            dh_prev[j] = dh[j] * z
    else:
        for j in range(hd):
            i, f, g, o = acts[j], acts[hd + j], acts[2 * hd + j], acts[3 * hd + j]
            tc = _tanh(c_new[j])
            d_c = dc[j] + dh[j] * o * (one - tc * tc)
            dgi[j] = d_c * g * i * (one - i)
            dgi[hd + j] = d_c * c_prev[j] * f * (one - f)
            dgi[2 * hd + j] = d_c * i * (one - g * g)
            dgi[3 * hd + j] = dh[j] * tc * o * (one - o)
            dc_prev[j] = d_c * f
            dh_prev[j] = 0.0
        dgh[:] = dgi


@nb.njit(**_JIT)
def layer_backward(cell: int, hidden: int, h_prev: np.ndarray, c_prev: np.ndarray,
                   c_new: np.ndarray, acts: np.ndarray, dh: np.ndarray, dc: np.ndarray,
                   w_ih: np.ndarray, w_hh: np.ndarray, dgi: np.ndarray, dgh: np.ndarray,
                   need_inp: bool, d_inp: np.ndarray, dh_prev: np.ndarray,
                   dc_prev: np.ndarray) -> None:
    """Backward of one layer step. ``dh`` (and ``dc`` for LSTM) is the gradient of the
    layer's new state; writes the gate gradients ``dgi``/``dgh`` (their outer products with
    the step's inputs are the weight gradients, summed per window by
    :func:`_weight_gradients`), ``dh_prev``, ``dc_prev`` and, if ``need_inp``, ``d_inp``."""
    gate_gradients(cell, hidden, h_prev, c_prev, c_new, acts, dh, dc, dgi, dgh, dh_prev,
                   dc_prev)
    gates = dgi.shape[0]
    if need_inp:
        d_inp[:] = 0.0
        for j in range(gates):
            _axpy(d_inp, dgi[j], w_ih[j])
    for j in range(gates):
        _axpy(dh_prev, dgh[j], w_hh[j])


@nb.njit(**_JIT)
def _weight_gradients(dg: np.ndarray, inputs: np.ndarray, g_w: np.ndarray,
                      g_b: np.ndarray) -> None:
    """``g_w += sum_r dg[r] (x) inputs[r]`` and ``g_b += sum_r dg[r]`` over the rows of an
    update (window by window, each window's steps latest first): each weight row is read
    and written once per update, not once per step, in a fixed order."""
    gates, n_in = g_w.shape
    rows = dg.shape[0]
    for r in range(rows):
        _axpy(g_b, np.float32(1.0), dg[r])
    if n_in >= 16:
        for j in range(gates):
            row = g_w[j]
            for r in range(rows):
                _axpy(row, dg[r, j], inputs[r])
        return
    # few inputs (the first layer): sum in [in, gates] layout, where the long axis is
    # contiguous, then add it once
    acc = np.zeros((n_in, gates), np.float32)
    for r in range(rows):
        for k in range(n_in):
            _axpy(acc[k], inputs[r, k], dg[r])
    for j in range(gates):
        for k in range(n_in):
            g_w[j, k] += acc[k, j]


@nb.njit(**_JIT)
def window_gradients(cell: int, hidden: int, x: np.ndarray, y: np.ndarray, w: np.ndarray,
                     h0: np.ndarray, lengths: np.ndarray, base: np.ndarray,
                     residual: np.ndarray, theta: np.ndarray, theta_t: np.ndarray,
                     offs: np.ndarray, toffs: np.ndarray, head_off: int, head_t_off: int,
                     drop_layers: np.ndarray, drop_head: np.ndarray,
                     grad: np.ndarray) -> float:
    """Loss of TBPTT windows and its gradient (accumulated into ``grad``, torch layout).

    Shapes: ``x [n, T, F]``, targets ``y`` and loss weights ``w`` ``[n, T, O]`` (``O`` =
    horizon x targets, horizon-major), start states ``h0 [n, layers, state]``, valid
    ``lengths [n]``, residual bases ``base [n, T, targets]`` times ``residual [targets]``.
    ``drop_layers [n, T, layers, hidden]`` and ``drop_head [n, T, hidden]`` are dropout
    masks (already scaled by ``1 / (1 - p)``), or arrays with a zero first axis for none.

    The loss is the mean over windows with any weight of each window's weighted mean
    squared error; windows are processed in the given order.
    """
    n, T, F = x.shape
    layers = h0.shape[1]
    n_out = y.shape[2]
    n_targets = base.shape[2]
    gates = (4 if cell == LSTM else 3) * hidden
    max_in = max(F, hidden)
    dropout = drop_head.shape[0] > 0
    # per-window weight sums: the loss averages windows that carry any weight
    wsum = np.zeros(n)
    has = 0
    for i in range(n):
        s = 0.0
        for t in range(lengths[i]):
            for o in range(n_out):
                s += w[i, t, o]
        wsum[i] = s
        if s > 0:
            has += 1
    if has == 0:
        return 0.0
    inp_st = np.zeros((T, layers, max_in), np.float32)
    hprev_st = np.zeros((T, layers, hidden), np.float32)
    cprev_st = np.zeros((T, layers, hidden), np.float32)
    cnew_st = np.zeros((T, layers, hidden), np.float32)
    acts_st = np.zeros((T, layers, 4 * hidden), np.float32)
    top_st = np.zeros((T, hidden), np.float32)
    dpred = np.zeros((T, n_out), np.float32)
    gi = np.zeros(gates, np.float32)
    gh = np.zeros(gates, np.float32)
    # every step of every window, in backward order, for the weight-gradient sums
    first_row = np.zeros(n + 1, np.int64)
    for i in range(n):
        first_row[i + 1] = first_row[i] + (lengths[i] if wsum[i] > 0 else 0)
    rows = first_row[n]
    dgi_all = np.zeros((layers, rows, gates), np.float32)
    dgh_all = np.zeros((layers, rows, gates), np.float32)
    inp_all = np.zeros((layers, rows, max_in), np.float32)
    hprev_all = np.zeros((layers, rows, hidden), np.float32)
    h_cur = np.zeros((layers, hidden), np.float32)
    c_cur = np.zeros((layers, hidden), np.float32)
    dh_rec = np.zeros((layers, hidden), np.float32)
    dc_rec = np.zeros((layers, hidden), np.float32)
    d_inp = np.zeros(max_in, np.float32)
    dh_prev = np.zeros(hidden, np.float32)
    dc_prev = np.zeros(hidden, np.float32)
    dh = np.zeros(hidden, np.float32)
    pred = np.zeros(n_out, np.float32)
    head_w = theta[head_off:head_off + n_out * hidden].reshape(n_out, hidden)
    head_w_t = theta_t[head_t_off:head_t_off + hidden * n_out].reshape(hidden, n_out)
    head_b = theta[head_off + n_out * hidden:head_off + n_out * hidden + n_out]
    g_head_w = grad[head_off:head_off + n_out * hidden].reshape(n_out, hidden)
    g_head_b = grad[head_off + n_out * hidden:head_off + n_out * hidden + n_out]
    total = 0.0
    for i in range(n):
        if wsum[i] <= 0:
            continue
        length = lengths[i]
        scale = np.float32(2.0 / (wsum[i] * has))
        for layer in range(layers):
            h_cur[layer] = h0[i, layer, :hidden]
            if cell == LSTM:
                c_cur[layer] = h0[i, layer, hidden:]
        loss_i = 0.0
        # ---- forward, keeping what the backward pass needs
        for t in range(length):
            n_in = F
            inp_st[t, 0, :F] = x[i, t]
            for layer in range(layers):
                w_ih_t = theta_t[toffs[layer, 0]:toffs[layer, 0] + n_in * gates].reshape(
                    n_in, gates)
                w_hh_t = theta_t[toffs[layer, 1]:toffs[layer, 1] + hidden * gates].reshape(
                    hidden, gates)
                hprev_st[t, layer] = h_cur[layer]
                cprev_st[t, layer] = c_cur[layer]
                layer_forward(cell, hidden, inp_st[t, layer, :n_in], hprev_st[t, layer],
                               cprev_st[t, layer], w_ih_t, w_hh_t,
                               theta[offs[layer, 2]:offs[layer, 2] + gates],
                               theta[offs[layer, 3]:offs[layer, 3] + gates], gi, gh,
                               h_cur[layer], c_cur[layer], acts_st[t, layer])
                cnew_st[t, layer] = c_cur[layer]
                if layer + 1 < layers:
                    for k in range(hidden):
                        v = h_cur[layer, k]
                        inp_st[t, layer + 1, k] = v * drop_layers[i, t, layer, k] if dropout else v
                n_in = hidden
            for k in range(hidden):
                v = h_cur[layers - 1, k]
                top_st[t, k] = v * drop_head[i, t, k] if dropout else v
            pred[:] = head_b
            matvec_add(pred, head_w_t, top_st[t])
            for o in range(n_out):
                p = pred[o] + base[i, t, o % n_targets] * residual[o % n_targets]
                wt = w[i, t, o]
                err = p - y[i, t, o]
                loss_i += wt * err * err
                dpred[t, o] = scale * wt * err
        total += loss_i / wsum[i]
        # ---- backward through time
        dh_rec[:] = 0.0
        dc_rec[:] = 0.0
        for t in range(length - 1, -1, -1):
            dh[:] = 0.0
            for o in range(n_out):
                d = dpred[t, o]
                if d != 0.0:
                    g_head_b[o] += d
                    row = head_w[o]
                    grow = g_head_w[o]
                    for k in range(hidden):
                        dh[k] += row[k] * d
                        grow[k] += d * top_st[t, k]
            if dropout:
                for k in range(hidden):
                    dh[k] *= drop_head[i, t, k]
            for layer in range(layers - 1, -1, -1):
                n_in = F if layer == 0 else hidden
                for k in range(hidden):
                    dh[k] += dh_rec[layer, k]
                o_ih, o_hh = offs[layer, 0], offs[layer, 1]
                r = first_row[i] + length - 1 - t
                layer_backward(cell, hidden, hprev_st[t, layer], cprev_st[t, layer],
                                cnew_st[t, layer], acts_st[t, layer], dh, dc_rec[layer],
                                theta[o_ih:o_ih + gates * n_in].reshape(gates, n_in),
                                theta[o_hh:o_hh + gates * hidden].reshape(gates, hidden),
                                dgi_all[layer, r], dgh_all[layer, r], layer > 0,
                                d_inp[:n_in], dh_prev, dc_prev)
                inp_all[layer, r, :n_in] = inp_st[t, layer, :n_in]
                hprev_all[layer, r] = hprev_st[t, layer]
                dh_rec[layer] = dh_prev
                if cell == LSTM:
                    dc_rec[layer] = dc_prev
                if layer > 0:
                    for k in range(hidden):
                        v = d_inp[k]
                        dh[k] = v * drop_layers[i, t, layer - 1, k] if dropout else v
    for layer in range(layers):
        n_in = F if layer == 0 else hidden
        o_ih, o_hh, o_bih, o_bhh = offs[layer, 0], offs[layer, 1], offs[layer, 2], \
            offs[layer, 3]
        _weight_gradients(dgi_all[layer], inp_all[layer, :, :n_in],
                          grad[o_ih:o_ih + gates * n_in].reshape(gates, n_in),
                          grad[o_bih:o_bih + gates])
        _weight_gradients(dgh_all[layer], hprev_all[layer],
                          grad[o_hh:o_hh + gates * hidden].reshape(gates, hidden),
                          grad[o_bhh:o_bhh + gates])
    return total / has


# ---------------------------------------------------------------------------- optimizers
@nb.njit(**_JIT)
def clip_gradients(grad: np.ndarray, max_norm: float) -> float:
    """Scale ``grad`` so that its L2 norm is at most ``max_norm`` (torch's
    ``clip_grad_norm_`` rule, coefficient ``max_norm / (norm + 1e-6)``); returns the norm
    before clipping (``nan``/``inf`` when a gradient is not finite; nothing is scaled)."""
    s = 0.0
    for k in range(grad.shape[0]):
        g = np.float64(grad[k])
        s += g * g
    norm = math.sqrt(s)
    if not math.isfinite(norm):
        return norm
    coef = max_norm / (norm + 1e-6)
    if coef < 1.0:
        c = np.float32(coef)
        for k in range(grad.shape[0]):
            grad[k] *= c
    return norm


@nb.njit(**_JIT)
def adam_step(theta: np.ndarray, grad: np.ndarray, exp_avg: np.ndarray,
              exp_avg_sq: np.ndarray, step: int, lr: float, beta1: float, beta2: float,
              eps: float, weight_decay: float, decoupled: bool) -> None:
    """One Adam (``decoupled``: AdamW) step on the flat vector, torch's formula; ``step``
    counts this step (1 for the first)."""
    bc1 = 1.0 - beta1 ** step
    bc2_sqrt = math.sqrt(1.0 - beta2 ** step)
    step_size = np.float32(lr / bc1)
    b1, b2 = np.float32(beta1), np.float32(beta2)
    one = np.float32(1.0)
    wd = np.float32(weight_decay)
    decay = np.float32(1.0 - lr * weight_decay)
    inv_bc2 = np.float32(bc2_sqrt)
    e = np.float32(eps)
    for k in range(theta.shape[0]):
        g = grad[k]
        p = theta[k]
        if weight_decay != 0.0:
            if decoupled:
                p = p * decay
            else:
                g = g + wd * p
        m = exp_avg[k] + (one - b1) * (g - exp_avg[k])
        v = exp_avg_sq[k] * b2 + (one - b2) * g * g
        exp_avg[k] = m
        exp_avg_sq[k] = v
        theta[k] = p - step_size * m / (np.sqrt(v) / inv_bc2 + e)


@nb.njit(**_JIT)
def sgd_step(theta: np.ndarray, grad: np.ndarray, lr: float, weight_decay: float) -> None:
    """Plain SGD (no momentum) with L2 weight decay, torch's formula."""
    a = np.float32(lr)
    wd = np.float32(weight_decay)
    for k in range(theta.shape[0]):
        theta[k] -= a * (grad[k] + wd * theta[k])
