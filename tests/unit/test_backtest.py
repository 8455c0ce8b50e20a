"""``streamseq backtest`` end to end on a real NAB series (issue 2)."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from streamseq.backtest import Backtest
from streamseq.cli import main
from streamseq.config import EngineConfig, LearnerConfig, ModelConfig, StateConfig
from streamseq.events import Event

torch.set_num_threads(1)

SERIES = Path("sensor") / "nab" / "data" / "realTraffic" / "speed_7578.csv"
FAST = ["--no-progress", "--hidden", "8", "--k1", "2", "--k2", "6", "--batch-windows", "2"]


def _rows(data_dir: Path) -> tuple[list[str], list[list[str]]]:
    with open(data_dir / SERIES, newline="") as fh:
        rows = list(csv.reader(fh))
    return rows[0], rows[1:]


def _write(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)
    return path


def _check_metrics(obj: dict[str, Any]) -> None:
    for side in ("model", "persistence"):
        assert set(obj[side]) >= {"mae", "rmse", "mse", "mase"}
        assert obj[side]["mae"] > 0 and obj[side]["rmse"] ** 2 == pytest.approx(obj[side]["mse"])


def test_backtest_prints_a_table_and_writes_the_json_report(
        data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    report_path = tmp_path / "report.json"
    preds = tmp_path / "predictions.jsonl"
    code = main(["backtest", str(data_dir / SERIES), "--limit", "400", "--report-json",
                 str(report_path), "--predictions", str(preds), *FAST])
    assert code == 0
    printed = capsys.readouterr().out
    assert "MAE" in printed and "MASE" in printed and "OVERALL" in printed
    assert "speed_7578" in printed
    report = json.loads(report_path.read_text())
    assert set(report) >= {"overall", "keys"}
    assert report["overall"]["events"] == 400
    assert list(report["keys"]) == ["speed_7578"]
    _check_metrics(report["overall"])
    _check_metrics(report["keys"]["speed_7578"])
    # persistence figures are checkable by hand: mean |x_t - x_{t-1}| over the slice
    _, rows = _rows(data_dir)
    x = np.array([float(r[1]) for r in rows[:400]])
    naive = report["overall"]["persistence"]
    assert naive["mae"] == pytest.approx(np.abs(np.diff(x)).mean(), rel=1e-9)
    assert naive["mse"] == pytest.approx((np.diff(x) ** 2).mean(), rel=1e-9)
    assert report["overall"]["model"]["mase"] == pytest.approx(
        report["overall"]["model"]["mae"] / naive["mae"], rel=1e-9)
    records = [json.loads(line) for line in preds.read_text().splitlines()]
    assert len(records) == 400 and records[0]["key"] == "speed_7578"
    assert len({r["id"] for r in records}) == 400


def test_warmup_rows_are_trained_on_but_not_scored(data_dir: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    report_path = tmp_path / "report.json"
    assert main(["backtest", str(data_dir / SERIES), "--limit", "400", "--warmup-rows", "100",
                 "--warmup-epochs", "2", "--report-json", str(report_path), *FAST]) == 0
    capsys.readouterr()
    report = json.loads(report_path.read_text())
    assert report["overall"]["events"] == 300
    assert report["overall"]["scored"] == 300
    _, rows = _rows(data_dir)
    x = np.array([float(r[1]) for r in rows[:400]])
    # the first online event scores the forecast made at the last warm-up row
    assert report["overall"]["persistence"]["mae"] == pytest.approx(
        np.abs(np.diff(x[99:])).mean(), rel=1e-9)


def test_save_checkpoint_then_resume_equals_one_run(data_dir: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    header, rows = _rows(data_dir)
    full = _write(tmp_path / "full" / "series.csv", header, rows[:600])
    first = _write(tmp_path / "a" / "series.csv", header, rows[:300])
    second = _write(tmp_path / "b" / "series.csv", header, rows[300:600])
    ckpt = tmp_path / "state.ckpt"
    reports = {name: tmp_path / f"{name}.json" for name in ("full", "first", "resumed")}
    assert main(["backtest", str(full), "--report-json", str(reports["full"]), *FAST]) == 0
    assert main(["backtest", str(first), "--report-json", str(reports["first"]),
                 "--save-checkpoint", str(ckpt), *FAST]) == 0
    assert ckpt.exists()
    assert main(["backtest", str(second), "--report-json", str(reports["resumed"]),
                 "--checkpoint", str(ckpt), *FAST]) == 0
    capsys.readouterr()
    got = {k: json.loads(p.read_text()) for k, p in reports.items()}
    assert got["resumed"]["overall"]["events"] == 300
    one, resumed = got["full"]["keys"]["series"], got["resumed"]["keys"]["series"]
    for side in ("model", "persistence"):
        for metric in ("mae", "rmse", "mse"):
            assert resumed[side][metric] == pytest.approx(one[side][metric], rel=1e-5), (
                side, metric)
    assert got["first"]["keys"]["series"]["model"]["mae"] != pytest.approx(
        one["model"]["mae"], rel=1e-3)


def test_warmup_epochs_do_not_evict_keys_that_are_never_idle() -> None:
    """Regression test: ``Engine.reset_streams`` (between warm-up epochs) once forgot every
    key's last event time but kept the shard's ``max_ts``, so in the second epoch every key
    looked idle for the whole span of the data and ``idle_ttl_s`` evicted them at each update
    point (their state, scalers and buffers were thrown away mid warm-up)."""
    events = [Event("sensor", f"k{i % 2}", 60_000 * (i // 2), {"x": float(np.sin(i / 10))})
              for i in range(400)]
    config = EngineConfig(model=ModelConfig(hidden=8),
                          learner=LearnerConfig(k1=2, k2=4, batch_windows=2),
                          state=StateConfig(idle_ttl_s=600.0))  # events every 2 minutes
    for epochs in (1, 2):
        bt = Backtest(config, warmup_rows=100, warmup_epochs=epochs)
        bt.run(events)
        (engine,) = bt.engines.values()
        assert engine.stats.evicted == 0, f"{epochs} warm-up epochs"
