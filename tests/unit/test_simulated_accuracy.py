"""The forecaster on simulated streams: it beats persistence where there is something to
learn (seasonal sensors) and does not pretend to on a pure random walk."""

from __future__ import annotations

import numpy as np

from simulators.sensors import SensorSimulator
from streamseq.backtest import Backtest
from streamseq.config import EngineConfig, LearnerConfig, ModelConfig
from streamseq.events import Event, EventDecoder

CFG = EngineConfig(model=ModelConfig(hidden=16),
                   learner=LearnerConfig(k1=4, k2=16, batch_windows=4, lr=3e-3, seed=0))


def _run(events: list[Event]) -> dict:
    bt = Backtest(CFG)
    bt.run(events)
    return bt.report()["overall"]


def test_beats_persistence_on_seasonal_sensors() -> None:
    sim = SensorSimulator(n_sensors=4, values=("temp",), seed=5, steps=1500, interval=3600.0,
                          noise=0.1)
    decoder = EventDecoder()
    events = [decoder.decode(payload) for _, payload, _ in sim.messages()]
    report = _run(events)
    model, naive = report["model"]["mae"], report["persistence"]["mae"]
    assert model < 0.85 * naive, (model, naive)  # measured about 0.7


def test_does_not_beat_a_random_walk() -> None:
    rng = np.random.default_rng(11)
    walk = np.cumsum(rng.normal(size=(3, 2000)), axis=1) + 100.0
    events = [Event("sensor", f"rw{k}", 60_000 * i, {"x": float(walk[k, i])})
              for i in range(walk.shape[1]) for k in range(walk.shape[0])]
    report = _run(events)
    model, naive = report["model"]["mae"], report["persistence"]["mae"]
    # persistence is the optimal forecast of a random walk: an honest learner ends up close
    # to it, and a result clearly below it would mean leakage
    assert model > 0.98 * naive, (model, naive)
    assert model < 1.15 * naive, (model, naive)
