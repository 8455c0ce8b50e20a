"""Checkpoint stores: durable, atomic snapshots of engine state.

A snapshot is a ``state_dict``-style dict of tensors and plain types, written with
``torch.save`` and read back with ``torch.load(weights_only=True)`` (never a pickle of live
objects), behind a header holding the SHA-256 of the payload. A write goes to a temporary
file that is fsynced and then renamed, so a crash leaves either the old snapshot or the new
one; a torn or corrupted file fails its digest on load and the previous good snapshot is
used instead.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import re
import time
from pathlib import Path
from typing import Any, Protocol

import torch

from streamseq.exceptions import CheckpointError

__all__ = ["CheckpointStore", "LocalCheckpointStore", "SnapshotsUnreadableError", "dumps",
           "loads"]

log = logging.getLogger(__name__)
_NAME = re.compile(r"^[A-Za-z0-9._-]{1,200}$")


MAGIC = b"STREAMSEQ-SNAPSHOT-1\n"


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


def loads(data: bytes) -> dict[str, Any]:
    """Verify the digest, then ``torch.load(weights_only=True)``."""
    if not data.startswith(MAGIC):
        raise CheckpointError("not a streamseq snapshot (bad header)")
    head = len(MAGIC)
    digest, payload = data[head:head + 64].decode("ascii", "replace"), data[head + 65:]
    if hashlib.sha256(payload).hexdigest() != digest:
        raise CheckpointError("snapshot digest mismatch (torn or corrupted file)")
    try:
        state = torch.load(io.BytesIO(payload), weights_only=True, map_location="cpu")
    except Exception as exc:  # noqa: BLE001 - any failure means a bad snapshot
        raise CheckpointError(f"snapshot cannot be read: {exc}") from exc
    if not isinstance(state, dict):
        raise CheckpointError("snapshot is not a dict")
    return state


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

    ``load`` returns the newest readable snapshot, ``None`` when there is none, and raises
    :class:`SnapshotsUnreadableError` when there are snapshots but none can be read.
    ``set_aside`` keeps the unreadable snapshots of ``name`` out of the rotation (for
    inspection) and returns where they went.
    """

    def save(self, name: str, state: dict[str, Any]) -> None: ...

    def load(self, name: str) -> dict[str, Any] | None: ...

    def set_aside(self, name: str) -> list[str]: ...


class LocalCheckpointStore:
    """Snapshots in a local directory, ``keep`` generations per name.

    Examples
    --------
    >>> import tempfile
    >>> store = LocalCheckpointStore(tempfile.mkdtemp())
    >>> store.save("sensors-0", {"offsets": {"0": 41}, "w": torch.ones(2)})
    >>> store.load("sensors-0")["offsets"]
    {'0': 41}
    >>> store.load("missing") is None
    True
    """

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

    def _files(self, name: str) -> list[Path]:
        pattern = re.compile(re.escape(name) + r"\.(\d{20})\.ckpt$")
        found = [(int(m.group(1)), p) for p in self.directory.iterdir()
                 if (m := pattern.match(p.name))]
        return [p for _, p in sorted(found, reverse=True)]

    def save(self, name: str, state: dict[str, Any]) -> None:
        if not _NAME.match(name):
            raise CheckpointError(f"bad snapshot name {name!r}")
        header, payload = _serialise(state)
        files = self._files(name)
        gen = int(files[0].name.rsplit(".", 2)[1]) + 1 if files else time.time_ns()
        final = self.directory / f"{name}.{gen:020d}.ckpt"
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
        for old in self._files(name)[self.keep:]:
            old.unlink(missing_ok=True)

    def load(self, name: str) -> dict[str, Any] | None:
        """The newest readable snapshot of ``name`` (skipping torn ones), or ``None`` when
        there is none; :class:`SnapshotsUnreadableError` when none of them can be read."""
        reasons = []
        for path in self._files(name):
            try:
                return loads(path.read_bytes())
            except (CheckpointError, OSError) as exc:
                log.warning("checkpoint %s is unreadable (%s); trying the previous one",
                            path.name, exc)
                reasons.append(f"{path.name}: {exc}")
        if reasons:
            raise SnapshotsUnreadableError(name, reasons)
        return None

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
            m = re.match(r"^(.*)\.\d{20}\.ckpt$", p.name)
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
