"""Seeded construction of torch modules that leaves the caller's random state alone."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

__all__ = ["seeded_init"]


@contextlib.contextmanager
def seeded_init(seed: int) -> Iterator[None]:
    """Build modules from ``seed`` without touching the global RNG state.

    Examples
    --------
    >>> from torch import nn
    >>> with seeded_init(3):
    ...     a = nn.Linear(2, 2).weight.tolist()
    >>> with seeded_init(3):
    ...     b = nn.Linear(2, 2).weight.tolist()
    >>> a == b
    True
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield
