"""The vectorised drift detector against river's PageHinkley, detection for detection."""

from __future__ import annotations

import numpy as np
import pytest
from river.drift import PageHinkley

from streamseq.config import DriftConfig
from streamseq.evaluation.drift import DriftDetector, page_hinkley_update


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_page_hinkley_matches_river_on_many_keys(seed: int) -> None:
    """Three keys interleaved in one set of arrays, each against its own river detector:
    the same detections at the same steps, and the same state after them."""
    rng = np.random.default_rng(seed)
    cfg = DriftConfig(threshold=8.0)
    det = DriftDetector(cfg)
    det.arrays.grow(3)
    rivers = [PageHinkley(min_instances=cfg.min_instances, delta=cfg.delta,
                          threshold=cfg.threshold, alpha=cfg.alpha) for _ in range(3)]
    level = np.array([0.2, 1.0, 0.5])
    hits = 0
    for step in range(3000):
        if step % 700 == 0:
            level = rng.uniform(0.1, 3.0, size=3)
        slot = int(rng.integers(3))
        x = float(abs(rng.normal(level[slot], 0.3)))
        got = page_hinkley_update(slot, x, det.arrays["n"], det.arrays["stats"], *det.params)
        rivers[slot].update(x)
        assert got == rivers[slot].drift_detected, (step, slot)
        hits += got
    assert hits >= 3


def test_no_detection_on_a_stationary_error() -> None:
    det = DriftDetector(DriftConfig())
    det.arrays.grow(1)
    rng = np.random.default_rng(0)
    assert not any(page_hinkley_update(0, float(abs(rng.normal())), det.arrays["n"],
                                       det.arrays["stats"], *det.params) for _ in range(5000))
