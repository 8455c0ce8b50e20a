"""The process's memory policy: keep freed memory for reuse (glibc), and keep the cyclic
garbage collector off the heap that start-up built.

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
import gc
import logging

__all__ = ["reuse_freed_memory", "freeze_heap"]

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


def freeze_heap(young_threshold: int = 50_000) -> None:
    """Collect once, then move every object alive now out of the cyclic garbage
    collector's sight (:func:`gc.freeze`), and let the youngest generation grow to
    ``young_threshold`` objects before it is collected.

    Call it once the service is warm (its first batch processed: imports done, kernels
    compiled, shards built). Python's full collection walks every tracked object of the
    process, ~250,000 after importing torch, numpy, numba and kafka-python, and it runs
    each time a quarter as many objects again have survived two younger collections; a
    poll's records, events and producer futures do, since they live while the poll is
    processed. Measured in bench/results/e2e.md: full collections every half second of a
    drain, 0.1-0.25 s each, the largest part of the service's CPU per event beyond the
    relay's. Frozen objects are never collected: objects freed by their reference count
    (nearly all) are still freed, and the collect before the freeze leaves no cyclic
    garbage to keep. The youngest generation's threshold (700 by default) is set over
    twice the tracked objects a poll of 2,000 records keeps alive (~12 per record), so
    a poll's objects are freed by their reference counts before a collection sees them.

    Examples
    --------
    >>> before = gc.get_threshold()
    >>> freeze_heap(young_threshold=10_000)
    >>> gc.get_threshold()[0], gc.get_freeze_count() > 0
    (10000, True)
    >>> gc.unfreeze(); gc.set_threshold(*before)
    """
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(young_threshold, middle, old)
    log.debug("heap frozen (%d objects); young generation collected every %d objects",
              gc.get_freeze_count(), young_threshold)
