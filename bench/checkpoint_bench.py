"""Checkpoint cost against keys held and keys changed: complete snapshots against deltas.

    python -m bench.checkpoint_bench                 # 1k, 10k, 100k keys -> bench/results/checkpoints.md
    python -m bench.checkpoint_bench --keys 1000 --repeats 2 --out /tmp/c.md

For each size a numeric shard (engine defaults: GRU 64, the experts) is filled with that
many keys (two events each), written and restored into a new engine as a restarted service
does, and checkpointed by the service's own
:class:`~streamseq.service.checkpoints.Checkpointer` into a
:class:`~streamseq.state.checkpoint.LocalCheckpointStore` in a temporary directory, with
the service's allocator policy (:func:`~streamseq.service.memory.reuse_freed_memory`).
Between two checkpoints a share of the keys (10%, 100%) gets one new event each. Each
setting runs twice in the same process, *before* (every snapshot complete,
``full_every=0``, what the service wrote until issue 12.5) and *after* (deltas: only the
keys changed since the previous snapshot, a complete one after 8 deltas, when over half
the keys changed, or when the deltas would hold more keys than the complete snapshot):

- **snapshot**: bytes written per checkpoint;
- **pause**: :meth:`Checkpointer.start`, the copy of the shard's state at its stream
  position; the only time the stream stands still (target: under 1 s at 100k keys);
- **background write**: from the copy to the snapshot durable (producer flush, serialise,
  SHA-256, write, fsync, rename), in the writer thread;
- **engine during the write**: events per second the loop's engine processes while the
  writer works, against the same batches with no write (the writer shares the GIL: a ratio
  below 1 is what background writing still costs the stream);
- **restore**: reading the newest state back (the complete snapshot and its deltas).

The producer is a stand-in that has nothing to flush (the bench measures state, not Kafka).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from kafka import TopicPartition

from bench.common import cpu_model
from streamseq.config import EngineConfig
from streamseq.events.decode import EventDecoder
from streamseq.events.schema import Event
from streamseq.metrics import ServiceMetrics
from streamseq.pipeline import RecordDecoder
from streamseq.service.checkpoints import Checkpointer, Outcome
from streamseq.service.clients import Sender
from streamseq.service.memory import reuse_freed_memory
from streamseq.service.shards import Shard
from streamseq.shards import NumericShard
from streamseq.state.checkpoint import LocalCheckpointStore, dumps

RESULTS = Path(__file__).resolve().parent / "results" / "checkpoints.md"
PAUSE_TARGET_S = 1.0


class _NothingToFlush:
    """The producer side of a service that has produced nothing: flush returns at once."""

    def flush(self, timeout: float | None = None) -> None:
        return None

    def close(self, timeout: float | None = None) -> None:
        return None


def _events(keys: int, rounds: int, start: int = 0) -> list[Event]:
    return [Event("sensor", f"s-{i:06d}", 60_000 * (start + r), {"temp": float((i + r) % 7)})
            for r in range(rounds) for i in range(keys)]


def _shard(keys: int) -> Shard:
    engine = NumericShard(EngineConfig())
    events = _events(keys, 2)
    for lo in range(0, len(events), 20_000):
        engine.engine.process(events[lo:lo + 20_000])
    shard = Shard(TopicPartition("sensors", 0), engine, RecordDecoder(EventDecoder("sensor")))
    shard.next_offset = len(events)
    return shard


def _rate_while(shard: Shard, batches: list[list[Event]], busy: Any) -> float:
    """Events per second the engine processes through ``batches`` while ``busy()`` holds
    (all of them when ``busy`` is None)."""
    n, t0 = 0, time.perf_counter()
    for batch in batches:
        if busy is not None and not busy():
            break
        shard.engine.engine.process(batch)
        n += len(batch)
    return n / max(time.perf_counter() - t0, 1e-9)


def _restored(shard: Shard, store: LocalCheckpointStore) -> Shard:
    """``shard`` written and read back as a service restores a partition (a new engine)."""
    store.save(shard.name, shard.snapshot())
    snap = store.load(shard.name)
    assert snap is not None
    engine = NumericShard(EngineConfig())
    engine.load_state_dict(snap["engine"])
    return Shard(shard.tp, engine, shard.decoder, next_offset=snap["offset"], origin="ok")


def _touch(shard: Shard, keys: int, share: float, round_: int, first: int) -> None:
    """One new event for ``share`` of the keys (a window of them starting at ``first``)."""
    n = max(1, int(keys * share))
    events = [Event("sensor", f"s-{(first + i) % keys:06d}", 60_000 * round_,
                    {"temp": float((first + i + round_) % 7)}) for i in range(n)]
    for lo in range(0, len(events), 20_000):
        shard.engine.engine.process(events[lo:lo + 20_000])
    assert shard.next_offset is not None
    shard.next_offset += len(events)


def shared_bytes(keys: int) -> tuple[int, int]:
    """Bytes of a snapshot without per-key rows (weights, optimizer, pending windows,
    counters: a delta with no key changed) and of a complete one, for ``keys`` keys."""
    shard = _shard(keys)
    complete = len(dumps(shard.snapshot()))
    return len(dumps(shard.snapshot(delta=True))), complete


def measure(keys: int, share: float, full_every: int, repeats: int) -> dict[str, Any]:
    rows: dict[str, list[float]] = {"pause": [], "write": [], "during": [], "idle": [],
                                    "bytes": [], "changed": [], "delta": []}
    round_ = 10
    with tempfile.TemporaryDirectory(prefix="streamseq-ckpt-bench-") as tmp:
        store = LocalCheckpointStore(tmp, keep=2)
        shard = _restored(_shard(keys), store)  # as after a restart: the first checkpoint
        metrics = ServiceMetrics(version="bench", cell="gru", hidden=64)
        checkpointer = Checkpointer(store, Sender(_NothingToFlush(), "p", "d", 1000), metrics,
                                    every_events=1, every_seconds=1.0, full_every=full_every)
        try:
            for r in range(repeats):
                _touch(shard, keys, share, round_, first=r * int(keys * share))
                round_ += 1
                # batches of 200 new events of 50 keys, as the loop keeps working meanwhile
                batches = [_events(50, 4, start=round_ + 4 * b) for b in range(800)]
                round_ += 4 * 800
                rows["idle"].append(_rate_while(shard, batches[:100], None))
                rows["changed"].append(shard.engine.changed_share())
                t0 = time.perf_counter()
                rows["pause"].append(checkpointer.start([shard]))
                rows["during"].append(_rate_while(shard, batches[100:],
                                                  lambda: checkpointer.writing))
                assert checkpointer.poll(lambda offsets: None, wait=True) == Outcome.OK
                rows["write"].append(time.perf_counter() - t0 - rows["pause"][-1])
                newest = store._files(shard.name)[0]
                rows["bytes"].append(newest.stat().st_size)
                rows["delta"].append(float(newest.name.endswith(".delta.ckpt")))
            t0 = time.perf_counter()
            assert store.load(shard.name) is not None
            restore = time.perf_counter() - t0
        finally:
            checkpointer.close()
    # the first checkpoint of a process is complete (after the restore) and copies into
    # memory never touched before (page faults): reported apart from the later ones
    first = {k: v[0] for k, v in rows.items()}
    later = {k: statistics.median(v[1:] or v) for k, v in rows.items()}
    return {"keys": keys, "share": share, "full_every": full_every, **later,
            "first_pause": first["pause"], "first_bytes": first["bytes"],
            "first_write": first["write"], "deltas": int(sum(rows["delta"])),
            "checkpoints": repeats, "pause_max": max(rows["pause"][1:] or rows["pause"]),
            "write_max": max(rows["write"][1:] or rows["write"]), "restore": restore}


def report(results: list[dict[str, Any]], shared: dict[int, tuple[int, int]], repeats: int,
           load: tuple[float, ...]) -> str:
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    rev = os.popen("git rev-parse --short HEAD 2>/dev/null").read().strip() or "?"
    lines = [
        "# Checkpoints against keys held and keys changed",
        "",
        "Command: `python -m bench.checkpoint_bench`  ",
        f"Date: {now}; revision {rev}  ",
        f"Machine: {cpu_model()}, {os.cpu_count()} CPUs, torch threads 1; load average "
        f"before {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f} (shared machine)  ",
        f"Checkpoints per setting: {repeats} (the first, complete after the restore, reported "
        "apart). Engine defaults (GRU 64, experts); local checkpoint store (fsync) on the "
        "machine's disk. Before and after measured in the same run.",
        "",
        "Between two checkpoints a share of the keys gets a new event (*changed*: keys in the "
        "engine's change set at the copy, per key held, including the 50 keys the loop's "
        "batches touch during the previous write). *Before*: every snapshot complete "
        "(`--checkpoint-full-every 0`). *After*: a delta holds the weights, optimizer, pending "
        "windows and counters plus only the changed keys' rows, and names its base; a "
        "complete snapshot after 8 deltas, when over half the keys changed (so at 100% "
        "changed both write complete snapshots) or when the deltas would hold more keys "
        "than the complete snapshot. The loop pauses only for the copy; "
        "serialisation, SHA-256, write and fsync run in the writer thread. *Engine during "
        "write* is the loop's engine throughput while the writer works, relative to the same "
        "batches without a write (the writer shares the GIL); *engine time lost* is what that "
        "costs the stream per checkpoint, write x (1 - ratio). *Restore* reads the newest "
        "state back: the complete snapshot and the deltas on top of it.",
        "",
        "| keys held | changed | snapshots | snapshot | pause (copy) | background write "
        "| engine during write | engine time lost | restore |",
        "|---:|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        mode = (f"after: {r['deltas']} of {r['checkpoints']} deltas" if r["full_every"]
                else "before: complete")
        lines.append(
            f"| {r['keys']:,} | {r['changed']:.0%} | {mode} | {r['bytes'] / 1e6:,.2f} MB "
            f"| {r['pause'] * 1e3:,.0f} ms ({r['pause_max'] * 1e3:,.0f}) "
            f"| {r['write']:,.2f} s ({r['write_max']:,.2f}) "
            f"| {r['during'] / r['idle']:.2f} x ({r['during']:,.0f} vs {r['idle']:,.0f} ev/s) "
            f"| {r['write'] * (1 - r['during'] / r['idle']):,.2f} s "
            f"| {r['restore']:,.2f} s |")
    lines += ["", "Medians over the checkpoints after the first (max in brackets). The first "
              "checkpoint after a restore is complete in both modes (the first setting of "
              "each size):", "",
              "| keys held | snapshot | first pause | first write |", "|---:|---:|---:|---:|"]
    for keys in sorted({r["keys"] for r in results}):
        r = next(x for x in results if x["keys"] == keys)
        lines.append(f"| {keys:,} | {r['first_bytes'] / 1e6:,.1f} MB "
                     f"| {r['first_pause'] * 1e3:,.0f} ms | {r['first_write']:,.2f} s |")
    lines += ["", "The part of a snapshot that is not per key (weights, optimizer state, "
              "pending TBPTT windows, counters, the key table's free-slot stack; a delta in which "
              "no key changed) against a "
              "complete snapshot:", "", "| keys held | shared part | complete | per key |",
              "|---:|---:|---:|---:|"]
    for keys, (part, complete) in sorted(shared.items()):
        lines.append(f"| {keys:,} | {part / 1e6:,.2f} MB | {complete / 1e6:,.1f} MB "
                     f"| {(complete - part) / keys:,.0f} B |")
    big = max(r["keys"] for r in results)
    worst = max(max(r["pause_max"], r["first_pause"]) for r in results if r["keys"] == big)
    met = "met" if worst < PAUSE_TARGET_S else "NOT met"
    lines += ["", "Without `reuse_freed_memory` each copy lands in fresh pages (glibc returns "
              "large blocks to the system): measured earlier ~1.2 s per pause at 100k keys, "
              "against ~0.07 s.", "",
              f"Target: no stream pause longer than {PAUSE_TARGET_S:g} s at "
              f"{big:,} keys: longest pause {worst:.2f} s, **{met}**.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--keys", type=int, nargs="+", default=[1_000, 10_000, 100_000])
    parser.add_argument("--changed", type=float, nargs="+", default=[0.1, 1.0],
                        help="share of the keys touched between two checkpoints")
    parser.add_argument("--repeats", type=int, default=5, help="checkpoints per setting (the "
                        "first is reported apart)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    reuse_freed_memory()  # as the service does (streamseq/service/memory.py)
    load = os.getloadavg()
    results, shared = [], {}
    for keys in args.keys:
        shared[keys] = shared_bytes(keys)
        for share in args.changed:
            for full_every in (0, 8):  # before, after
                r = measure(keys, share, full_every, args.repeats)
                print(f"{keys:>8,} keys {share:4.0%} {'after ' if full_every else 'before'}: "
                      f"{r['bytes'] / 1e6:8.2f} MB  pause {r['pause'] * 1e3:6.0f} ms  "
                      f"write {r['write']:6.2f} s  during/idle {r['during'] / r['idle']:.2f}  "
                      f"restore {r['restore']:.2f} s", flush=True)
                results.append(r)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report(results, shared, args.repeats, load))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
