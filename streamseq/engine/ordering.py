"""Ordering of a poll: validation, the duplicate/late policy, and where update points fall.

A poll's events are read once into arrays (:class:`Poll`). Validation needs no state and is
vectorised. The ordering policy and the update points need each key's history, event by
event, in stream order: a compiled planner (:func:`plan_segment`) walks the events of one
segment (the events between two update points) and decides for each: applied, ``late`` or
``duplicate``; it gives each applied event its key slot, its position in the key's stream
and its time gap, and stops where an update point falls.

The policy, per key: an event is *late* when its time is more than ``late_tolerance_ms``
before the newest time its key has applied; it is a *duplicate* when it carries the id of
one of the key's last ``recent_events`` identified events, or when its time and values
equal those of one of the key's last ``recent_events`` applied events. Values are compared
by a 64-bit digest (``null`` equals ``null``, ``-0.0`` equals ``0.0``), ids by a 64-bit
digest of their UTF-8 bytes.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import repeat

import numba as nb
import numpy as np

from streamseq.events.errors import EventError
from streamseq.events.schema import Event, EventColumns
from streamseq.state.table import SlotArrays

__all__ = ["Poll", "read_poll", "row_problem", "OrderingPolicy", "plan_segment", "APPLIED", "LATE",
           "DUPLICATE", "REJECTED", "values_digest", "id_digest"]

PENDING, APPLIED, LATE, DUPLICATE, REJECTED = 0, 1, 2, 3, 4
VERDICTS = {LATE: "late", DUPLICATE: "duplicate"}
# planner stops: the segment is full (update point next), closed (a key's second due
# window: update point before it), the poll is done, or the free-slot stack ran out
FULL, CLOSED, DONE, NEED_SLOTS = 0, 1, 2, 3
_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


@nb.njit(inline="always", cache=True, nogil=True)
def _mix(h: np.uint64) -> np.uint64:
    """splitmix64's finaliser (wrapping uint64 arithmetic)."""
    h = (h ^ (h >> np.uint64(30))) * _M1
    h = (h ^ (h >> np.uint64(27))) * _M2
    return h ^ (h >> np.uint64(31))


@nb.njit(cache=True, nogil=True)
def values_digest(raw: np.ndarray) -> np.ndarray:
    """64-bit digest of each row of ``raw [n, v]`` (NaN = missing equals missing, -0.0 =
    0.0).

    >>> d = values_digest(np.array([[1.5, np.nan], [1.5, np.nan], [-0.0, 2.0], [0.0, 2.0]]))
    >>> bool(d[0] == d[1]), bool(d[2] == d[3]), bool(d[0] == d[2])
    (True, True, False)
    """
    n, v = raw.shape
    canon = np.empty((n, v))
    for i in range(n):
        for j in range(v):
            x = raw[i, j]
            canon[i, j] = np.inf if math.isnan(x) else x + 0.0  # one NaN pattern, no -0.0
    bits = canon.view(np.uint64)
    out = np.empty(n, np.uint64)
    for i in range(n):
        h = np.uint64(0x9E3779B97F4A7C15)
        for j in range(v):
            h = _mix(h ^ bits[i, j])
        out[i] = h | np.uint64(1)  # 0 marks "no entry"
    return out


@nb.njit(cache=True, nogil=True)
def row_problem(raw: np.ndarray, max_abs: float, reject_missing: bool) -> int:
    """What makes one event's values ``raw`` (NaN: missing) invalid, by
    :func:`read_poll`'s rules: 0 nothing, 1 ``missing_value`` (no known value, or any with
    ``reject_missing``), 2 ``out_of_range``, 3 ``non_finite`` (inf).

    >>> [row_problem(np.array(r), 10.0, False) for r in ([1.0, np.nan], [np.nan], [11.0],
    ...                                                  [np.inf, 1.0])]
    [0, 1, 2, 3]
    """
    known = 0
    problem = 0
    for j in range(raw.shape[0]):
        v = raw[j]
        if math.isnan(v):
            if reject_missing:
                problem = max(problem, 1)
            continue
        known += 1
        if math.isinf(v):
            problem = 3
        elif abs(v) > max_abs:
            problem = max(problem, 2)
    return 1 if known == 0 else problem


def id_digest(event_id: str) -> int:
    """Stable 64-bit digest of a producer id, never 0 (0 marks "none").

    >>> id_digest("m-1") == id_digest("m-1") != id_digest("m-2")
    True
    """
    d = int.from_bytes(hashlib.blake2b(event_id.encode("utf-8", "surrogatepass"),
                                       digest_size=8).digest(), "little")
    return d | 1


@dataclass
class Poll:
    """One :meth:`Engine.process` call's events as arrays, aligned with the input.

    ``key_index`` points into ``keys`` (the poll's distinct keys, first-seen order);
    ``raw`` holds the values in the shard's value order (NaN: missing); ``rejected`` the
    validation verdicts (``None``: valid).
    """

    keys: list[str]
    key_index: np.ndarray
    ts: np.ndarray
    raw: np.ndarray
    values_digest: np.ndarray
    id_digest: np.ndarray
    rejected: list[EventError | None]

    def __len__(self) -> int:
        return int(self.ts.shape[0])


def read_poll(events: Sequence[Event], kind: str, names: Sequence[str], max_abs: float,
              reject_missing: bool) -> Poll:
    """Read ``events`` into a :class:`Poll` and validate each one.

    Rejections: ``bad_kind``, ``unknown_fields`` (a value name the shard does not have),
    ``out_of_range`` / ``non_finite`` (beyond ``max_abs``, NaN or inf), ``missing_value``
    (no known value, or any missing with ``reject_missing``).

    Examples
    --------
    >>> evs = [Event("sensor", "a", 1, {"x": 1.0}), Event("sensor", "b", 2, {"x": None}),
    ...        Event("price", "a", 3, {"x": 1.0}), Event("sensor", "a", 4, {"y": 1.0})]
    >>> p = read_poll(evs, "sensor", ["x"], 1e12, False)
    >>> p.keys, p.key_index.tolist(), [e.reason if e else None for e in p.rejected]
    (['a', 'b'], [0, 1, 0, 0], [None, 'missing_value', 'bad_kind', 'unknown_fields'])
    """
    cols = EventColumns.of(events)  # column by column: no Python code per event
    n = len(cols)
    values = cols.values
    value_set = frozenset(names)
    n_names = len(names)
    index = {k: i for i, k in enumerate(dict.fromkeys(cols.keys))}  # first-seen order
    key_index = np.fromiter(map(index.__getitem__, cols.keys), np.int64, n)
    ts = np.array(cols.ts_ms, dtype=np.int64).reshape(n)
    raw = np.empty((n, n_names))
    for j, name in enumerate(names):
        raw[:, j] = np.array(list(map(dict.get, values, repeat(name))), dtype=np.float64)
    rejected: list[EventError | None] = [None] * n
    unknown = {layout for layout in set(map(tuple, values))
               if len(layout) > n_names or not value_set.issuperset(layout)}
    if unknown or cols.kinds.count(kind) != n:
        for i, (ev_kind, vals) in enumerate(zip(cols.kinds, values, strict=True)):
            if ev_kind != kind:
                rejected[i] = EventError("bad_kind", f"{ev_kind!r} event on a {kind} shard")
            elif tuple(vals) in unknown:
                extra = sorted(set(vals) - value_set)
                rejected[i] = EventError("unknown_fields", f"values {extra[:5] or sorted(vals)[:5]} "
                                                           f"differ from the shard's {list(names)[:5]}")
            else:
                continue
            raw[i] = np.nan
    ids = np.zeros(n, dtype=np.uint64)
    if cols.ids.count(None) != n:
        for i, event_id in enumerate(cols.ids):
            if event_id is not None:
                ids[i] = id_digest(event_id)
    with np.errstate(invalid="ignore"):
        bad_rows = np.flatnonzero(~(np.abs(raw) <= max_abs).all(axis=1))
    for i in bad_rows.tolist():  # NaN here is a missing value or a NaN reading: look
        if rejected[i] is not None:
            continue
        row = [values[i].get(name) for name in names]
        bad = next((x for x in row if x is not None and not -max_abs <= x <= max_abs), None)
        if bad is not None:
            rejected[i] = EventError("out_of_range" if math.isfinite(bad) else "non_finite",
                                     f"value {bad!r} outside +-{max_abs:g}")
        elif all(x is None for x in row):
            rejected[i] = EventError("missing_value", "no known value in event")
        elif reject_missing:
            lacking = [nm for nm, x in zip(names, row, strict=True) if x is None]
            rejected[i] = EventError("missing_value", f"missing {lacking[:5]}")
    return Poll(list(index), key_index, ts, raw, values_digest(raw), ids, rejected)


class OrderingPolicy:
    """The per-key memory behind the duplicate/late verdicts.

    Parameters
    ----------
    late_tolerance_ms
        Events older than their key's newest by more than this are ``late``.
    recent_events
        How many of a key's last applied events (time, values digest) and last identified
        events (id digest) are remembered for duplicate detection.
    """

    def __init__(self, late_tolerance_ms: int, recent_events: int) -> None:
        self.tolerance = int(late_tolerance_ms)
        self.recent = int(recent_events)
        r = self.recent
        self.arrays = SlotArrays({
            "recent_ts": ((r,), np.int64, np.iinfo(np.int64).min),
            "recent_values": ((r,), np.uint64, 0),
            "recent_ids": ((r,), np.uint64, 0),
            "cursor": ((2,), np.uint8, 0),  # next entry to overwrite: events, ids
            "due_segment": ((), np.int64, -1),  # segment in which a window of the key is due
        })


@nb.njit(cache=True, nogil=True)
def plan_segment(start: int, slot_of_key: np.ndarray, key_index: np.ndarray, ts: np.ndarray,
                 values: np.ndarray, ids: np.ndarray, valid: np.ndarray,
                 count: np.ndarray, newest: np.ndarray, last_seen: np.ndarray,
                 due_segment: np.ndarray, recent_ts: np.ndarray, recent_values: np.ndarray,
                 recent_ids: np.ndarray, cursor: np.ndarray, free: np.ndarray,
                 n_free: np.ndarray, counters: np.ndarray, tolerance: int, learn: bool,
                 k1: int, horizon: int, batch_windows: int, max_segment: int,
                 verdict: np.ndarray, slot_out: np.ndarray, position: np.ndarray,
                 gap_ms: np.ndarray, seq_out: np.ndarray, due_out: np.ndarray,
                 applied: np.ndarray, new_keys: np.ndarray) -> tuple[int, int, int, int]:
    """Walk events from ``start`` until an update point falls or the poll ends.

    ``counters`` = ``[segment id, events in segment, windows in segment, seq]`` (updated).
    Writes per event: ``verdict``, and for applied events their ``slot``, ``position`` (the
    key's event count before it), ``gap_ms`` (time since the key's newest event, 0 for its
    first), ``seq`` (stream sequence number) and ``due`` (a TBPTT window falls due).
    A new key takes a slot from the ``free`` stack. ``applied`` receives the positions of
    the applied events, ``new_keys`` the poll key indices that took a slot. Returns ``(next
    position, reason, applied count, new key count)``.
    """
    n = ts.shape[0]
    r_events = recent_ts.shape[1]
    segment = counters[0]
    i = start
    n_applied = 0
    n_new = 0
    while i < n:
        if counters[1] >= max_segment or counters[2] >= batch_windows:
            return i, FULL, n_applied, n_new
        if not valid[i]:
            verdict[i] = REJECTED
            i += 1
            continue
        key = key_index[i]
        slot = slot_of_key[key]
        t = ts[i]
        if slot >= 0:
            if ids[i] != 0:
                dup = False
                for r in range(r_events):
                    if recent_ids[slot, r] == ids[i]:
                        dup = True
                if dup:
                    verdict[i] = DUPLICATE
                    i += 1
                    continue
            if count[slot] > 0 and t < newest[slot] - tolerance:
                verdict[i] = LATE
                i += 1
                continue
            dup = False
            for r in range(r_events):
                if recent_ts[slot, r] == t and recent_values[slot, r] == values[i]:
                    dup = True
            if dup:
                verdict[i] = DUPLICATE
                i += 1
                continue
            n_before = count[slot]
        else:
            n_before = 0
        m = n_before + 1 - horizon
        due = learn and m > 0 and m % k1 == 0
        if due and slot >= 0 and due_segment[slot] == segment:
            # the key's previous window is not learned yet: an update point comes first,
            # so a key with few companions still learns every k1 of its events
            return i, CLOSED, n_applied, n_new
        if slot < 0:
            if n_free[0] == 0:
                return i, NEED_SLOTS, n_applied, n_new
            n_free[0] -= 1
            slot = free[n_free[0]]
            slot_of_key[key] = slot
            new_keys[n_new] = key
            n_new += 1
        verdict[i] = APPLIED
        applied[n_applied] = i
        n_applied += 1
        slot_out[i] = slot
        position[i] = n_before
        gap_ms[i] = max(t - newest[slot], 0) if n_before > 0 else 0
        counters[3] += 1
        seq_out[i] = counters[3]
        due_out[i] = due
        count[slot] = n_before + 1
        if n_before == 0 or t > newest[slot]:
            newest[slot] = t
        last_seen[slot] = counters[3]
        c = cursor[slot, 0]
        recent_ts[slot, c] = t
        recent_values[slot, c] = values[i]
        cursor[slot, 0] = (c + 1) % r_events
        if ids[i] != 0:
            c = cursor[slot, 1]
            recent_ids[slot, c] = ids[i]
            cursor[slot, 1] = (c + 1) % r_events
        counters[1] += 1
        if due:
            counters[2] += 1
            due_segment[slot] = segment
        i += 1
    if counters[1] >= max_segment or counters[2] >= batch_windows:
        return n, FULL, n_applied, n_new
    return n, DONE, n_applied, n_new
