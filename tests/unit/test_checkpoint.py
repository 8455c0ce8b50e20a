"""Checkpoint exactness (issue 2): run N events, snapshot, restore in a fresh process, run M
more; the forecasts equal those of one uninterrupted run over N + M events."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from streamseq.config import (
    DriftConfig,
    EngineConfig,
    FeatureConfig,
    LearnerConfig,
    ModelConfig,
)
from streamseq.engine import Engine
from streamseq.evaluation.drift import DriftDetector, page_hinkley_update
from streamseq.events import Event
from streamseq.exceptions import CheckpointError
from streamseq.state.checkpoint import (
    LocalCheckpointStore,
    dumps,
    load_file,
    loads,
    save_file,
)

torch.set_num_threads(1)

CHUNK = 9
NAME = "sensors-0"

# Runs in a fresh interpreter: nothing of the test process (imports, RNG, caches) survives.
RESUME = textwrap.dedent('''
    import json
    import sys
    import torch
    torch.set_num_threads(1)
    from streamseq.config import EngineConfig
    from streamseq.engine import Engine
    from streamseq.events import decode_json
    from streamseq.state.checkpoint import LocalCheckpointStore

    for job in json.loads(sys.argv[1]):  # one interpreter for all cases: start-up is slow
        state = LocalCheckpointStore(job["dir"]).load(job["name"])
        engine = Engine(EngineConfig.from_dict(state["config"]))
        engine.load_state_dict(state)
        with open(job["events"], "rb") as fh:
            events = [decode_json(line) for line in fh if line.strip()]
        chunk = job["chunk"]
        outs = [engine.process(events[i:i + chunk]) for i in range(0, len(events), chunk)]
        torch.save({
            "yhat": torch.cat([torch.from_numpy(o.yhat) for o in outs]),
            "err": torch.cat([torch.from_numpy(o.err_model) for o in outs]),
            "weights": torch.cat([p.detach().flatten() for p in engine.model.parameters()]),
            "summary": [engine.summary()["model"][m] for m in ("mae", "rmse", "mse")],
            "updates": engine.stats.updates_applied,
            "accepted": engine.stats.accepted,
        }, job["out"])
''')

CASES = [  # cell, horizon, layers, dropout, snapshot taken between update points
    ("gru", 1, 1, 0.0, False),
    ("lstm", 3, 2, 0.1, True),
]


def _config(cell: str, horizon: int, layers: int = 1, dropout: float = 0.0) -> EngineConfig:
    return EngineConfig(
        values=("x", "y"),
        model=ModelConfig(cell=cell, hidden=8, layers=layers, dropout=dropout, horizon=horizon),
        learner=LearnerConfig(k1=3, k2=6, batch_windows=5, lr=1e-2, seed=3),
        features=FeatureConfig(),
    )


def _stream(n: int, keys: int = 4, seed: int = 0) -> list[Event]:
    rng = np.random.default_rng(seed)
    out: list[Event] = []
    last: dict[str, int] = {}
    for _ in range(n):
        k = f"k{int(rng.integers(keys))}"
        t = last.get(k, 1_700_000_000_000) + int(rng.integers(1_000, 90_000))
        last[k] = t
        x: float | None = float(np.sin(t / 1.8e6) + 0.1 * rng.normal())
        y: float | None = float(rng.normal(5.0, 1.0))
        if rng.random() < 0.1:
            y = None
        out.append(Event("sensor", k, t, {"x": x, "y": y}))
    return out


def _run(engine: Engine, events: list[Event]) -> dict[str, Any]:
    outs = [engine.process(events[i:i + CHUNK]) for i in range(0, len(events), CHUNK)]
    return {
        "yhat": np.concatenate([o.yhat for o in outs]),
        "err": np.concatenate([o.err_model for o in outs]),
        "weights": torch.cat([p.detach().flatten() for p in engine.model.parameters()]),
        "summary": [engine.summary()["model"][m] for m in ("mae", "rmse", "mse")],
        "updates": engine.stats.updates_applied,
        "accepted": engine.stats.accepted,
    }


def _snapshot(tmp: Path, cell: str, horizon: int, layers: int, dropout: float,
              mid_segment: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    """Run N events, snapshot, let the same engine go on (the uninterrupted run); returns
    the resume job for the fresh process and what the uninterrupted run produced."""
    config = _config(cell, horizon, layers, dropout)
    events = _stream(330)
    engine = Engine(config)
    n = 0
    while True:  # N: between update points (windows waiting), or right after one
        step = CHUNK if n < len(events) // 3 else 1
        engine.process(events[n:n + step])
        n += step
        waiting = len(engine.learner.pending) > 1 and engine.segment_events > 1
        at_update = engine.segment_events <= 1  # an update point was just reached
        if n >= len(events) // 3 and (waiting if mid_segment else at_update):
            break
        assert n < 2 * len(events) // 3, "no suitable split point"
    tmp.mkdir()
    LocalCheckpointStore(tmp / "ckpt").save(NAME, engine.state_dict())
    expect = _run(engine, events[n:])
    assert expect["updates"] > 10
    events_path = tmp / "rest.jsonl"
    events_path.write_text("".join(json.dumps(e.to_json_dict()) + "\n" for e in events[n:]))
    job = {"dir": str(tmp / "ckpt"), "name": NAME, "events": str(events_path),
           "out": str(tmp / "resumed.pt"), "chunk": CHUNK}
    return job, expect


def test_restore_in_a_fresh_process_continues_exactly(tmp_path: Path) -> None:
    """GRU h=1 snapshotted at an update point; stacked LSTM h=3 with dropout snapshotted
    mid-segment (captured windows waiting for their update point)."""
    jobs, expected = [], []
    for i, case in enumerate(CASES):
        job, expect = _snapshot(tmp_path / f"case{i}", *case)
        jobs.append(job)
        expected.append(expect)
    script = tmp_path / "resume.py"
    script.write_text(RESUME)
    proc = subprocess.run([sys.executable, str(script), json.dumps(jobs)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for case, job, expect in zip(CASES, jobs, expected, strict=True):
        got = torch.load(job["out"], weights_only=True)
        np.testing.assert_array_equal(got["yhat"].numpy(), expect["yhat"], err_msg=str(case))
        np.testing.assert_array_equal(got["err"].numpy(), expect["err"], err_msg=str(case))
        assert torch.equal(got["weights"], expect["weights"]), case
        assert got["summary"] == expect["summary"], case
        assert (got["updates"], got["accepted"]) == (expect["updates"], expect["accepted"])


def test_restore_right_after_a_drift_detection_continues_exactly(tmp_path: Path) -> None:
    """Checkpoint taken on the event where the drift detector fired. The detector starts
    over on the update *after* a detection; a snapshot that does not keep that would let the
    restored detector fire again where the uninterrupted one does not: with
    ``action="reset"`` forecasts would then differ."""
    rng = np.random.default_rng(1)
    n = 1000
    level = np.where((np.arange(n) // 300) % 2 == 0, 0.1, 2.0)
    x = rng.normal(0.0, level)
    events = [Event("sensor", "a", 60_000 * i, {"x": float(x[i])}) for i in range(n)]
    config = EngineConfig(values=("x",), model=ModelConfig(hidden=8),
                          learner=LearnerConfig(k1=2, k2=6, batch_windows=2, lr=1e-2),
                          drift=DriftConfig(action="reset"))
    a = Engine(config)
    split = None
    for i, e in enumerate(events):
        a.process([e])
        if a.stats.drift_events:
            split = i + 1
            break
    assert split is not None and split < n - 300
    save_file(tmp_path / "engine.ckpt", a.state_dict())
    b = Engine(config)
    b.load_state_dict(load_file(tmp_path / "engine.ckpt"))
    rest = events[split:split + 300]
    ya = np.concatenate([a.process([e]).yhat for e in rest])
    yb = np.concatenate([b.process([e]).yhat for e in rest])
    np.testing.assert_array_equal(yb, ya)


def test_drift_detector_round_trip_after_detection() -> None:
    rng = np.random.default_rng(1)
    xs = np.abs(np.concatenate([rng.normal(0.1, 0.05, 400), rng.normal(2.0, 0.05, 400)]))
    a = DriftDetector(DriftConfig())
    a.arrays.grow(1)

    def feed(d: DriftDetector, x: float) -> bool:
        return page_hinkley_update(0, x, d.arrays["n"], d.arrays["stats"], *d.params)

    first = next(i for i, x in enumerate(xs) if feed(a, float(x)))
    b = DriftDetector(DriftConfig())
    b.arrays.grow(1)
    b.arrays.load_rows(np.array([0]), loads(dumps(a.arrays.state_dict(np.array([0])))))
    rest = xs[first + 1:]
    assert [feed(b, float(x)) for x in rest] == [feed(a, float(x)) for x in rest]


def test_snapshot_is_plain_tensors_and_types(tmp_path: Path) -> None:
    eng = Engine(_config("gru", 2))
    eng.process(_stream(120))
    save_file(tmp_path / "s.ckpt", eng.state_dict())
    raw = load_file(tmp_path / "s.ckpt")  # digest-checked torch.load(weights_only=True)
    assert raw["format_version"] == eng.state_dict()["format_version"]
    again = Engine(_config("gru", 2))
    again.load_state_dict(raw)
    assert again.stats == eng.stats and again.seq == eng.seq
    assert torch.equal(again.table.state, eng.table.state)


@pytest.mark.parametrize("change", [
    {"model.hidden": 16}, {"model.cell": "lstm"}, {"model.horizon": 2}, {"model.layers": 2},
])
def test_mismatched_architecture_is_refused(change: dict[str, Any]) -> None:
    eng = Engine(_config("gru", 1))
    eng.process(_stream(30))
    other = Engine(_config("gru", 1).replace(**change))
    with pytest.raises(CheckpointError):
        other.load_state_dict(eng.state_dict())


def test_other_value_names_or_version_are_refused() -> None:
    eng = Engine(_config("gru", 1))
    eng.process(_stream(30))
    state = eng.state_dict()
    other = Engine(_config("gru", 1).replace(values=("x", "z")))
    with pytest.raises(CheckpointError):
        other.load_state_dict(state)
    with pytest.raises(CheckpointError):
        Engine(_config("gru", 1)).load_state_dict({**state, "format_version": 999})


def test_store_keeps_generations_and_skips_a_torn_snapshot(tmp_path: Path) -> None:
    store = LocalCheckpointStore(tmp_path, keep=2)
    for i in range(4):
        store.save(NAME, {"step": i, "w": torch.full((3,), float(i))})
    files = sorted(tmp_path.glob(f"{NAME}.*.ckpt"))
    assert len(files) == 2
    loaded = store.load(NAME)
    assert loaded is not None and loaded["step"] == 3
    files[-1].write_bytes(files[-1].read_bytes()[:100])  # torn newest snapshot
    loaded = store.load(NAME)
    assert loaded is not None and loaded["step"] == 2
    with pytest.raises(CheckpointError):
        store.save("bad/name", {})
    assert not list(tmp_path.glob(".*.tmp"))


def test_every_snapshot_unreadable_is_an_error_not_a_fresh_start(tmp_path: Path) -> None:
    """No snapshot: None (a new shard). Snapshots that all fail: SnapshotsUnreadableError,
    naming each, so the service decides (refuse, or start fresh deliberately);
    set_aside keeps them out of the rotation for inspection."""
    from streamseq.state.checkpoint import SnapshotsUnreadableError

    store = LocalCheckpointStore(tmp_path, keep=2)
    assert store.load(NAME) is None
    for i in range(2):
        store.save(NAME, {"step": i})
    for f in tmp_path.glob(f"{NAME}.*.ckpt"):
        f.write_bytes(f.read_bytes()[:50])
    with pytest.raises(SnapshotsUnreadableError) as caught:
        store.load(NAME)
    assert len(caught.value.reasons) == 2 and "digest" in str(caught.value)
    kept = store.set_aside(NAME)
    assert len(kept) == 2 and all(Path(k).exists() for k in kept)
    assert store.load(NAME) is None
    for i in range(3):  # new generations rotate among themselves, the evidence stays
        store.save(NAME, {"step": 10 + i})
    assert all(Path(k).exists() for k in kept)
    loaded = store.load(NAME)
    assert loaded is not None and loaded["step"] == 12


def test_exposed_metrics_pass_promtool(tmp_path: Path) -> None:
    """`promtool check metrics` accepts every metric the service exposes (names, units)."""
    import shutil
    import subprocess

    from streamseq.metrics import ServiceMetrics

    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed")
    m = ServiceMetrics(version="0", cell="gru", hidden=8)
    m.declare([("sensors", "sensor"), ("texts", "text")], ["not_json"])
    m.declare_outputs(["predictions"])
    for name in ("streamseq_text_lm_log_loss", "streamseq_text_pending_labels"):
        m.set_level(name, 1.0, {}, "texts", 0)
    m.set_level("streamseq_text_accuracy", 0.5, {"window": "all"}, "texts", 0)
    out = subprocess.run([promtool, "check", "metrics"], input=m.render(), capture_output=True,
                         timeout=60)
    assert out.returncode == 0, out.stdout.decode() + out.stderr.decode()
