"""TBPTT windows: each key's recent steps, and the windows captured for the next update.

A key's window falls due every ``k1`` of its trainable positions: when the last target of
position ``e`` arrives (``(e + 1) % k1 == 0``), the window runs the net over positions
``s..e`` (``s = max(0, e - k2 + 1)``) from the key's recurrent state before ``s`` and takes
the loss on the last ``k1`` of them, each horizon step against the value that arrived
there. So each (position, step) target is learned exactly once, and only after it arrived.

Per key the part keeps a ring of the last ``k2 + horizon`` steps' inputs, scaled targets
and target masks, and the recurrent state only where a window starts (every ``k1``
positions, a few of them live at a time). :func:`record_step` writes one step,
:func:`capture` copies a due window into the :class:`PendingWindows` of the next update.
"""

from __future__ import annotations

from typing import Any

import numba as nb
import numpy as np
import torch

from streamseq.state.table import SlotArrays

__all__ = ["WindowRings", "PendingWindows", "record_step", "capture", "is_window_start",
           "start_index", "to_half", "from_half"]


class WindowRings:
    """Per-key rings of recent steps and window start states.

    Parameters
    ----------
    k1, k2, horizon
        TBPTT cadence, window length and forecast steps.
    n_inputs, n_targets, layers, state_size
        Sizes of a step's inputs and targets and of a recurrent state.

    Inputs and start states are kept as float16 (the engine rounds a step's inputs to
    float16 before the model sees them, so a window replays exactly the inputs of its
    steps; a window starts from its state rounded to float16, ~5e-4 relative).

    Examples
    --------
    >>> w = WindowRings(4, 16, 1, 7, 1, 1, 64)
    >>> w.length, w.n_starts, w.arrays.nbytes_per_slot
    (17, 5, 983)
    """

    def __init__(self, k1: int, k2: int, horizon: int, n_inputs: int, n_targets: int,
                 layers: int, state_size: int) -> None:
        self.k1, self.k2, self.horizon = k1, k2, horizon
        self.length = k2 + horizon
        # live starts: those of windows not yet captured (a window is captured horizon
        # steps after its end, its start is k2 - 1 before the end)
        self.n_starts = (k2 + horizon - 1 + k1 - 1) // k1 + 1
        self.arrays = SlotArrays({
            "x": ((self.length, n_inputs), np.uint16, 0),  # float16 bits
            "y": ((self.length, n_targets), np.float32, 0.0),
            "mask": ((self.length, n_targets), np.bool_, False),
            "start_state": ((self.n_starts, layers, state_size), np.uint16, 0),  # float16
            "start_at": ((self.n_starts,), np.int32, -1),
        })


class PendingWindows:
    """Windows captured since the last update point, in stream order (preallocated).

    Shapes: inputs ``x [n, k2, F]``, targets ``y`` and loss weights ``w`` ``[n, k2, O]``
    (``O`` = horizon x targets, horizon-major), start states ``h0 [n, layers, state]``,
    valid ``lengths [n]`` and residual bases ``base [n, k2, targets]``.
    """

    def __init__(self, capacity: int, k2: int, n_inputs: int, horizon: int, n_targets: int,
                 layers: int, state_size: int) -> None:
        cap = max(capacity, 1)
        out = horizon * n_targets
        self.x = np.zeros((cap, k2, n_inputs), np.float32)
        self.y = np.zeros((cap, k2, out), np.float32)
        self.w = np.zeros((cap, k2, out), np.float32)
        self.h0 = np.zeros((cap, layers, state_size), np.float32)
        self.lengths = np.zeros(cap, np.int64)
        self.base = np.zeros((cap, k2, n_targets), np.float32)
        self.count = np.zeros(1, np.int64)

    def __len__(self) -> int:
        return int(self.count[0])

    def arrays(self) -> tuple[np.ndarray, ...]:
        return self.x, self.y, self.w, self.h0, self.lengths, self.base, self.count

    def view(self) -> tuple[np.ndarray, ...]:
        """The captured windows: ``x, y, w, h0, lengths, base``."""
        n = len(self)
        return (self.x[:n], self.y[:n], self.w[:n], self.h0[:n], self.lengths[:n],
                self.base[:n])

    def clear(self) -> None:
        self.count[0] = 0

    def state_dict(self) -> dict[str, Any]:
        return {"n": len(self), **{name: torch.from_numpy(a.copy()) for name, a in
                                   zip(("x", "y", "w", "h0", "lengths", "base"), self.view(),
                                       strict=True)}}

    def load_state_dict(self, d: dict[str, Any]) -> None:
        n = int(d["n"])
        if n > self.x.shape[0]:
            raise ValueError(f"{n} pending windows do not fit {self.x.shape[0]}")
        for name, a in zip(("x", "y", "w", "h0", "lengths", "base"), self.arrays(),
                           strict=False):
            a[:n] = d[name].numpy()
        self.count[0] = n


@nb.njit(cache=True, nogil=True)
def to_half(src: np.ndarray, dst: np.ndarray) -> None:
    """float32 -> float16 bits, rounding to nearest even (NaN/inf kept, no numba float16).

    >>> x = np.array([0.1, -2.5, 1e-6, 6e4, 3.0e-8], np.float32)
    >>> h = np.zeros(5, np.uint16); to_half(x, h)
    >>> bool((h == x.astype(np.float16).view(np.uint16)).all())
    True
    """
    bits = src.view(np.uint32)
    for k in range(src.shape[0]):
        f = np.int64(bits[k])
        sign = (f >> 16) & 0x8000
        a = f & 0x7FFFFFFF
        if a >= 0x47800000:  # beyond float16: inf, NaN stays NaN
            o = 0x7E00 if a > 0x7F800000 else 0x7C00
        elif a < 0x38800000:  # subnormal float16 (or zero): multiples of 2^-24
            o = np.int64(np.rint(abs(np.float64(src[k])) * 16777216.0))
        else:
            o = (a - 0x38000000 + 0xFFF + ((a >> 13) & 1)) >> 13
        dst[k] = np.uint16(o | sign)


@nb.njit(cache=True, nogil=True)
def from_half(src: np.ndarray, dst: np.ndarray) -> None:
    """float16 bits -> float32 (exact)."""
    bits = dst.view(np.uint32)
    for k in range(src.shape[0]):
        h = np.int64(src[k])
        sign = (h & 0x8000) << 16
        e = (h >> 10) & 0x1F
        m = h & 0x3FF
        if e == 0:
            v = np.float32(m * 5.960464477539063e-08)
            dst[k] = -v if sign else v
        elif e == 31:
            bits[k] = np.uint32(sign | 0x7F800000 | (m << 13))
        else:
            bits[k] = np.uint32(sign | ((e + 112) << 23) | (m << 13))


@nb.njit(inline="always", cache=True, nogil=True)
def is_window_start(position: int, k1: int, k2: int) -> bool:
    """Whether a window starts at ``position``: 0, or ``e - k2 + 1`` for a window end
    ``e`` with ``(e + 1) % k1 == 0``."""
    return position == 0 or (position + k2) % k1 == 0


@nb.njit(inline="always", cache=True, nogil=True)
def start_index(position: int, k1: int, n_starts: int) -> int:
    """Ring index of the start state kept for ``position`` (consecutive starts get
    consecutive indices)."""
    return ((position + k1 - 1) // k1) % n_starts


@nb.njit(cache=True, nogil=True)
def record_step(slot: int, position: int, x: np.ndarray, target: np.ndarray,
                mask: np.ndarray, state: np.ndarray, k1: int, k2: int,
                ring_x: np.ndarray, ring_y: np.ndarray, ring_mask: np.ndarray,
                start_state: np.ndarray, start_at: np.ndarray) -> None:
    """Keep step ``position`` of the key: inputs, scaled target, target mask and, where a
    window starts, the recurrent state before the step."""
    at = position % ring_x.shape[1]
    to_half(x, ring_x[slot, at])
    ring_y[slot, at] = target
    ring_mask[slot, at] = mask
    if is_window_start(position, k1, k2):
        k = start_index(position, k1, start_state.shape[1])
        for layer in range(state.shape[0]):
            to_half(state[layer], start_state[slot, k, layer])
        start_at[slot, k] = position


@nb.njit(cache=True, nogil=True)
def capture(slot: int, due: int, k1: int, k2: int, horizon: int, ring_x: np.ndarray,
            ring_y: np.ndarray, ring_mask: np.ndarray, start_state: np.ndarray,
            start_at: np.ndarray, px: np.ndarray, py: np.ndarray, pw: np.ndarray,
            ph0: np.ndarray, plengths: np.ndarray, pbase: np.ndarray,
            count: np.ndarray) -> None:
    """Copy the key's window ending at position ``due - 1`` into the pending windows."""
    length_ring = ring_x.shape[1]
    n_t = ring_y.shape[2]
    e = due - 1
    s = max(0, e - k2 + 1)
    length = e - s + 1
    learn_from = max(length - k1, 0)
    i = count[0]
    k = start_index(s, k1, start_state.shape[1])
    if start_at[slot, k] != s:
        raise RuntimeError("window start state overwritten (ring too short)")
    for layer in range(ph0.shape[1]):
        from_half(start_state[slot, k, layer], ph0[i, layer])
    plengths[i] = length
    for step in range(k2):
        if step >= length:
            px[i, step] = 0.0
            py[i, step] = 0.0
            pw[i, step] = 0.0
            pbase[i, step] = 0.0
            continue
        at = (s + step) % length_ring
        from_half(ring_x[slot, at], px[i, step])
        pbase[i, step] = ring_y[slot, at]
        learned = step >= learn_from
        for j in range(1, horizon + 1):
            tat = (s + step + j) % length_ring
            for c in range(n_t):
                o = (j - 1) * n_t + c
                py[i, step, o] = ring_y[slot, tat, c]
                pw[i, step, o] = 1.0 if (learned and ring_mask[slot, tat, c]) else 0.0
    count[0] = i + 1
