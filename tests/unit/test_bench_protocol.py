"""The accuracy benches: the online protocol harness is exact and leak-free; peers run."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from bench import peers
from bench.online_protocol import ProtocolRun, Split, load_table, z_errors
from streamseq.config import EngineConfig, LearnerConfig, ModelConfig
from streamseq.engine import Engine, Shard
from streamseq.learner.tbptt import OnlineLearner

TRAIN, VAL, ROWS = 40, 20, 100


def _write_csv(path: Path, rows: int = ROWS, wave: bool = True) -> Path:
    """Columns: ``rowid`` = the row number (decodable from any scaled target), ``alt`` =
    0, 2, 0, 2, ... and (``wave``) a noisy daily wave."""
    rng = np.random.default_rng(0)
    lines = ["date,rowid,alt" + (",wave" if wave else "")]
    for t in range(rows):
        day, hour = divmod(t, 24)
        w = math.sin(2 * math.pi * t / 24) + 0.1 * rng.standard_normal()
        lines.append(f"2020-01-{day + 1:02d} {hour:02d}:00:00,{t},{2 * (t % 2)}"
                     + (f",{w!r}" if wave else ""))
    path.write_text("\n".join(lines) + "\n")
    return path


def _small_config() -> EngineConfig:
    return EngineConfig(model=ModelConfig(hidden=8),
                        learner=LearnerConfig(k1=1, k2=4, batch_windows=1, lr=1e-2))


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


@pytest.mark.parametrize("horizon", [1, 2])
def test_persistence_mse_matches_hand_computation(tmp_path: Path, horizon: int) -> None:
    table = load_table(_write_csv(tmp_path / "syn.csv", wave=False))
    split = Split(TRAIN, VAL, TRAIN + VAL - min(60, VAL), ROWS, horizon)
    pr = ProtocolRun(table, split, _small_config(), epochs=0)
    mse, mae, err = pr.persistence()
    # rowid: training values 0..39, mean 19.5, population variance (40^2 - 1) / 12 = 133.25;
    # the last value misses by j at step j. alt: training mean 1, std 1; it misses by 2 at
    # odd steps and by 0 at even steps.
    var = 133.25
    if horizon == 1:
        want_mse, want_mae = (1 / var + 4) / 2, (1 / math.sqrt(var) + 2) / 2
    else:
        want_mse = ((1 + 4) / var + 4 + 0) / 4
        want_mae = ((1 + 2) / math.sqrt(var) + 2 + 0) / 4
    assert mse == pytest.approx(want_mse, rel=1e-12, abs=0)
    assert mae == pytest.approx(want_mae, rel=1e-12, abs=0)
    # scored: origins 59 .. 99 - H, i.e. targets from row train + val = 60 to the last row
    assert err.shape == (ROWS - horizon - (TRAIN + VAL - 1), horizon, 2)


def test_engine_errors_are_the_harness_z_errors(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """The engine's own scaled errors (err / scale, with the fixed training-split scaler)
    equal the harness' (truth - yhat) / train std: the z-scoring is exact."""
    table = load_table(_write_csv(tmp_path / "syn.csv"))
    split = Split(TRAIN, VAL, TRAIN + VAL - 20, ROWS, 1)
    pr = ProtocolRun(table, split, _small_config(), epochs=1, patience=1)
    seen: list[tuple[np.ndarray, Any]] = []
    orig = Engine.process

    def process(self: Engine, events: Any) -> Any:
        out = orig(self, events)
        rows = np.array([e.meta["row"] for e in events])[out.index]
        seen.append((rows, out))
        return out

    monkeypatch.setattr(Engine, "process", process)
    res = pr.run_seed(0)
    origins = pr.origins()
    want = z_errors(table.values, res.yhat_rows, origins, 1, pr.sd)[:, 0]
    got = np.full((ROWS, 3), np.nan)
    for rows, out in seen:  # rows >= train + val are only ever fed in the test phase
        got[rows] = out.err_model[:, 0] / out.scale[:, 0]
    assert np.allclose(got[origins + 1], want, rtol=1e-9, atol=1e-9)
    assert res.mse == pytest.approx(float(np.mean(want ** 2)), rel=1e-12)


@pytest.mark.parametrize("horizon", [1, 3])
def test_never_trains_on_a_target_before_predicting_it(tmp_path: Path, horizon: int,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    table = load_table(_write_csv(tmp_path / "syn.csv"))
    split = Split(TRAIN, VAL, TRAIN + VAL - 10, ROWS, horizon)
    pr = ProtocolRun(table, split, _small_config(), epochs=2, patience=2)
    mu, sd = pr.mu[0], pr.sd[0]
    log: list[dict[str, Any]] = []

    orig_update = OnlineLearner.update

    def update(self: OnlineLearner) -> Any:
        if len(self.pending):
            x, y, w = self.pending.view()[:3]
            y = y.reshape(*y.shape[:2], horizon, -1)[..., 0]
            w = w.reshape(*w.shape[:2], horizon, -1)[..., 0]
            rows = np.rint(y[w > 0].astype(np.float64) * sd + mu).astype(int)
            self.__dict__.setdefault("trained", []).extend(rows.tolist())
        return orig_update(self)

    orig_process, orig_advance = Shard.process, Shard._advance

    def process(self: Shard, events: Any, stats: Any, learning: bool, scoring: bool) -> Any:
        self.__dict__["learning_now"] = learning
        return orig_process(self, events, stats, learning, scoring)

    def advance(self: Shard, poll: Any, rows: np.ndarray, *rest: Any) -> None:
        orig_advance(self, poll, rows, *rest)  # weights are fixed inside a segment
        trained = self.learner.__dict__.get("trained", [])
        for r in poll.raw[rows, 0].astype(int).tolist():  # the forecast from row r is recorded
            log.append({"row": r, "engine": self, "learning": self.learning_now,
                        "max_trained": max(trained, default=-1),
                        "trained": frozenset(trained)})

    monkeypatch.setattr(OnlineLearner, "update", update)
    monkeypatch.setattr(Shard, "process", process)
    monkeypatch.setattr(Shard, "_advance", advance)
    res = pr.run_seed(0)

    assert log and any(e["max_trained"] >= 0 for e in log)
    # Forecasts from rows before train - 1 are warm-up replays (epoch 2 re-reads the rows
    # epoch 1 learned) and context; none enters a metric. Every forecast from row r >=
    # train - 1 (all validation and test origins) is made before any target after r
    # reached training, in whichever engine made it.
    scored = [e for e in log if e["row"] >= split.train - 1]
    assert scored
    for e in scored:
        assert e["max_trained"] <= e["row"], e
    # (the log keeps every engine alive, so identities are not reused)
    test_engines = {id(e["engine"]) for e in log if e["row"] >= split.val_end}
    assert len(test_engines) == 1
    test_log = [e for e in log if id(e["engine"]) in test_engines]
    val_rows = set(range(split.train, split.val_end))
    for e in test_log:  # the test model never learned the validation rows
        assert not (e["trained"] & val_rows)
    # context rows are fed without learning, then every step learns
    assert [e["row"] for e in test_log] == list(range(split.test_start, split.test_end))
    assert not any(e["learning"] for e in test_log if e["row"] < split.val_end + horizon - 1)
    assert all(e["learning"] for e in test_log if e["row"] >= split.val_end + horizon - 1)
    # learning keeps up: when forecasting from the last row, the row before it is learned
    assert test_log[-1]["max_trained"] == split.test_end - 2
    # every scored origin has a forecast
    assert np.isfinite(res.yhat_rows[pr.origins()]).all()
    assert math.isfinite(res.mse)


def test_peer_bench_end_to_end(data_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "peers.json"
    md = tmp_path / "peers.md"
    assert peers.main(["--rows", "80", "--data-dir", str(data_dir), "--quiet",
                       "--report-json", str(out), "--markdown", str(md)]) == 0
    rep = json.loads(out.read_text())
    assert set(rep["datasets"]) == set(peers.DATASETS)
    for name, d in rep["datasets"].items():
        methods = set(d["metrics"])
        assert {"gru", "lstm", "persistence", "snarimax", "holtwinters",
                "windowed"} <= methods, name
        assert ("seasonal" in methods) == (d["kind"] == "sensor"), name
        for m, r in d["metrics"].items():
            assert math.isfinite(r["mae"]) and math.isfinite(r["rmse"]), (name, m)
            assert r["cells"] > 0 and r["events_per_s"] > 0, (name, m)
        assert d["metrics"]["persistence"]["mase"] == pytest.approx(1.0)
        if d["kind"] == "price":
            assert d["metrics"]["persistence"]["direction"] == pytest.approx(0.5)
    assert "### nab" in md.read_text()
