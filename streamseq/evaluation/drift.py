"""Drift detection per key: river's ADWIN on each key's absolute (scaled) one-step error."""

from __future__ import annotations

from typing import Any

import torch
from river.drift import ADWIN

__all__ = ["DriftMonitor"]


class DriftMonitor:
    """One ADWIN per key slot, created on first use.

    The detectors' state is saved with the checkpoint as the bytes ADWIN's own
    ``__getstate__`` gives (a flat binary layout, not a pickle).

    Examples
    --------
    >>> m = DriftMonitor(delta=0.002)
    >>> hits = [m.update(0, 0.1 if i < 500 else 3.0) for i in range(1000)]
    >>> any(hits[500:600]), m.detections
    (True, 1)
    """

    def __init__(self, delta: float = 0.002) -> None:
        self.delta = delta
        self.detectors: dict[int, ADWIN] = {}
        self.detections = 0

    def update(self, slot: int, abs_error: float) -> bool:
        det = self.detectors.get(slot)
        if det is None:
            det = self.detectors[slot] = ADWIN(delta=self.delta)
        det.update(abs_error)
        if det.drift_detected:
            self.detections += 1
            return True
        return False

    def forget(self, slots: list[int]) -> None:
        for s in slots:
            self.detectors.pop(s, None)

    def state_dict(self) -> dict[str, Any]:
        slots = sorted(self.detectors)
        blobs = []
        for s in slots:
            d = self.detectors[s]
            raw = d._helper.__getstate__()  # ADWIN's own flat binary state
            blobs.append(torch.frombuffer(bytearray(raw), dtype=torch.uint8).clone())
        return {"delta": self.delta, "detections": self.detections, "slots": slots,
                "clock": [int(self.detectors[s].clock) for s in slots],
                "detected": [bool(self.detectors[s].drift_detected) for s in slots],
                "blobs": blobs}

    def load_state_dict(self, d: dict[str, Any]) -> None:
        self.delta = float(d["delta"])
        self.detections = int(d["detections"])
        self.detectors = {}
        for slot, clock, detected, blob in zip(d["slots"], d["clock"], d["detected"], d["blobs"],
                                               strict=True):
            det = ADWIN(delta=self.delta)
            det._helper.__setstate__(bytes(blob.numpy().tobytes()))
            det.clock = clock
            det._drift_detected = detected  # ADWIN resets its window on the next update
            self.detectors[int(slot)] = det
