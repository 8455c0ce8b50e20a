"""The compiled kernels against torch, the model's reference (issue 11).

Forward outputs and states of one key's steps against ``nn.GRU``/``nn.LSTM``; the loss and
every parameter's gradient of a batch of TBPTT windows against torch autograd (GRU and
LSTM, stacked layers, ragged windows, dropout with the same masks); the optimizer steps
against ``torch.optim``; and the properties behind exact results: the matrix-vector
products and a key's whole step equal a plain column-by-column float32 loop bit for bit,
and a key's step is bit-identical whatever other keys share the call.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from streamseq.config import ModelConfig
from streamseq.learner.windows import from_half, to_half
from streamseq.models import RecurrentForecaster
from streamseq.models.kernels import (
    GRU,
    ParamLayout,
    _sigmoid,
    _tanh,
    adam_step,
    cell_step,
    clip_gradients,
    forecast_head,
    matvec_add,
    sgd_step,
    window_gradients,
)

torch.set_num_threads(1)


def _model(cell: str, layers: int, hidden: int = 8, inputs: int = 5, horizon: int = 2,
           targets: int = 2, dropout: float = 0.0, seed: int = 0) -> RecurrentForecaster:
    torch.manual_seed(seed)
    m = RecurrentForecaster(inputs, targets, ModelConfig(cell=cell, hidden=hidden,
                                                         layers=layers, horizon=horizon,
                                                         dropout=dropout),
                            residual_mask=[True, False][:targets])
    with torch.no_grad():  # a trained-looking head (it starts at zero)
        m.head.weight.normal_(0, 0.3)
        m.head.bias.normal_(0, 0.1)
    return m


def _flat(m: RecurrentForecaster) -> tuple[ParamLayout, np.ndarray, np.ndarray]:
    cfg = m.config
    lay = ParamLayout.build(cfg.cell, cfg.layers, cfg.hidden, m.n_inputs,
                            cfg.horizon * m.n_targets)
    theta = torch.cat([p.detach().flatten() for p in m.parameters()]).numpy().copy()
    assert theta.size == lay.size
    theta_t = np.zeros(lay.t_size, np.float32)
    lay.transpose(theta, theta_t)
    return lay, theta, theta_t


@pytest.mark.parametrize("cell, layers", [("gru", 1), ("gru", 2), ("lstm", 1), ("lstm", 3)])
def test_step_matches_torch_forward(cell: str, layers: int) -> None:
    m = _model(cell, layers)
    lay, theta, theta_t = _flat(m)
    rng = np.random.default_rng(1)
    x = rng.normal(size=(3, 20, 5)).astype(np.float32)
    base = rng.normal(size=(3, 20, 2)).astype(np.float32)
    s0 = (rng.normal(size=(layers, 3, m.state_size)) * 0.5).astype(np.float32)
    with torch.no_grad():
        ref_y, ref_s = m(torch.from_numpy(x), torch.from_numpy(s0), base=torch.from_numpy(base))
    scratch = np.zeros(16 * lay.hidden + 5, np.float32)
    out = np.zeros(lay.outputs, np.float32)
    resid = m.residual_mask.numpy()
    for b in range(3):
        state = np.ascontiguousarray(s0[:, b])
        for t in range(20):
            cell_step(lay.cell, lay.hidden, x[b, t], state, theta, theta_t, lay.offsets,
                      lay.t_offsets, scratch)
            forecast_head(state[-1, :lay.hidden], theta, theta_t, lay.head_offsets[0],
                          lay.head_t_offset, out)
            y = out.reshape(2, 2) + base[b, t] * resid
            np.testing.assert_allclose(y, ref_y[b, t].numpy(), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(state, ref_s[:, b].numpy(), rtol=1e-5, atol=1e-5)


def test_a_keys_step_does_not_depend_on_its_company() -> None:
    """The same key's step, alone or after other keys' steps: bit-identical."""
    m = _model("gru", 2, hidden=64, inputs=7)
    lay, theta, theta_t = _flat(m)
    rng = np.random.default_rng(2)
    xs = rng.normal(size=(50, 7)).astype(np.float32)
    scratch = np.zeros(16 * 64 + 7, np.float32)
    alone = np.zeros((2, 64), np.float32)
    for x in xs:
        cell_step(lay.cell, 64, x, alone, theta, theta_t, lay.offsets, lay.t_offsets, scratch)
    mixed = np.zeros((2, 64), np.float32)
    other = rng.normal(size=(2, 64)).astype(np.float32)
    for x in xs:
        cell_step(lay.cell, 64, -x, other, theta, theta_t, lay.offsets, lay.t_offsets, scratch)
        cell_step(lay.cell, 64, x, mixed, theta, theta_t, lay.offsets, lay.t_offsets, scratch)
    assert np.array_equal(alone, mixed)


def _matvec_reference(b: np.ndarray, w: np.ndarray, x: np.ndarray) -> np.ndarray:
    """``b + W x`` (``w`` in torch's ``[out, in]`` layout) as the plain loop: one column at a
    time in the order of ``k``, every product and sum rounded to float32."""
    acc = b.copy()
    for k in range(x.shape[0]):
        acc = acc + w[:, k] * x[k]
    return acc


@pytest.mark.parametrize("n_out, n_in", [(1, 1), (3, 2), (5, 3), (65, 4), (7, 5), (9, 7),
                                         (33, 13), (192, 64), (65, 112), (448, 32)])
def test_matvec_is_the_plain_loop_bit_for_bit(n_out: int, n_in: int) -> None:
    """The compiled product (unrolled over the inputs) adds each output's terms in the
    plain loop's order: no sum reassociated, whatever the shape or the unroll's remainder."""
    rng = np.random.default_rng(n_out * 1000 + n_in)
    for _ in range(5):
        # magnitudes over six decades: a reassociated sum would change the last bits
        w = (rng.normal(size=(n_out, n_in)) * 10.0 ** rng.integers(-3, 3, size=(n_out, n_in))
             ).astype(np.float32)
        x = (rng.normal(size=n_in) * 10.0 ** rng.integers(-3, 3, size=n_in)).astype(np.float32)
        b = rng.normal(size=n_out).astype(np.float32)
        w_t = np.ascontiguousarray(w.T)
        out = b.copy()
        matvec_add(out, w_t, x)
        assert np.array_equal(out.view(np.uint32), _matvec_reference(b, w, x).view(np.uint32))
        first = b[:(n_out + 1) // 2].copy()  # the first outputs only (the LM's known ids)
        matvec_add(first, w_t, x)
        assert np.array_equal(first, out[:first.shape[0]])
        theta = np.concatenate([w.ravel(), b])  # the forecast head is the same product
        forecast_head(x, theta, w_t.ravel(), 0, 0, out)
        assert np.array_equal(out.view(np.uint32), _matvec_reference(b, w, x).view(np.uint32))


def _cell_reference(lay: ParamLayout, theta: np.ndarray, x: np.ndarray,
                    state: np.ndarray) -> np.ndarray:
    """One step of every layer from :func:`_matvec_reference` and the kernels' scalar
    activations, in numpy float32."""
    hd, gates = lay.hidden, lay.gates
    tanh = np.vectorize(lambda v: np.float32(_tanh(np.float32(v))), otypes=[np.float32])
    sig = np.vectorize(lambda v: np.float32(_sigmoid(np.float32(v))), otypes=[np.float32])
    new = state.copy()
    inp = x
    for layer in range(lay.layers):
        o = lay.offsets[layer]
        n_in = inp.shape[0]
        gi = _matvec_reference(theta[o[2]:o[2] + gates],
                               theta[o[0]:o[0] + gates * n_in].reshape(gates, n_in), inp)
        h = state[layer, :hd]
        gh = _matvec_reference(theta[o[3]:o[3] + gates],
                               theta[o[1]:o[1] + gates * hd].reshape(gates, hd), h)
        if lay.cell == GRU:
            r = sig(gi[:hd] + gh[:hd])
            z = sig(gi[hd:2 * hd] + gh[hd:2 * hd])
            n = tanh(gi[2 * hd:] + r * gh[2 * hd:])
            new[layer] = (np.float32(1.0) - z) * n + z * h
        else:
            i = sig(gi[:hd] + gh[:hd])
            f = sig(gi[hd:2 * hd] + gh[hd:2 * hd])
            g = tanh(gi[2 * hd:3 * hd] + gh[2 * hd:3 * hd])
            og = sig(gi[3 * hd:] + gh[3 * hd:])
            c = f * state[layer, hd:] + i * g
            new[layer, hd:] = c
            new[layer, :hd] = og * tanh(c)
        inp = new[layer, :hd]
    return new


@pytest.mark.parametrize("cell, layers, hidden, inputs",
                         [("gru", 1, 64, 7), ("gru", 2, 10, 3), ("lstm", 1, 112, 32),
                          ("lstm", 2, 9, 6)])
def test_step_is_the_plain_loop_bit_for_bit(cell: str, layers: int, hidden: int,
                                            inputs: int) -> None:
    """A key's step (the engine's GRU 64 on 7 inputs, the language model's LSTM 112 on a
    32-wide embedding, and odd sizes) equals the reference step bit for bit."""
    m = _model(cell, layers, hidden=hidden, inputs=inputs)
    lay, theta, theta_t = _flat(m)
    rng = np.random.default_rng(3)
    state = (rng.normal(size=(layers, m.state_size)) * 0.5).astype(np.float32)
    scratch = np.zeros(16 * hidden + inputs, np.float32)
    for _ in range(4):
        x = rng.normal(size=inputs).astype(np.float32)
        expect = _cell_reference(lay, theta, x, state)
        cell_step(lay.cell, hidden, x, state, theta, theta_t, lay.offsets, lay.t_offsets,
                  scratch)
        assert np.array_equal(state.view(np.uint32), expect.view(np.uint32))


def _torch_windows(m: RecurrentForecaster, x: np.ndarray, y: np.ndarray, w: np.ndarray,
                   h0: np.ndarray, lengths: np.ndarray, base: np.ndarray,
                   drop_layers: np.ndarray | None, drop_head: np.ndarray | None
                   ) -> tuple[float, np.ndarray]:
    """Loss and flat gradient by torch autograd. Without dropout: the module's own forward
    (nn.GRU/nn.LSTM, packed for ragged windows); with dropout: the same cells step by step
    with the given masks (nn.GRU cannot take masks)."""
    m.zero_grad(set_to_none=True)
    n, steps, _ = x.shape
    cfg = m.config
    hd = cfg.hidden
    xt = torch.from_numpy(x)
    if drop_layers is None:
        state = torch.from_numpy(h0).permute(1, 0, 2).contiguous()
        lens = torch.from_numpy(lengths)
        pred, _ = m(xt, state, lens, base=torch.from_numpy(base))
        pred = pred.flatten(2)
    else:
        rnn = m.rnn
        preds = []
        state = [[torch.from_numpy(h0[:, layer, :hd].copy()),
                  torch.from_numpy(h0[:, layer, hd:].copy())] for layer in range(cfg.layers)]
        for t in range(steps):
            inp = xt[:, t]
            for layer in range(cfg.layers):
                args = [getattr(rnn, f"{p}_l{layer}") for p in
                        ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
                if cfg.cell == "lstm":
                    h, c = torch.lstm_cell(inp, (state[layer][0], state[layer][1]), *args)
                    state[layer] = [h, c]
                else:
                    h = torch.gru_cell(inp, state[layer][0], *args)
                    state[layer] = [h, state[layer][1]]
                inp = h * torch.from_numpy(drop_layers[:, t, layer]) if (
                    layer + 1 < cfg.layers) else h
            top = inp * torch.from_numpy(drop_head[:, t])
            delta = m.head(top)
            preds.append(delta + (torch.from_numpy(base[:, t]) * m.residual_mask).repeat(
                1, cfg.horizon))
        pred = torch.stack(preds, 1)
    wt = torch.from_numpy(w)
    sq = (pred - torch.from_numpy(y)).pow(2) * wt
    per = sq.flatten(1).sum(1) / wt.flatten(1).sum(1).clamp_min(1e-12)
    has = wt.flatten(1).sum(1) > 0
    loss = per[has].mean()
    loss.backward()
    return float(loss.detach()), torch.cat([p.grad.flatten() for p in m.parameters()]).numpy()


@pytest.mark.parametrize("cell, layers, dropout", [
    ("gru", 1, 0.0), ("lstm", 1, 0.0), ("gru", 2, 0.0), ("lstm", 2, 0.0),
    ("gru", 2, 0.3), ("lstm", 2, 0.3)])
def test_window_gradients_match_torch_autograd(cell: str, layers: int, dropout: float) -> None:
    m = _model(cell, layers, dropout=dropout)
    lay, theta, theta_t = _flat(m)
    rng = np.random.default_rng(3)
    n, steps, out = 5, 9, lay.outputs
    x = rng.normal(size=(n, steps, 5)).astype(np.float32)
    y = rng.normal(size=(n, steps, out)).astype(np.float32)
    lengths = np.array([9, 4, 9, 1, 6], dtype=np.int64)
    w = (rng.random((n, steps, out)) > 0.3).astype(np.float32)
    w *= (np.arange(steps)[None, :, None] < lengths[:, None, None])
    w[2] = 0.0  # a window without any target: not in the mean
    h0 = (rng.normal(size=(n, layers, m.state_size)) * 0.5).astype(np.float32)
    base = rng.normal(size=(n, steps, 2)).astype(np.float32)
    if dropout:
        keep = 1.0 - dropout
        drop_layers = ((rng.random((n, steps, layers, 8)) < keep) / keep).astype(np.float32)
        drop_head = ((rng.random((n, steps, 8)) < keep) / keep).astype(np.float32)
    else:
        drop_layers = np.zeros((0, 0, 0, 0), np.float32)
        drop_head = np.zeros((0, 0, 0), np.float32)
    grad = np.zeros(lay.size, np.float32)
    loss = window_gradients(lay.cell, lay.hidden, x, y, w, h0, lengths, base,
                            m.residual_mask.numpy(), theta, theta_t, lay.offsets,
                            lay.t_offsets, lay.head_offsets[0], lay.head_t_offset,
                            drop_layers, drop_head, grad)
    ref_loss, ref_grad = _torch_windows(m, x, y, w, h0, lengths, base,
                                        drop_layers if dropout else None,
                                        drop_head if dropout else None)
    assert loss == pytest.approx(ref_loss, rel=1e-5)
    np.testing.assert_allclose(grad, ref_grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", ["adam", "adamw", "sgd"])
def test_optimizer_steps_match_torch(name: str) -> None:
    rng = np.random.default_rng(4)
    theta = rng.normal(size=300).astype(np.float32)
    p = torch.nn.Parameter(torch.from_numpy(theta.copy()))
    opt = {"adam": lambda: torch.optim.Adam([p], lr=1e-2, weight_decay=1e-3),
           "adamw": lambda: torch.optim.AdamW([p], lr=1e-2, weight_decay=1e-2),
           "sgd": lambda: torch.optim.SGD([p], lr=1e-2, weight_decay=1e-3)}[name]()
    m, v = np.zeros_like(theta), np.zeros_like(theta)
    for step in range(1, 30):
        g = rng.normal(size=300).astype(np.float32) * 3
        p.grad = torch.from_numpy(g.copy())
        torch.nn.utils.clip_grad_norm_([p], 10.0)
        opt.step()
        norm = clip_gradients(g, 10.0)
        assert norm == pytest.approx(float(np.linalg.norm(g.astype(np.float64))) if norm <= 10
                                     else norm)
        if name == "sgd":
            sgd_step(theta, g, 1e-2, 1e-3)
        else:
            adam_step(theta, g, m, v, step, 1e-2, 0.9, 0.999, 1e-8,
                      1e-2 if name == "adamw" else 1e-3, name == "adamw")
    np.testing.assert_allclose(theta, p.detach().numpy(), rtol=1e-5, atol=1e-6)


def test_float16_storage_matches_numpy() -> None:
    """Window inputs and start states are stored as float16 bits (numba has no float16):
    the conversion rounds as numpy does, subnormals, overflow and NaN included."""
    rng = np.random.default_rng(5)
    x = np.concatenate([rng.normal(size=5000) * 10.0 ** rng.integers(-9, 6, size=5000),
                        [0.0, -0.0, 65504.0, 65520.0, 1e9, -1e9, np.inf, 6.1e-5, 5.9e-8]]
                       ).astype(np.float32)
    bits = np.zeros(x.size, np.uint16)
    with np.errstate(over="ignore"):
        expect = x.astype(np.float16)
    to_half(x, bits)
    assert np.array_equal(bits, expect.view(np.uint16))
    back = np.zeros(x.size, np.float32)
    from_half(bits, back)
    assert np.array_equal(back, expect.astype(np.float32))
    nan = np.array([np.nan], np.float32)
    to_half(nan, bits[:1])
    assert np.isnan(bits[:1].view(np.float16)).all()


def test_clip_reports_a_non_finite_norm_and_leaves_gradients() -> None:
    g = np.array([1.0, np.nan], np.float32)
    assert np.isnan(clip_gradients(g, 1.0)) and g[0] == 1.0
