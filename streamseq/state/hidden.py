"""The hidden-state table: one slot per live key, holding its recurrent state and every
other per-key array (scaler statistics, ring buffers, pending forecasts, metrics).

Slots are reused after eviction. Eviction is by idle time (on event time) and by count
(least recently seen first), and only happens when the engine asks, at update points, so it
is a function of the stream.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch

__all__ = ["HiddenStateTable"]


class HiddenStateTable:
    """Per-key slots: a torch state tensor ``[layers, capacity, state_size]`` plus named numpy
    arrays whose first axis is the slot.

    Parameters
    ----------
    layers, state_size
        Shape of one key's recurrent state (``state_size`` = hidden, or 2 x hidden for LSTM).
    arrays
        ``name -> (shape_tail, dtype, fill)`` for the other per-key arrays.

    Examples
    --------
    >>> t = HiddenStateTable(1, 4, {"n": ((), np.int64, 0)}, capacity=2)
    >>> t.slots_for(["a", "b", "c"]).tolist(), len(t), t.capacity
    ([0, 1, 2], 3, 4)
    >>> t.arrays["n"][t.slots_for(["b"])] += 1
    >>> t.evict([t.keys["a"]])
    ['a']
    >>> sorted(t.keys), t.arrays["n"].tolist()[:3]
    (['b', 'c'], [0, 1, 0])
    >>> t.slots_for(["d"]).tolist()  # slot of the evicted key is reused
    [0]
    """

    def __init__(self, layers: int, state_size: int,
                 arrays: dict[str, tuple[tuple[int, ...], Any, float]],
                 capacity: int = 64) -> None:
        self.layers = layers
        self.state_size = state_size
        self.specs = dict(arrays)
        self.capacity = capacity
        self.keys: dict[str, int] = {}
        self.slot_keys: list[str | None] = [None] * capacity
        self.free: list[int] = list(range(capacity - 1, -1, -1))
        self.state = torch.zeros(layers, capacity, state_size)
        self.arrays: dict[str, np.ndarray] = {
            name: np.full((capacity, *tail), fill, dtype=dtype)
            for name, (tail, dtype, fill) in self.specs.items()
        }
        self.last_seen = np.zeros(capacity, dtype=np.int64)  # stream sequence number
        self.last_ts = np.full(capacity, np.iinfo(np.int64).min, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.keys)

    def _grow(self, need: int) -> None:
        new_cap = self.capacity
        while new_cap < need:
            new_cap *= 2
        if new_cap == self.capacity:
            return
        extra = new_cap - self.capacity
        self.state = torch.cat([self.state, torch.zeros(self.layers, extra, self.state_size)], 1)
        for name, (tail, dtype, fill) in self.specs.items():
            self.arrays[name] = np.concatenate(
                [self.arrays[name], np.full((extra, *tail), fill, dtype=dtype)])
        self.last_seen = np.concatenate([self.last_seen, np.zeros(extra, dtype=np.int64)])
        self.last_ts = np.concatenate(
            [self.last_ts, np.full(extra, np.iinfo(np.int64).min, dtype=np.int64)])
        self.slot_keys.extend([None] * extra)
        self.free = list(range(new_cap - 1, self.capacity - 1, -1)) + self.free
        self.capacity = new_cap

    def slots_for(self, keys: Iterable[str]) -> np.ndarray:
        """Slots of ``keys``, allocating fresh (zeroed) slots for new keys."""
        out = []
        for key in keys:
            slot = self.keys.get(key)
            if slot is None:
                if not self.free:
                    self._grow(self.capacity + 1)
                slot = self.free.pop()
                self.keys[key] = slot
                self.slot_keys[slot] = key
            out.append(slot)
        return np.asarray(out, dtype=np.int64)

    def reset(self, slots: Sequence[int] | np.ndarray, state_only: bool = False) -> None:
        """Zero the recurrent state (and, unless ``state_only``, every array) of ``slots``."""
        idx = np.asarray(slots, dtype=np.int64)
        if idx.size == 0:
            return
        self.state[:, torch.from_numpy(idx)] = 0.0
        if state_only:
            return
        for name, (_tail, _dtype, fill) in self.specs.items():
            self.arrays[name][idx] = fill
        self.last_seen[idx] = 0
        self.last_ts[idx] = np.iinfo(np.int64).min

    def evict(self, slots: Sequence[int] | np.ndarray) -> list[str]:
        """Drop the keys in ``slots``; returns their names."""
        idx = np.asarray(slots, dtype=np.int64)
        self.reset(idx)
        gone = []
        for s in idx.tolist():
            key = self.slot_keys[s]
            if key is not None:
                del self.keys[key]
                self.slot_keys[s] = None
                self.free.append(s)
                gone.append(key)
        return gone

    def eviction_candidates(self, max_keys: int, idle_ttl_ms: int | None,
                            now_ts: int) -> np.ndarray:
        """Slots to evict: idle longer than the TTL, then least recently seen over the cap."""
        live = np.fromiter(self.keys.values(), dtype=np.int64, count=len(self.keys))
        if live.size == 0:
            return live
        drop = np.zeros(live.size, dtype=bool)
        if idle_ttl_ms is not None:
            drop |= (now_ts - self.last_ts[live]) > idle_ttl_ms
        over = int((~drop).sum()) - max_keys
        if over > 0:
            keep = live[~drop]
            order = np.lexsort((keep, self.last_seen[keep]))  # oldest first, ties by slot
            drop_extra = keep[order[:over]]
            return np.sort(np.concatenate([live[drop], drop_extra]))
        return np.sort(live[drop])

    def nbytes(self) -> int:
        """Memory held by the table (state tensor and arrays), in bytes."""
        total = self.state.numel() * self.state.element_size()
        return total + sum(a.nbytes for a in self.arrays.values()) + 16 * self.capacity

    # -- persistence ------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        live = [(k, s) for k, s in self.keys.items()]
        return {
            "capacity": self.capacity,
            "keys": [k for k, _ in live],
            "slots": torch.tensor([s for _, s in live], dtype=torch.int64),
            "free": torch.tensor(self.free, dtype=torch.int64),
            "state": self.state.clone(),
            "last_seen": torch.from_numpy(self.last_seen.copy()),
            "last_ts": torch.from_numpy(self.last_ts.copy()),
            "arrays": {n: torch.from_numpy(a.copy()) for n, a in self.arrays.items()},
        }

    def load_state_dict(self, d: dict[str, Any]) -> None:
        cap = int(d["capacity"])
        self.capacity = cap
        self.state = d["state"].clone()
        self.last_seen = d["last_seen"].numpy().copy()
        self.last_ts = d["last_ts"].numpy().copy()
        self.arrays = {n: d["arrays"][n].numpy().copy() for n in self.specs}
        self.keys = dict(zip(d["keys"], d["slots"].tolist(), strict=True))
        self.slot_keys = [None] * cap
        for k, s in self.keys.items():
            self.slot_keys[s] = k
        self.free = d["free"].tolist()
