"""Checkpoint stores: durable, atomic snapshots of engine state.

A snapshot is a ``state_dict``-style dict of tensors and plain types, written with
``torch.save`` and read back with ``torch.load(weights_only=True)`` (never a pickle of live
objects), behind a header holding the SHA-256 of the payload. A write goes to a temporary
file that is fsynced and then renamed, so a crash leaves either the old snapshot or the new
one; a torn or corrupted file fails its digest on load and the previous good snapshot is
used instead.

A snapshot is complete, or a *delta*: a state whose key table holds only the rows changed
since the snapshot it builds on (``state_dict(changed_only=True)``), saved with ``base``,
the :class:`SnapshotRef` (generation and SHA-256) of that snapshot. A store that takes
deltas (``incremental``) restores the newest complete snapshot, then each delta that names
the state so far as its base, in order (:func:`apply_deltas`); a delta that is unreadable or
names another base ends the chain there, so a torn or missing link falls back to the newest
consistent point before it.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from streamseq.exceptions import CheckpointError
from streamseq.state.table import merge_changes

__all__ = ["CheckpointStore", "LocalCheckpointStore", "SnapshotEntry", "SnapshotRef",
           "SnapshotsUnreadableError", "apply_deltas", "dumps", "loads", "restore_newest"]

log = logging.getLogger(__name__)
_NAME = re.compile(r"^[A-Za-z0-9._-]{1,200}$")


MAGIC = b"STREAMSEQ-SNAPSHOT-1\n"


@dataclass(frozen=True)
class SnapshotRef:
    """A durable snapshot as its store names it: a delta names its base by both fields."""

    gen: int
    sha256: str
    size: int = field(default=0, compare=False)  # bytes written


def dumps(state: dict[str, Any]) -> bytes:
    """Header (magic, SHA-256 of the payload) + ``torch.save`` payload."""
    header, payload = _serialise(state)
    return header + payload.tobytes()


def _serialise(state: dict[str, Any]) -> tuple[bytes, memoryview]:
    """The header and a view of the payload (written one after the other, a snapshot of
    hundreds of megabytes is not copied into one more buffer)."""
    buf = io.BytesIO()
    torch.save(state, buf)
    payload = buf.getbuffer()
    return MAGIC + hashlib.sha256(payload).hexdigest().encode() + b"\n", payload


def _digest(header: bytes) -> str:
    """The payload's SHA-256 named in a snapshot's header."""
    return header[len(MAGIC):len(MAGIC) + 64].decode("ascii", "replace")


def loads(data: bytes) -> dict[str, Any]:
    """Verify the digest, then ``torch.load(weights_only=True)``."""
    if not data.startswith(MAGIC):
        raise CheckpointError("not a streamseq snapshot (bad header)")
    head = len(MAGIC)
    digest, payload = _digest(data), data[head + 65:]
    if hashlib.sha256(payload).hexdigest() != digest:
        raise CheckpointError("snapshot digest mismatch (torn or corrupted file)")
    try:
        state = torch.load(io.BytesIO(payload), weights_only=True, map_location="cpu")
    except Exception as exc:  # noqa: BLE001 - any failure means a bad snapshot
        raise CheckpointError(f"snapshot cannot be read: {exc}") from exc
    if not isinstance(state, dict):
        raise CheckpointError("snapshot is not a dict")
    return state


def apply_deltas(state: dict[str, Any], deltas: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The complete state after ``deltas`` (oldest first, each on top of the one before,
    the first on top of ``state``): everything as in the last delta, except the key tables
    saved ``changed_only``, whose rows are merged into ``state``'s in one pass
    (:func:`~streamseq.state.table.merge_changes`).

    Examples
    --------
    >>> apply_deltas({"step": 1, "cfg": {"a": 1, "b": 2}}, [{"step": 2, "cfg": {"a": 3}}])
    {'step': 2, 'cfg': {'a': 3}}
    """
    out: dict[str, Any] = {}
    for name, value in deltas[-1].items():
        if isinstance(value, dict) and value.get("rows") == "changed":
            out[name] = merge_changes(state[name], [d[name] for d in deltas])
        elif isinstance(value, dict) and isinstance(state.get(name), dict):
            out[name] = apply_deltas(state[name], [d[name] for d in deltas])
        else:
            out[name] = value
    return out


class SnapshotsUnreadableError(CheckpointError):
    """Snapshots of a shard exist but none can be read: its learned state cannot be restored.

    ``reasons`` names each snapshot (file or generation) and why it was rejected.
    """

    def __init__(self, name: str, reasons: list[str]) -> None:
        super().__init__(f"every snapshot of {name} is unreadable ({len(reasons)}: "
                         + "; ".join(reasons) + ")")
        self.name = name
        self.reasons = reasons


class CheckpointStore(Protocol):
    """Where shard snapshots live. ``name`` identifies a shard (e.g. ``sensors-3``).

    ``save`` makes a snapshot durable and returns its :class:`SnapshotRef`; with ``base`` the
    state is a delta on top of that snapshot (only when ``incremental``). ``load`` returns
    the newest readable state (a complete snapshot with the deltas that follow it applied),
    ``None`` when there is none, and raises :class:`SnapshotsUnreadableError` when there are
    snapshots but none can be read. ``set_aside`` keeps the unreadable snapshots of ``name``
    out of the rotation (for inspection) and returns where they went.
    """

    incremental: bool

    def save(self, name: str, state: dict[str, Any],
             base: SnapshotRef | None = None) -> SnapshotRef: ...

    def load(self, name: str) -> dict[str, Any] | None: ...

    def set_aside(self, name: str) -> list[str]: ...


@dataclass(frozen=True)
class SnapshotEntry:
    """One snapshot a store holds: its generation, whether it is a delta, and a label for
    messages (a file name, a generation)."""

    gen: int
    delta: bool
    label: str


def restore_newest(name: str, entries: Sequence[SnapshotEntry],
                   read: Callable[[SnapshotEntry], tuple[dict[str, Any], str]]
                   ) -> dict[str, Any] | None:
    """The newest readable state among ``entries`` (a store's snapshots of ``name``):
    the newest complete snapshot ``read`` accepts (``read`` returns the state and its
    SHA-256, or raises :class:`CheckpointError` / :class:`OSError`), with the deltas after
    it applied in order as long as each names the state so far as its base (one that is
    unreadable or names another base is skipped, so a chain ends at its last good link).
    ``None`` without entries; :class:`SnapshotsUnreadableError` when no complete snapshot
    can be read."""
    reasons = []
    for full in sorted((e for e in entries if not e.delta), key=lambda e: -e.gen):
        try:
            state, sha = read(full)
        except (CheckpointError, OSError) as exc:
            log.warning("checkpoint %s is unreadable (%s); trying the previous one",
                        full.label, exc)
            reasons.append(f"{full.label}: {exc}")
            continue
        gen, chain = full.gen, []
        for e in sorted((e for e in entries if e.delta and e.gen > full.gen),
                        key=lambda e: e.gen):
            try:
                delta, delta_sha = read(e)
            except (CheckpointError, OSError) as exc:
                log.warning("checkpoint delta %s is unreadable (%s); restoring the state "
                            "before it", e.label, exc)
                continue
            if delta.pop("base", None) != {"gen": gen, "sha256": sha}:
                log.warning("checkpoint delta %s does not build on generation %d; skipped",
                            e.label, gen)
                continue
            chain.append(delta)
            gen, sha = e.gen, delta_sha
        if not chain:
            return state
        try:
            return apply_deltas(state, chain)
        except (KeyError, IndexError, RuntimeError, ValueError) as exc:
            log.error("the deltas on %s do not fit it (%s); restoring it alone", full.label,
                      exc)
            return state
    if reasons or entries:
        raise SnapshotsUnreadableError(name, reasons or [
            f"{e.label}: a delta without its complete snapshot" for e in entries])
    return None


class LocalCheckpointStore:
    """Snapshots in a local directory: the newest ``keep`` complete snapshots of each name,
    and the deltas on top of the newest one.

    Examples
    --------
    >>> import tempfile
    >>> store = LocalCheckpointStore(tempfile.mkdtemp())
    >>> ref = store.save("sensors-0", {"offsets": {"0": 41}, "w": torch.ones(2)})
    >>> _ = store.save("sensors-0", {"offsets": {"0": 57}, "w": torch.ones(2)}, base=ref)
    >>> store.load("sensors-0")["offsets"]
    {'0': 57}
    >>> store.load("missing") is None
    True
    """

    incremental = True

    def __init__(self, directory: str | Path, keep: int = 3) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.keep = max(1, keep)
        # writes cut short by a crash; other processes may share the directory (scale-out),
        # so only leftovers older than an hour are removed, never a write in progress
        cutoff = time.time() - 3600
        for stale in self.directory.glob(".*.ckpt.*.tmp"):
            with contextlib.suppress(OSError):
                if stale.stat().st_mtime < cutoff:
                    stale.unlink()

    def _entries(self, name: str) -> list[SnapshotEntry]:
        """The snapshot files of ``name`` (labelled by file name), newest first."""
        pattern = re.compile(re.escape(name) + r"\.(\d{20})\.(delta\.)?ckpt$")
        found = [SnapshotEntry(int(m.group(1)), bool(m.group(2)), p.name)
                 for p in self.directory.iterdir() if (m := pattern.match(p.name))]
        return sorted(found, key=lambda f: f.gen, reverse=True)

    def _files(self, name: str) -> list[Path]:
        return [self.directory / f.label for f in self._entries(name)]

    def save(self, name: str, state: dict[str, Any],
             base: SnapshotRef | None = None) -> SnapshotRef:
        if not _NAME.match(name):
            raise CheckpointError(f"bad snapshot name {name!r}")
        if base is not None:
            state = {**state, "base": {"gen": base.gen, "sha256": base.sha256}}
        header, payload = _serialise(state)
        files = self._entries(name)
        gen = files[0].gen + 1 if files else time.time_ns()
        final = self.directory / f"{name}.{gen:020d}.{'delta.' if base else ''}ckpt"
        tmp = self.directory / f".{final.name}.{os.getpid()}.tmp"
        with open(tmp, "wb") as fh:
            fh.write(header)
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, final)
        dir_fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        self._retire(name)
        return SnapshotRef(gen, _digest(header), len(header) + len(payload))

    def _retire(self, name: str) -> None:
        """Remove complete snapshots beyond the newest ``keep``, and deltas older than the
        newest complete one (never one a kept delta builds on: deltas follow their base)."""
        entries = self._entries(name)
        full = [f for f in entries if not f.delta]
        if not full:
            return
        for f in full[self.keep:] + [f for f in entries if f.delta and f.gen < full[0].gen]:
            (self.directory / f.label).unlink(missing_ok=True)

    def _read(self, f: SnapshotEntry) -> tuple[dict[str, Any], str]:
        data = (self.directory / f.label).read_bytes()
        return loads(data), _digest(data)

    def load(self, name: str) -> dict[str, Any] | None:
        """The newest readable state of ``name``: the newest readable complete snapshot
        (skipping torn ones) with the deltas that follow it applied, in order, as long as
        each names the state so far as its base; ``None`` when there is no snapshot;
        :class:`SnapshotsUnreadableError` when none of the complete ones can be read."""
        return restore_newest(name, self._entries(name), self._read)

    def set_aside(self, name: str) -> list[str]:
        """Rename the snapshots of ``name`` to ``*.unreadable`` (kept, never rotated out)."""
        moved = []
        for path in self._files(name):
            target = path.with_name(path.name + ".unreadable")
            os.replace(path, target)
            moved.append(str(target))
        return moved

    def names(self) -> list[str]:
        out = set()
        for p in self.directory.iterdir():
            m = re.match(r"^(.*)\.\d{20}\.(delta\.)?ckpt$", p.name)
            if m:
                out.add(m.group(1))
        return sorted(out)


def save_file(path: str | Path, state: dict[str, Any]) -> None:
    """Atomically write one snapshot to ``path`` (tmp file, fsync, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(dumps(state))
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def load_file(path: str | Path) -> dict[str, Any]:
    return loads(Path(path).read_bytes())
