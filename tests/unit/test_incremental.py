"""Snapshots proportional to what changed (issue 12.5): a complete snapshot, then deltas
holding only the keys changed since the previous snapshot; restore = the complete one with
its chain of deltas. The oracle is the live shard itself: the restored state must equal its
``state_dict()`` bit for bit at the snapshot's position, and a restored engine must go on
forecasting exactly as the live one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from kafka import TopicPartition
from kafka.errors import KafkaTimeoutError

from streamseq.config import EngineConfig, LearnerConfig, ModelConfig, StateConfig
from streamseq.events.decode import EventDecoder
from streamseq.events.schema import Event
from streamseq.metrics import ServiceMetrics
from streamseq.pipeline import RecordDecoder
from streamseq.service.checkpoints import Checkpointer, Outcome
from streamseq.service.clients import Sender
from streamseq.service.shards import Shard
from streamseq.shards import NumericShard
from streamseq.state.checkpoint import (
    CheckpointStore,
    LocalCheckpointStore,
    SnapshotRef,
    SnapshotsUnreadableError,
)

torch.set_num_threads(1)

TP = TopicPartition("sensors", 0)
NAME = "sensors-0"
CONFIG = EngineConfig(
    values=("x", "y"),
    model=ModelConfig(hidden=8, horizon=2),
    learner=LearnerConfig(k1=2, k2=4, batch_windows=3, lr=1e-2, seed=5),
    state=StateConfig(max_keys=30, late_tolerance_ms=120_000),
)


class _Producer:
    """The producer side of a service that produced nothing; ``fail`` flushes time out."""

    def __init__(self) -> None:
        self.fail = False

    def flush(self, timeout: float | None = None) -> None:
        if self.fail:
            raise KafkaTimeoutError("flush timed out")

    def close(self, timeout: float | None = None) -> None:
        return None


class CheckpointedShard:
    """A shard, its store and the service's checkpointer, fed by a seeded stream in which
    each interval touches a share of the keys (new keys too, so the key cap evicts)."""

    def __init__(self, tmp: Path, keep: int = 1, full_every: int = 3,
                 store: CheckpointStore | None = None) -> None:
        self.store = store if store is not None else LocalCheckpointStore(tmp, keep=keep)
        self.producer = _Producer()
        self.checkpointer = Checkpointer(
            self.store, Sender(self.producer, "p", "d", 1000),
            ServiceMetrics(version="t", cell="gru", hidden=8), every_events=1,
            every_seconds=1.0, full_every=full_every)
        self.shard = Shard(TP, NumericShard(CONFIG), RecordDecoder(EventDecoder("sensor")))
        self.rng = np.random.default_rng(7)
        self.ts: dict[str, int] = {}
        self.offset = 0
        self.fresh = 0

    def run(self, touched: int, new: int = 0) -> None:
        """Events for ``touched`` of the held keys and ``new`` new ones, a few late or
        repeated."""
        held = sorted(self.shard.engine.engine.table.keys)
        keys = list(self.rng.choice(held, size=min(touched, len(held)), replace=False)) \
            if held else []
        keys += [f"k{self.fresh + i:04d}" for i in range(new)]
        self.fresh += new
        events = []
        for _ in range(3):
            for key in keys:
                t = self.ts.get(key, 1_700_000_000_000) + int(self.rng.integers(1_000, 60_000))
                self.ts[key] = t
                late = self.rng.random() < 0.05
                events.append(Event("sensor", key, t - 200_000 if late else t,
                                    {"x": float(self.rng.normal()),
                                     "y": float(self.rng.normal(3.0, 1.0))}))
        if events and self.rng.random() < 0.5:
            events.append(events[len(events) // 2])  # a duplicate
        for lo in range(0, len(events), 7):
            self.shard.engine.engine.process(events[lo:lo + 7])
        self.offset += len(events)
        self.shard.next_offset = self.offset

    def checkpoint(self) -> str:
        return self.checkpointer.checkpoint([self.shard], lambda offsets: None)

    def live(self) -> dict[str, Any]:
        """The live state (a full ``state_dict``, no change marks touched)."""
        return self.shard.engine.state_dict()

    def kinds(self) -> list[str]:
        """Complete or delta, of each snapshot file of the local store, oldest first."""
        assert isinstance(self.store, LocalCheckpointStore)
        return ["delta" if p.name.endswith(".delta.ckpt") else "full"
                for p in reversed(self.store._files(NAME))]


def differences(a: Any, b: Any, path: str = "") -> list[str]:
    """Where two states differ, bit for bit (NaN payloads included)."""
    if isinstance(a, dict) and isinstance(b, dict):
        if set(a) != set(b):
            return [f"{path}: keys {sorted(set(a) ^ set(b))}"]
        return [d for k in a for d in differences(a[k], b[k], f"{path}/{k}")]
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        same = (a.dtype == b.dtype and a.shape == b.shape
                and a.numpy().tobytes() == b.numpy().tobytes())
        return [] if same else [path]
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        if len(a) != len(b):
            return [f"{path}: length {len(a)} != {len(b)}"]
        return [d for i, (x, y) in enumerate(zip(a, b, strict=True))
                for d in differences(x, y, f"{path}[{i}]")]
    return [] if a == b else [f"{path}: {a!r} != {b!r}"]


def test_complete_plus_deltas_equals_the_live_state_bit_for_bit(tmp_path: Path) -> None:
    """Twelve checkpoints (keep=1: the store keeps one complete snapshot and its deltas),
    10% of the keys touched between most of them, new keys evicting old ones under the
    key cap and taking their slots. After each, the store's restore equals the live state
    bit for bit, and a new engine restored from it forecasts what the live one does."""
    svc = CheckpointedShard(tmp_path)
    svc.run(0, new=24)
    evicted_in_delta = 0
    for i in range(12):
        before = svc.shard.engine.engine.stats.evicted
        svc.run(touched=3, new=4 if i % 3 == 1 else 0)  # 24+ keys, cap 30: evictions
        if i == 6:
            svc.run(touched=30)  # most keys change: a complete snapshot is cheaper
        assert svc.checkpoint() == Outcome.OK
        if svc.kinds()[-1] == "delta":
            evicted_in_delta += svc.shard.engine.engine.stats.evicted - before
        restored = svc.store.load(NAME)
        assert restored is not None and restored["offset"] == svc.offset
        diffs = differences(restored["engine"], svc.live())
        assert not diffs, (i, svc.kinds(), diffs[:5])
    assert evicted_in_delta > 0  # evictions and slot reuse between two snapshots
    kinds = svc.kinds()
    assert kinds[0] == "full" and kinds.count("full") == 1 and "delta" in kinds
    # a restored engine continues exactly
    engine = NumericShard(CONFIG)
    engine.load_state_dict(restored["engine"])
    rest = [Event("sensor", k, svc.ts[k] + 30_000, {"x": 0.5, "y": 2.0})
            for k in sorted(svc.shard.engine.engine.table.keys)]
    got, want = engine.engine.process(rest), svc.shard.engine.engine.process(rest)
    np.testing.assert_array_equal(got.yhat, want.yhat)


def test_chain_policy_complete_after_full_every_and_when_most_keys_changed(
        tmp_path: Path) -> None:
    svc = CheckpointedShard(tmp_path, keep=5, full_every=2)
    svc.run(0, new=20)
    written = []
    for touched in (2, 2, 2, 2, 25, 2):
        svc.run(touched)
        assert svc.checkpoint() == Outcome.OK
        newest = svc.store._files(NAME)[0]
        written.append((svc.kinds()[-1], newest.stat().st_size))
    # full, 2 deltas, full (full_every), then a full when most keys changed, then a delta
    assert [k for k, _ in written] == ["full", "delta", "delta", "full", "full", "delta"]
    assert max(n for k, n in written if k == "delta") < min(n for k, n in written if k == "full")
    # the deltas of older complete snapshots are gone, their complete snapshots kept
    assert svc.kinds() == ["full", "full", "full", "delta"]


def test_deltas_since_a_complete_snapshot_hold_fewer_keys_than_it(tmp_path: Path) -> None:
    """40% of the keys changed each time: two deltas (80%), then a complete snapshot,
    since a third delta would bring the chain to 120% of the complete one's keys."""
    svc = CheckpointedShard(tmp_path, keep=5, full_every=8)
    svc.run(0, new=20)
    written = []
    for _ in range(5):
        svc.run(8)
        assert svc.checkpoint() == Outcome.OK
        written.append(svc.kinds()[-1])
    assert written == ["full", "delta", "delta", "full", "delta"]
    # the metrics count every snapshot made durable, by kind, with the bytes written
    metrics = svc.checkpointer.metrics
    files = [p for p in svc.store.directory.iterdir() if p.name.startswith(NAME)]
    delta_bytes = sum(p.stat().st_size for p in files if p.name.endswith(".delta.ckpt"))
    assert _sample(metrics, "streamseq_snapshots_total", "complete") == 2
    assert _sample(metrics, "streamseq_snapshots_total", "delta") == 3
    assert _sample(metrics, "streamseq_snapshot_bytes_total", "delta") >= delta_bytes > 0
    assert _sample(metrics, "streamseq_snapshot_bytes_total", "complete") > delta_bytes


def _sample(metrics: ServiceMetrics, name: str, kind: str) -> float:
    value = metrics.registry.get_sample_value(name, {"kind": kind})
    assert value is not None, name
    return value


def test_a_failed_checkpoint_makes_the_next_snapshot_complete(tmp_path: Path) -> None:
    """The copy of a failed checkpoint cleared the change marks: the rows it covered are in
    no delta, so the next snapshot must be complete (and equal the live state)."""
    svc = CheckpointedShard(tmp_path, keep=3)
    svc.run(0, new=20)
    assert svc.checkpoint() == Outcome.OK
    svc.run(2)
    svc.producer.fail = True
    assert svc.checkpoint() == Outcome.RETRY
    svc.producer.fail = False
    svc.run(2)
    assert svc.checkpoint() == Outcome.OK
    assert svc.kinds() == ["full", "full"]
    restored = svc.store.load(NAME)
    assert restored is not None and not differences(restored["engine"], svc.live())


def _chain(tmp_path: Path) -> tuple[CheckpointedShard, list[dict[str, Any]]]:
    """full, delta, delta, delta: the live state at each."""
    svc = CheckpointedShard(tmp_path, keep=3, full_every=5)
    svc.run(0, new=20)
    states = []
    for _ in range(4):
        svc.run(2)
        assert svc.checkpoint() == Outcome.OK
        states.append({"offset": svc.offset, "engine": svc.live()})
    assert svc.kinds() == ["full", "delta", "delta", "delta"]
    return svc, states


@pytest.mark.parametrize("damage", ["torn", "missing", "flipped"])
def test_a_bad_link_falls_back_to_the_state_before_it(tmp_path: Path, damage: str) -> None:
    """The second delta torn, deleted or with one bit flipped: the restore stops at the
    first delta (the third names the second as its base, so it is not applied either)."""
    svc, states = _chain(tmp_path)
    second = svc.store._files(NAME)[1]
    if damage == "torn":
        second.write_bytes(second.read_bytes()[:200])
    elif damage == "missing":
        second.unlink()
    else:
        data = bytearray(second.read_bytes())
        data[len(data) // 2] ^= 0x01
        second.write_bytes(bytes(data))
    restored = svc.store.load(NAME)
    assert restored is not None and restored["offset"] == states[1]["offset"]
    assert not differences(restored["engine"], states[1]["engine"])


def test_a_torn_newest_delta_falls_back_to_the_one_before(tmp_path: Path) -> None:
    svc, states = _chain(tmp_path)
    newest = svc.store._files(NAME)[0]
    newest.write_bytes(newest.read_bytes()[:100])
    restored = svc.store.load(NAME)
    assert restored is not None and not differences(restored["engine"], states[2]["engine"])


def test_a_torn_complete_snapshot_falls_back_to_the_previous_complete_one(
        tmp_path: Path) -> None:
    """Its deltas are useless without it; the previous complete snapshot is kept (keep=3)."""
    svc = CheckpointedShard(tmp_path, keep=3, full_every=1)
    svc.run(0, new=20)
    svc.run(2)
    assert svc.checkpoint() == Outcome.OK
    first = {"offset": svc.offset, "engine": svc.live()}
    for _ in range(3):
        svc.run(2)
        assert svc.checkpoint() == Outcome.OK
    # full, delta, full, delta: the first one's delta was removed with the second full
    assert svc.kinds() == ["full", "full", "delta"]
    newest_full = next(p for p in svc.store._files(NAME) if not p.name.endswith(".delta.ckpt"))
    newest_full.write_bytes(newest_full.read_bytes()[:100])
    restored = svc.store.load(NAME)
    assert restored is not None and restored["offset"] == first["offset"]
    assert not differences(restored["engine"], first["engine"])


def test_deltas_without_their_complete_snapshot_are_unreadable(tmp_path: Path) -> None:
    svc, _ = _chain(tmp_path)
    svc.store._files(NAME)[-1].unlink()  # the complete one
    with pytest.raises(SnapshotsUnreadableError, match="without its complete snapshot"):
        svc.store.load(NAME)


class _CompleteOnly(LocalCheckpointStore):
    """A store that takes no deltas."""

    incremental = False


@pytest.mark.parametrize("store", ["full_every=0", "a store without deltas"])
def test_complete_snapshots_only(tmp_path: Path, store: str) -> None:
    svc = CheckpointedShard(tmp_path, keep=5, full_every=0 if store == "full_every=0" else 8)
    if store != "full_every=0":
        svc.store = _CompleteOnly(tmp_path, keep=5)
        svc.checkpointer = Checkpointer(svc.store, svc.checkpointer.sender,
                                        svc.checkpointer.metrics, 1, 1.0)
    svc.run(0, new=10)
    for _ in range(3):
        svc.run(1)
        assert svc.checkpoint() == Outcome.OK
    assert svc.kinds() == ["full"] * 3


def test_text_shards_take_complete_snapshots_only() -> None:
    from streamseq.shards import TextShard

    shard = Shard(TopicPartition("texts", 0), TextShard(), RecordDecoder(EventDecoder("sensor")),
                  next_offset=3, base=SnapshotRef(1, "0" * 64))
    assert shard.changed_share() == 1.0  # never small enough for a delta
    with pytest.raises(ValueError, match="complete snapshots only"):
        shard.snapshot(delta=True)
    assert shard.snapshot()["offset"] == 3
