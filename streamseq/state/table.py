"""Per-key slots: the key table and the per-key arrays of each part of the engine.

Every part that keeps something per key (features: scaler statistics; scoring: pending
forecasts and error sums; windows: the TBPTT rings; ordering: recent events) owns a
:class:`SlotArrays` and attaches it to the :class:`KeyTable`, which grows, resets, snapshots
and evicts them all together. A slot is a row index shared by all of them.

Eviction is by idle time (on event time) and by count (least recently seen first), and
happens only when the engine asks, at update points, so it is a function of the stream.

The table marks the slots whose rows changed since :meth:`KeyTable.clear_changes` (the
engine marks the slots a poll wrote; taking, resetting and evicting a slot mark it), so a
checkpoint can save only those rows (``state_dict(changed_only=True)``) and
:func:`merge_changes` rebuilds the complete state from the previous one.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch

__all__ = ["SlotArrays", "KeyTable", "merge_changes"]

_NEVER = np.iinfo(np.int64).min


class SlotArrays:
    """Named numpy arrays whose first axis is the key slot.

    Parameters
    ----------
    specs
        ``name -> (shape after the slot axis, dtype, fill value of a fresh slot)``.
    capacity
        Initial number of slots.

    Examples
    --------
    >>> a = SlotArrays({"count": ((), np.int64, 0), "sum": ((2,), np.float64, 0.5)}, 2)
    >>> a["sum"][1] += 1.0
    >>> a.grow(4); a["sum"].tolist()
    [[0.5, 0.5], [1.5, 1.5], [0.5, 0.5], [0.5, 0.5]]
    >>> a.reset([1]); a["sum"][1].tolist(), a.nbytes_per_slot
    ([0.5, 0.5], 24)
    """

    def __init__(self, specs: dict[str, tuple[tuple[int, ...], Any, Any]],
                 capacity: int = 0) -> None:
        self.specs = dict(specs)
        self.capacity = capacity
        self.arrays: dict[str, np.ndarray] = {
            name: np.full((capacity, *tail), fill, dtype=dtype)
            for name, (tail, dtype, fill) in self.specs.items()}

    def __getitem__(self, name: str) -> np.ndarray:
        return self.arrays[name]

    def __iter__(self) -> Any:
        return iter(self.arrays)

    def grow(self, capacity: int) -> None:
        """Make room for ``capacity`` slots (new slots are fresh)."""
        extra = capacity - self.capacity
        if extra <= 0:
            return
        for name, (tail, dtype, fill) in self.specs.items():
            old = self.arrays[name]
            new = np.empty((capacity, *tail), dtype=dtype)
            new[:self.capacity] = old
            new[self.capacity:] = fill
            self.arrays[name] = new
        self.capacity = capacity

    def reset(self, slots: Sequence[int] | np.ndarray) -> None:
        """Return ``slots`` to the fresh state."""
        idx = np.asarray(slots, dtype=np.int64)
        for name, (_tail, _dtype, fill) in self.specs.items():
            self.arrays[name][idx] = fill

    def row_copy(self, slot: int | None) -> dict[str, np.ndarray]:
        """One-row copies ``[1, ...]`` of ``slot``'s arrays (a fresh slot's when ``None``)."""
        if slot is None:
            return {name: np.full((1, *tail), fill, dtype=dtype)
                    for name, (tail, dtype, fill) in self.specs.items()}
        return {name: a[slot:slot + 1].copy() for name, a in self.arrays.items()}

    @property
    def nbytes_per_slot(self) -> int:
        return sum(int(np.prod(tail, dtype=np.int64)) * np.dtype(dtype).itemsize
                   for tail, dtype, _ in self.specs.values())

    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.arrays.values())

    def state_dict(self, slots: np.ndarray) -> dict[str, torch.Tensor]:
        """The rows of ``slots`` (in that order) as tensors."""
        return {n: torch.from_numpy(np.ascontiguousarray(a[slots])) for n, a in
                self.arrays.items()}

    def load_rows(self, slots: np.ndarray, d: dict[str, torch.Tensor]) -> None:
        for name in self.specs:
            self.arrays[name][slots] = d[name].numpy()


class KeyTable:
    """Live keys and their slots; holds the recurrent state of every key.

    Parameters
    ----------
    layers, state_size
        Shape of one key's recurrent state (``state_size`` = hidden, or 2 x hidden for LSTM).
    capacity
        Initial number of slots (doubles when full).

    Attributes
    ----------
    hidden
        ``[capacity, layers, state_size]`` float32: each key's recurrent state, contiguous.
    core
        The table's own per-key arrays: ``count`` (events applied), ``newest_ts`` (newest
        event time applied), ``last_seen`` (stream sequence number of the last one).
    changed
        ``[capacity + 1]`` bool: the slot's rows may differ from the last snapshot taken
        (set by :meth:`mark_changed`, :meth:`slots_for`, :meth:`register`, :meth:`reset`,
        :meth:`evict`; cleared by :meth:`clear_changes`). The extra last entry takes the
        ``-1`` of keys without a slot (one indexing per poll, no masking) and means nothing.

    Examples
    --------
    >>> t = KeyTable(1, 4, capacity=2)
    >>> t.slots_for(["a", "b", "c"]).tolist(), len(t), t.capacity
    ([0, 1, 2], 3, 4)
    >>> t.core["count"][t.slots_for(["b"])] += 1
    >>> t.evict([t.keys["a"]])
    ['a']
    >>> sorted(t.keys), t.core["count"].tolist()[:3]
    (['b', 'c'], [0, 1, 0])
    >>> t.slots_for(["d"]).tolist()  # slot of the evicted key is reused
    [0]
    >>> t.clear_changes(); t.mark_changed(np.array([2, -1])); t.changed_slots().tolist()
    [2]
    >>> full = t.state_dict(); t.clear_changes()
    >>> gone = t.evict([t.keys["b"]]); t.hidden[t.slots_for(["c", "e"])] += 1.0
    >>> delta = t.state_dict(changed_only=True)  # "e" took the slot "b" left
    >>> delta["changed"].tolist(), delta["keys"]
    ([1, 2], ['e', 'c'])
    >>> merged, now = merge_changes(full, [delta]), t.state_dict()
    >>> merged["keys"] == now["keys"] and all(torch.equal(merged[n], now[n])
    ...                                       for n in ("slots", "free", "hidden"))
    True
    """

    def __init__(self, layers: int, state_size: int, capacity: int = 64) -> None:
        self.layers = layers
        self.state_size = state_size
        self.capacity = 0
        self.keys: dict[str, int] = {}
        self.slot_keys: list[str | None] = []
        self.free = np.zeros(0, dtype=np.int64)  # a stack: next free slot at free[n_free - 1]
        self.n_free = 0
        self.hidden = np.zeros((0, layers, state_size), dtype=np.float32)
        self.changed = np.zeros(1, dtype=np.bool_)
        self.core = SlotArrays({"count": ((), np.int64, 0),
                                "newest_ts": ((), np.int64, _NEVER),
                                "last_seen": ((), np.int64, 0)})
        self.parts: dict[str, SlotArrays] = {}
        self.generation = 0  # changes whenever the arrays are replaced (grow, load)
        self.grow(capacity)

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def state(self) -> torch.Tensor:
        """The hidden states as a tensor ``[capacity, layers, state_size]`` (shared memory)."""
        return torch.from_numpy(self.hidden)

    def attach(self, name: str, arrays: SlotArrays) -> SlotArrays:
        """Give a part's per-key arrays to the table: grown, reset and saved with it."""
        arrays.grow(self.capacity)
        self.parts[name] = arrays
        return arrays

    def grow(self, need: int) -> None:
        """Make room for at least ``need`` slots (doubling)."""
        new_cap = max(self.capacity, 1)
        while new_cap < need:
            new_cap *= 2
        if new_cap <= self.capacity:
            return
        old = self.capacity
        hidden = np.zeros((new_cap, self.layers, self.state_size), dtype=np.float32)
        hidden[:old] = self.hidden
        self.hidden = hidden
        changed = np.zeros(new_cap + 1, dtype=np.bool_)  # fresh slots hold nothing new yet
        changed[:old] = self.changed[:old]
        self.changed = changed
        self.core.grow(new_cap)
        for part in self.parts.values():
            part.grow(new_cap)
        self.slot_keys.extend([None] * (new_cap - old))
        # fresh slots are handed out lowest first, after those already free
        fresh = np.arange(new_cap - 1, old - 1, -1, dtype=np.int64)
        free = np.empty(new_cap, dtype=np.int64)  # fixed size: a stack of n_free entries
        free[:fresh.size] = fresh
        free[fresh.size:fresh.size + self.n_free] = self.free[:self.n_free]
        self.free = free
        self.n_free += fresh.size
        self.capacity = new_cap
        self.generation += 1

    def register(self, keys: Sequence[str], slots: np.ndarray) -> None:
        """Record slots taken from the free stack (by a compiled planner) for ``keys``."""
        for key, slot in zip(keys, slots.tolist(), strict=True):
            self.keys[key] = slot
            self.slot_keys[slot] = key
        self.changed[slots] = True

    def slots_for(self, keys: Iterable[str]) -> np.ndarray:
        """Slots of ``keys``, allocating fresh slots for new keys."""
        out = []
        for key in keys:
            slot = self.keys.get(key)
            if slot is None:
                if self.n_free == 0:
                    self.grow(self.capacity + 1)
                self.n_free -= 1
                slot = int(self.free[self.n_free])
                self.keys[key] = slot
                self.slot_keys[slot] = key
            out.append(slot)
        slots = np.asarray(out, dtype=np.int64)
        self.changed[slots] = True  # the caller writes their rows
        return slots

    def mark_changed(self, slots: np.ndarray) -> None:
        """Note that the rows of ``slots`` were written (``-1`` entries are ignored)."""
        self.changed[slots] = True

    def changed_slots(self) -> np.ndarray:
        """The slots changed since :meth:`clear_changes`, in order."""
        return np.flatnonzero(self.changed[:self.capacity])

    def clear_changes(self) -> None:
        """A snapshot was taken: changes from now on are relative to it."""
        self.changed[:] = False

    def changed_share(self) -> float:
        """Slots changed per live key: the size of a ``changed_only`` snapshot's rows
        against a complete one's."""
        return int(np.count_nonzero(self.changed[:self.capacity])) / max(len(self.keys), 1)

    def live_slots(self) -> np.ndarray:
        return np.fromiter(self.keys.values(), dtype=np.int64, count=len(self.keys))

    def reset(self, slots: Sequence[int] | np.ndarray, state_only: bool = False) -> None:
        """Zero the recurrent state (and, unless ``state_only``, every per-key array)."""
        idx = np.asarray(slots, dtype=np.int64)
        if idx.size == 0:
            return
        self.hidden[idx] = 0.0
        self.changed[idx] = True
        if state_only:
            return
        self.core.reset(idx)
        for part in self.parts.values():
            part.reset(idx)

    def evict(self, slots: Sequence[int] | np.ndarray) -> list[str]:
        """Drop the keys in ``slots``; returns their names."""
        idx = np.asarray(slots, dtype=np.int64)
        self.reset(idx)
        gone = []
        freed = []
        for s in idx.tolist():
            key = self.slot_keys[s]
            if key is not None:
                del self.keys[key]
                self.slot_keys[s] = None
                freed.append(s)
                gone.append(key)
        if freed:
            self.free[self.n_free:self.n_free + len(freed)] = freed[::-1]
            self.n_free += len(freed)
        return gone

    def eviction_candidates(self, max_keys: int, idle_ttl_ms: int | None,
                            now_ts: int) -> np.ndarray:
        """Slots to evict: idle longer than the TTL, then least recently seen over the cap."""
        if idle_ttl_ms is None and len(self.keys) <= max_keys:
            return np.zeros(0, dtype=np.int64)
        live = self.live_slots()
        if live.size == 0:
            return live
        drop = np.zeros(live.size, dtype=bool)
        if idle_ttl_ms is not None:
            drop |= (now_ts - self.core["newest_ts"][live]) > idle_ttl_ms
        over = int((~drop).sum()) - max_keys
        if over > 0:
            keep = live[~drop]
            order = np.lexsort((keep, self.core["last_seen"][keep]))  # oldest first, ties by slot
            return np.sort(np.concatenate([live[drop], keep[order[:over]]]))
        return np.sort(live[drop])

    def nbytes(self) -> int:
        """Memory of the per-key arrays (hidden states, every part's arrays, free stack)."""
        return (self.hidden.nbytes + self.core.nbytes() + self.free.nbytes + 8 * self.capacity
                + sum(p.nbytes() for p in self.parts.values()))

    def bytes_per_key(self) -> int:
        """Array bytes one slot costs (without the key's string and dict entry)."""
        return (self.layers * self.state_size * 4 + self.core.nbytes_per_slot + 16
                + sum(p.nbytes_per_slot for p in self.parts.values()))

    # -- persistence: only live rows are saved, in slot order -------------------------
    def state_dict(self, changed_only: bool = False) -> dict[str, Any]:
        """The live keys' rows in slot order, the free stack and the capacity; with
        ``changed_only``, only the rows of the slots changed since :meth:`clear_changes`
        (``changed`` lists those slots, live or freed since; ``rows`` is ``"changed"``):
        :func:`merge_changes` applies it to the complete state it follows."""
        if changed_only:
            changed = self.changed_slots()
            live = changed[[self.slot_keys[s] is not None for s in changed.tolist()]] \
                if changed.size else changed
        else:
            live = np.sort(self.live_slots())
        d = {
            "capacity": self.capacity,
            "keys": [self.slot_keys[s] for s in live.tolist()],
            "slots": torch.from_numpy(live),
            "free": torch.from_numpy(self.free[:self.n_free].copy()),
            "hidden": torch.from_numpy(self.hidden[live]),
            "core": self.core.state_dict(live),
            "parts": {name: p.state_dict(live) for name, p in self.parts.items()},
        }
        if changed_only:
            d["rows"] = "changed"
            d["changed"] = torch.from_numpy(changed)
        return d

    def load_state_dict(self, d: dict[str, Any]) -> None:
        cap = int(d["capacity"])
        self.capacity = 0
        self.keys, self.slot_keys = {}, []
        self.hidden = np.zeros((0, self.layers, self.state_size), dtype=np.float32)
        self.changed = np.zeros(1, dtype=np.bool_)
        self.core.capacity = 0
        self.core.arrays = {n: a[:0] for n, a in self.core.arrays.items()}
        for part in self.parts.values():
            part.capacity = 0
            part.arrays = {n: a[:0] for n, a in part.arrays.items()}
        self.free, self.n_free = np.zeros(0, dtype=np.int64), 0
        self.grow(cap)
        slots = d["slots"].numpy()
        self.hidden[slots] = d["hidden"].numpy()
        self.core.load_rows(slots, d["core"])
        for name, part in self.parts.items():
            if name in d["parts"]:  # a part added since the snapshot starts its keys fresh
                part.load_rows(slots, d["parts"][name])
        self.register(list(d["keys"]), slots)
        free = d["free"].numpy()
        self.free[:free.size] = free
        self.n_free = free.size
        self.changed[:] = True  # nothing is known about the snapshots that follow


def merge_changes(full: dict[str, Any], changes: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The complete table state after ``changes`` (``state_dict(changed_only=True)``, oldest
    first, each taken right after the one before) on top of ``full`` (a complete
    ``state_dict()``): equal to the ``state_dict()`` the table gave when the last of
    ``changes`` was taken.

    One pass whatever the chain's length: every row is placed by slot into arrays of the
    final capacity (the complete state's rows, then each delta's over them, a changed slot
    that is no longer live leaving its key), then the live slots are read out in order.
    """
    last = changes[-1]
    capacity = int(last["capacity"])
    live = np.zeros(capacity, dtype=np.bool_)
    key_of: list[str | None] = [None] * capacity
    layers = [full, *changes]

    def place(d: dict[str, Any]) -> np.ndarray:
        slots = d["slots"].numpy()
        live[slots] = True
        for slot, key in zip(slots.tolist(), d["keys"], strict=True):
            key_of[slot] = key
        return slots

    placed = [place(full)]
    for d in changes:
        gone = d["changed"].numpy()
        live[gone] = False
        placed.append(place(d))
    order = np.flatnonzero(live)

    def rows(get: Any) -> torch.Tensor:
        first = get(full).numpy()
        dense = np.empty((capacity, *first.shape[1:]), dtype=first.dtype)
        for d, slots in zip(layers, placed, strict=True):
            dense[slots] = get(d).numpy()
        return torch.from_numpy(dense[order])

    return {
        "capacity": capacity,
        "keys": [key_of[s] for s in order.tolist()],
        "slots": torch.from_numpy(order.astype(np.int64)),
        "free": last["free"],
        "hidden": rows(lambda d: d["hidden"]),
        "core": {n: rows(lambda d, n=n: d["core"][n]) for n in last["core"]},
        "parts": {name: {n: rows(lambda d, name=name, n=n: d["parts"][name][n])
                         for n in part} for name, part in last["parts"].items()},
    }
