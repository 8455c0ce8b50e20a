"""The process's allocator policy: keep freed memory for reuse (glibc).

Every checkpoint copies the shards' state (hundreds of megabytes at 100k keys) while the
stream waits. glibc serves allocations that large with ``mmap`` and gives them back to the
system when freed, so each copy lands in fresh pages and pays a page fault for every one of
them: measured on a shared 2-core VM, ~1.2 s to copy 400 MB that way against ~0.07 s into
memory the allocator kept (bench/results/checkpoints.md). :func:`reuse_freed_memory` asks
glibc to take large blocks from the heap and not to return freed memory to the system, so the
next copy reuses the last one's pages. The resident size then stays at its peak (the state,
one copy of it, the serialisation buffers) instead of dropping between checkpoints: size the
memory limit for that peak anyway.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

__all__ = ["reuse_freed_memory"]

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def reuse_freed_memory(mmap_threshold: int = 1 << 30, trim_threshold: int = 1 << 31) -> bool:
    """Blocks under ``mmap_threshold`` bytes come from the heap, and up to
    ``trim_threshold`` bytes of freed heap are kept; ``False`` where this is not glibc.

    Examples
    --------
    >>> reuse_freed_memory() in (True, False)
    True
    """
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        log.debug("no glibc mallopt: the allocator keeps its defaults")
        return False
    ok = bool(mallopt(_M_MMAP_THRESHOLD, mmap_threshold)) and bool(
        mallopt(_M_TRIM_THRESHOLD, trim_threshold))
    log.debug("allocator: large blocks from the heap, freed memory kept (%s)", ok)
    return ok
