"""Shared fixtures. Integration fixtures start real servers (embedded Kafka broker)."""

from __future__ import annotations

import gc
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

# Small recurrent models run faster on one thread, and CI has two cores for everything.
torch.set_num_threads(1)

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
if not DATA.exists():  # a clean clone sits beside shared/ as well
    DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not DATA.exists():
        pytest.skip("shared/data is not present beside the checkout")
    return DATA


@pytest.fixture(scope="session")
def broker() -> Iterator[object]:
    """One real embedded broker (Tansu) per test session."""
    from streamseq.broker import EmbeddedBroker

    b = EmbeddedBroker()
    b.start()
    yield b
    b.stop()


@pytest.fixture(autouse=True)
def _collector_as_found() -> Iterator[None]:
    """A service run in this process freezes the heap and raises the collector's young
    threshold (``service.memory.freeze_heap``): undo it, so no later test inherits it."""
    threshold = gc.get_threshold()
    yield
    if gc.get_freeze_count():
        gc.unfreeze()
    gc.set_threshold(*threshold)


@pytest.fixture()
def unique() -> str:
    """A short unique suffix for topic and group names of one test."""
    return uuid.uuid4().hex[:10]
