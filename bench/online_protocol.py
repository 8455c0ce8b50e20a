"""The published online-forecasting protocol (FSNet, OneNet, LSTD on ETT), run leak-free.

``python -m bench.online_protocol --data FILE.csv[.gz] --horizon H --train-rows A
--val-rows B [--test-start S] [--test-end C] [--seeds 3] [--report-json PATH]``

What it does, row numbers counted from the first data row of the CSV (first column a date,
every other column numeric; all of them go in and all are forecast):

* **Scaling.** Each column is z-scored with the mean and population standard deviation of
  the training rows ``[0, A)`` (sklearn ``StandardScaler``, as the published code). This is
  done by the engine itself: ``FeatureConfig(scaling="fixed")`` and
  :meth:`Engine.fit_scaler` on the training events freeze exactly those statistics. The
  engine's input clip (8 by default) is raised to ``--clip-z`` (1e4): ETTh2's test span
  reaches ``|z| = 51`` and a clipped input would hide the value the model must forecast.
* **Warm-up.** Epochs of predict-then-learn over the training rows (the engine's own TBPTT
  learner). After each epoch (and before the first) the model is validated *online* on
  rows ``[A, A + B)``: a copy of it runs the validation span exactly as the test span will
  be run (context without learning, then predict, score, learn). The epoch with the lowest
  validation MSE is kept (early stopping, ``--patience``). Validation rows choose the epoch
  count only; they are never learned by the model that goes on to the test span.
* **Test.** The kept model starts with an empty hidden state at row ``S`` (default
  ``A + B - 60``, the published 60-row look-back: ETT test rows ``[3540, 14400)``). Rows
  ``[S, A + B)`` are context: fed, not learned, not scored. From row ``A + B`` on every event
  is predicted before it is learned; learned are the forecasts from origins ``>= A + B - 1``
  (each once all its H targets have arrived), as in the published test loop. Scored are the forecasts made at origins ``o`` with
  ``o >= A + B - 1`` and ``o + H < C``: ``H`` targets each, rows ``o+1 .. o+H``.
* **Metric.** MSE and MAE over all scored (origin, step, column) on the z-scored scale,
  computed here from the forecasts (original units) and the file's values: ``z_err =
  (truth - yhat) / std_train``. Persistence (the last value, repeated H times) is scored
  on the very same cells. Mean and sample standard deviation over seeds.
* **Model and mixture.** ``model`` is the recurrent model's own forecast
  (``EngineOutput.model_yhat``: what the engine publishes with the aggregation off,
  ``--no-experts``); it alone is validated for early stopping and it is the figure
  comparable to the published methods. ``mixture`` is what the engine publishes with its
  defaults: the per-key mixture of the model and the experts (:mod:`streamseq.forecast`),
  scored on the same cells. The model does not see the experts, so one run gives both.

At horizon 1 the numbers are comparable to the published table in shared/data/README.md.
At horizons 24 and 48 the published methods learn, after each step, from a window whose
labels lie up to H-1 steps in the future of the next forecast (label leakage); a
predict-then-learn learner only learns a target once it has arrived, so its numbers there
are *not comparable* to theirs.
"""

from __future__ import annotations

import argparse
import copy
import csv
import gzip
import io
import json
import math
import platform
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import cpu_model
from streamseq.backtest import add_engine_args, engine_config_from_args
from streamseq.config import EngineConfig
from streamseq.engine import Engine
from streamseq.events.decode import parse_time
from streamseq.events.schema import Event

__all__ = [
    "Table",
    "Split",
    "load_table",
    "make_events",
    "train_stats",
    "scored_origins",
    "z_errors",
    "persistence_z_errors",
    "ProtocolRun",
    "SeedResult",
    "protocol_config",
    "main",
]

PUBLISHED_H1 = {  # cumulative MSE at horizon 1, shared/data/README.md
    "ETTh2": {"persistence": 0.404, "FSNet": 0.466, "OneNet": 0.380, "LSTD": 0.377},
    "ETTm1": {"persistence": 0.091, "FSNet": 0.085, "OneNet": 0.082, "LSTD": 0.081},
}
CHUNK = 256
NA = ("", "na", "nan", "null", "none")


# ---------------------------------------------------------------------- data
@dataclass
class Table:
    """A CSV whose first column is a time: ``values [rows, columns]`` (NaN = missing)."""

    key: str
    names: tuple[str, ...]
    ts_ms: np.ndarray
    values: np.ndarray

    def __len__(self) -> int:
        return len(self.ts_ms)


def _open(path: Path) -> io.TextIOBase:
    if path.name.endswith(".gz"):
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")  # noqa: SIM115


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (".csv.gz", ".csv"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def load_table(path: str | Path, tz: str = "UTC") -> Table:
    """Read a CSV (or CSV.gz) whose first column is a date and the others numeric."""
    path = Path(path)
    with _open(path) as fh:
        reader = csv.reader(fh)
        header = [h.strip() for h in next(reader)]
        ts: list[int] = []
        rows: list[list[float]] = []
        for line, row in enumerate(reader, start=2):
            if not row:
                continue
            try:
                ts.append(parse_time(row[0], tz))
                rows.append([math.nan if c.strip().lower() in NA else float(c)
                             for c in row[1:len(header)]])
            except ValueError as exc:
                raise ValueError(f"{path}:{line}: {exc}") from None
    return Table(_stem(path), tuple(header[1:]), np.array(ts, dtype=np.int64),
                 np.array(rows, dtype=np.float64))


def make_events(table: Table, lo: int, hi: int) -> list[Event]:
    """Rows ``[lo, hi)`` as sensor events of one key (missing cells as ``None``)."""
    out = []
    names = table.names
    for i in range(lo, hi):
        vals = {n: (None if math.isnan(v) else float(v))
                for n, v in zip(names, table.values[i].tolist(), strict=True)}
        out.append(Event("sensor", table.key, int(table.ts_ms[i]), vals, meta={"row": i}))
    return out


@dataclass(frozen=True)
class Split:
    """Row spans of the protocol: train ``[0, train)``, validation ``[train, val_end)``,
    online test fed from ``test_start``, scored targets ``[val_end, test_end)``."""

    train: int
    val: int
    test_start: int
    test_end: int
    horizon: int = 1

    @property
    def val_end(self) -> int:
        return self.train + self.val

    @property
    def context(self) -> int:
        return max(self.val_end - self.test_start, 0)

    def check(self, n_rows: int) -> None:
        if not (self.train > 0 and self.val >= 0 and self.train <= self.test_start
                and self.test_start <= self.val_end < self.test_end <= n_rows):
            raise ValueError(f"bad split {self} for {n_rows} rows: need 0 < train <= "
                             "test_start <= train+val < test_end <= rows")
        if self.test_end - self.val_end <= self.horizon:
            raise ValueError("test span shorter than the horizon")

    @classmethod
    def from_args(cls, a: argparse.Namespace, n_rows: int) -> Split:
        train = a.train_rows if a.train_rows is not None else int(n_rows * a.train_frac)
        val = a.val_rows if a.val_rows is not None else int(n_rows * a.val_frac)
        start = a.test_start if a.test_start is not None else max(train + val - min(60, val),
                                                                  train)
        end = a.test_end if a.test_end is not None else n_rows
        s = cls(train, val, start, end, engine_config_from_args(a).model.horizon)
        s.check(n_rows)
        return s


def train_stats(table: Table, split: Split) -> tuple[np.ndarray, np.ndarray]:
    """Mean and population std of each column over the training rows (std 1 if constant)."""
    tr = table.values[: split.train]
    mu = np.nanmean(tr, axis=0)
    sd = np.nanstd(tr, axis=0)
    return mu, np.where(sd > 1e-12, sd, 1.0)


def scored_origins(lo: int, first_target: int, end: int, horizon: int) -> np.ndarray:
    """Forecast origins fed from row ``lo`` whose targets are rows ``[first_target, end)``."""
    return np.arange(max(lo, first_target - 1), end - horizon, dtype=np.int64)


def z_errors(values: np.ndarray, yhat_rows: np.ndarray, origins: np.ndarray, horizon: int,
             sd: np.ndarray) -> np.ndarray:
    """``[origins, horizon, columns]``: ``(truth - forecast) / sd`` (NaN where missing)."""
    steps = np.arange(1, horizon + 1)
    truth = values[origins[:, None] + steps[None, :]]
    return (truth - yhat_rows[origins]) / sd


def _ffill(values: np.ndarray) -> np.ndarray:
    out = values.copy()
    for i in range(1, len(out)):
        miss = np.isnan(out[i])
        out[i, miss] = out[i - 1, miss]
    return out


def persistence_z_errors(values: np.ndarray, origins: np.ndarray, horizon: int,
                         sd: np.ndarray) -> np.ndarray:
    """Errors of the last known value at each origin, repeated ``horizon`` times."""
    last = _ffill(values)[origins]
    fc = np.repeat(last[:, None, :], horizon, axis=1)
    rows = np.full((len(values), horizon, values.shape[1]), np.nan)
    rows[origins] = fc
    return z_errors(values, rows, origins, horizon, sd)


def _mse_mae(e: np.ndarray) -> tuple[float, float]:
    ok = ~np.isnan(e)
    if not ok.any():
        return math.nan, math.nan
    return float(np.mean(e[ok] ** 2)), float(np.mean(np.abs(e[ok])))


# ---------------------------------------------------------------------- runner
@dataclass
class SeedResult:
    seed: int
    mse: float
    mae: float
    epochs: int
    val_history: list[float]
    elapsed_s: float
    errors: np.ndarray = field(repr=False)  # [origins, H, columns] z errors
    yhat_rows: np.ndarray = field(repr=False)
    mixture_mse: float = math.nan
    mixture_mae: float = math.nan


def protocol_config(base: EngineConfig, names: Sequence[str], clip_z: float,
                    seed: int) -> EngineConfig:
    """``base`` with the protocol's fixed settings: all columns in and out as levels, fixed
    (training-split) scaling, a wide input clip, the given seed."""
    return base.replace(kind="sensor", values=list(names), targets=None,
                        **{"features.scaling": "fixed", "features.fixed_warmup": 0,
                           "features.clip": clip_z, "features.transforms": {},
                           "learner.seed": seed, "learner.learn": True})


class ProtocolRun:
    """Warm-up, early stopping and the online test span for one table and split.

    Parameters
    ----------
    table, split
        The data and its row spans.
    config
        Engine settings (model, learner); :func:`protocol_config` fixes the rest.
    epochs, patience
        At most ``epochs`` warm-up passes; stop after ``patience`` without a better
        validation MSE.
    """

    def __init__(self, table: Table, split: Split, config: EngineConfig, epochs: int = 10,
                 patience: int = 2, clip_z: float = 1e4, log: Any = None) -> None:
        split.check(len(table))
        if config.model.horizon != split.horizon:
            config = config.replace(**{"model.horizon": split.horizon})
        self.table = table
        self.split = split
        self.config = config
        self.epochs = epochs
        self.patience = patience
        self.clip_z = clip_z
        self.log = log
        self.mu, self.sd = train_stats(table, split)
        self.train_events = make_events(table, 0, split.train)
        # the engine ingests each span fresh; events are immutable, built once
        self._events = make_events(table, 0, split.test_end)

    def _say(self, msg: str) -> None:
        if self.log is not None:
            print(msg, file=self.log, flush=True)

    def new_engine(self, seed: int) -> Engine:
        eng = Engine(protocol_config(self.config, self.table.names, self.clip_z, seed))
        eng.fit_scaler(self.train_events)
        return eng

    def feed(self, eng: Engine, lo: int, hi: int, yhat_rows: np.ndarray | None,
             mixture_rows: np.ndarray | None = None) -> None:
        """Process rows ``[lo, hi)`` in stream order; record each row's model forecast (and
        the published mixture)."""
        for a in range(lo, hi, CHUNK):
            b = min(a + CHUNK, hi)
            out = eng.process(self._events[a:b])
            if yhat_rows is not None and len(out.index):
                yhat_rows[a + out.index] = out.model_yhat
            if mixture_rows is not None and len(out.index):
                mixture_rows[a + out.index] = out.yhat

    def online(self, model: Engine, ctx_lo: int, first_target: int, end: int,
               mixture_rows: np.ndarray | None = None) -> np.ndarray:
        """Predict-then-learn over ``[first_target, end)`` after context ``[ctx_lo,
        first_target)`` (fed, not learned) on a copy of ``model``; model forecasts by row
        (and the mixture's into ``mixture_rows``).

        Only forecasts from origins ``>= first_target - 1`` are learned: at horizon H the
        first window is taken when row ``first_target + H - 1`` arrives."""
        eng = copy.deepcopy(model)
        eng.reset_streams()
        if len(eng.learner.pending):
            eng.learner.pending.clear()  # windows of the warm-up left before an update point
        h, c = self.split.horizon, len(self.table.names)
        yhat_rows = np.full((len(self.table), h, c), np.nan)
        # learning starts with the window of origin first_target - 1 (all its targets are in
        # the span): the engine captures a window when its last target arrives
        on = min(first_target + h - 1, end)
        eng.learning = False
        self.feed(eng, ctx_lo, on, yhat_rows, mixture_rows)
        eng.learning = True
        self.feed(eng, on, end, yhat_rows, mixture_rows)
        return yhat_rows

    def validate(self, model: Engine) -> float:
        s = self.split
        lo = max(s.train - s.context, 0)
        yhat = self.online(model, lo, s.train, s.val_end)
        origins = scored_origins(lo, s.train, s.val_end, s.horizon)
        return _mse_mae(z_errors(self.table.values, yhat, origins, s.horizon, self.sd))[0]

    def warm_up(self, seed: int) -> tuple[Engine, list[float]]:
        """Train on the training rows; returns the engine of the best validation epoch."""
        eng = self.new_engine(seed)
        if self.split.val == 0 or self.epochs == 0:
            for _ in range(self.epochs):
                eng.reset_streams()
                self.feed(eng, 0, self.split.train, None)
            return eng, []
        best = self.validate(eng)
        hist = [best]
        kept = copy.deepcopy(eng)
        worse = 0
        for epoch in range(1, self.epochs + 1):
            eng.reset_streams()
            self.feed(eng, 0, self.split.train, None)
            v = self.validate(eng)
            hist.append(v)
            self._say(f"    seed {seed} epoch {epoch}: val MSE {v:.4f}")
            if v < best:
                best, kept, worse = v, copy.deepcopy(eng), 0
            else:
                worse += 1
                if worse >= self.patience:
                    break
        return kept, hist

    def run_seed(self, seed: int) -> SeedResult:
        t0 = time.perf_counter()
        s = self.split
        model, hist = self.warm_up(seed)
        mixture = np.full((len(self.table), s.horizon, len(self.table.names)), np.nan)
        yhat = self.online(model, s.test_start, s.val_end, s.test_end, mixture)
        origins = self.origins()
        err = z_errors(self.table.values, yhat, origins, s.horizon, self.sd)
        mse, mae = _mse_mae(err)
        mix_mse, mix_mae = _mse_mae(z_errors(self.table.values, mixture, origins, s.horizon,
                                             self.sd))
        epochs = int(np.argmin(hist)) if hist else self.epochs
        return SeedResult(seed, mse, mae, epochs, hist, time.perf_counter() - t0, err, yhat,
                          mix_mse, mix_mae)

    def origins(self) -> np.ndarray:
        s = self.split
        return scored_origins(s.test_start, s.val_end, s.test_end, s.horizon)

    def persistence(self) -> tuple[float, float, np.ndarray]:
        err = persistence_z_errors(self.table.values, self.origins(), self.split.horizon,
                                   self.sd)
        mse, mae = _mse_mae(err)
        return mse, mae, err


# ---------------------------------------------------------------------- report
def _curve(err: np.ndarray, points: int = 400) -> list[float]:
    """Cumulative MSE after each origin, thinned to about ``points`` values."""
    per = np.nanmean(err.reshape(len(err), -1) ** 2, axis=1)
    cum = np.cumsum(per) / np.arange(1, len(per) + 1)
    idx = np.unique(np.linspace(0, len(cum) - 1, points).astype(int))
    return [[int(i), float(cum[i])] for i in idx]  # type: ignore[misc]


def machine() -> dict[str, Any]:
    import os

    cpu = cpu_model()
    return {"nproc": os.cpu_count(), "cpu": cpu, "python": platform.python_version()}


def build_report(run: ProtocolRun, results: list[SeedResult], command: str) -> dict[str, Any]:
    s = run.split
    mses = np.array([r.mse for r in results])
    maes = np.array([r.mae for r in results])
    mix_mses = np.array([r.mixture_mse for r in results])
    mix_maes = np.array([r.mixture_mae for r in results])
    p_mse, p_mae, p_err = run.persistence()
    ddof = 1 if len(results) > 1 else 0
    first = results[0]
    origins = run.origins()
    col = len(run.table.names) - 1  # the last column (ETT: OT, oil temperature)
    n_show = min(400, len(origins))
    sample = {
        "column": run.table.names[col],
        "rows": (origins[:n_show] + 1).tolist(),
        "truth": run.table.values[origins[:n_show] + 1, col].tolist(),
        "model": first.yhat_rows[origins[:n_show], 0, col].tolist(),
        "persistence": _ffill(run.table.values)[origins[:n_show], col].tolist(),
    }
    return {
        "data": run.table.key,
        "model": {"mse": float(mses.mean()), "mae": float(maes.mean()),
                  "mse_std": float(mses.std(ddof=ddof)), "mae_std": float(maes.std(ddof=ddof))},
        "mixture": {"mse": float(mix_mses.mean()), "mae": float(mix_maes.mean()),
                    "mse_std": float(mix_mses.std(ddof=ddof)),
                    "mae_std": float(mix_maes.std(ddof=ddof))},
        "persistence": {"mse": p_mse, "mae": p_mae},
        "horizon": s.horizon,
        "seeds": [r.seed for r in results],
        "per_seed": [{"seed": r.seed, "mse": r.mse, "mae": r.mae,
                      "mixture_mse": r.mixture_mse, "mixture_mae": r.mixture_mae,
                      "epochs": r.epochs,
                      "val_mse": r.val_history, "elapsed_s": r.elapsed_s} for r in results],
        "split": {"train": [0, s.train], "val": [s.train, s.val_end],
                  "test_fed": [s.test_start, s.test_end], "scored_targets": [s.val_end,
                                                                              s.test_end],
                  "scored_origins": int(len(origins)), "columns": list(run.table.names)},
        "config": {"engine": run.config.to_dict(), "epochs_max": run.epochs,
                   "patience": run.patience, "clip_z": run.clip_z,
                   "scaling": "engine fixed scaler fit on train rows (population std)"},
        "comparable_to_published": s.horizon == 1,
        "published_h1": PUBLISHED_H1.get(run.table.key),
        "curve": {"model": _curve(first.errors), "persistence": _curve(p_err)},
        "sample": sample,
        "command": command,
        "machine": machine(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


# ---------------------------------------------------------------------- command line
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.online_protocol",
                                description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, type=Path, help="CSV or CSV.gz: date, numeric...")
    p.add_argument("--train-rows", type=int)
    p.add_argument("--val-rows", type=int)
    p.add_argument("--train-frac", type=float, default=0.2)
    p.add_argument("--val-frac", type=float, default=0.05)
    p.add_argument("--test-start", type=int, help="first row fed in the test phase "
                   "(default train+val-60: the published 60-row look-back)")
    p.add_argument("--test-end", type=int, help="end of the test span (default: all rows; "
                   "ETT: 14400)")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=10, help="most warm-up epochs")
    p.add_argument("--patience", type=int, default=2)
    p.add_argument("--clip-z", type=float, default=1e4, help="engine input clip in z units")
    p.add_argument("--tz", default="UTC", help="zone of dates without one")
    p.add_argument("--report-json", type=Path)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--quiet", action="store_true")
    add_engine_args(p)
    # the protocol's update schedule: one update per step, batch size 1 (tuned: bench/tune)
    p.set_defaults(k1=1, k2=16, batch_windows=1, scaling="fixed", lr=1e-3, hidden=64)
    return p


def run(a: argparse.Namespace, command: str | None = None) -> dict[str, Any]:
    import torch

    torch.set_num_threads(max(1, a.threads))
    table = load_table(a.data, a.tz)
    split = Split.from_args(a, len(table))
    cfg = engine_config_from_args(a)
    log = None if a.quiet else sys.stderr
    pr = ProtocolRun(table, split, cfg, epochs=a.epochs, patience=a.patience,
                     clip_z=a.clip_z, log=log)
    results = []
    for seed in range(a.seeds):
        r = pr.run_seed(seed)
        results.append(r)
        if log:
            print(f"  {table.key} H={split.horizon} seed {seed}: MSE {r.mse:.4f} MAE "
                  f"{r.mae:.4f}, mixture MSE {r.mixture_mse:.4f} (epochs {r.epochs}, "
                  f"{r.elapsed_s:.0f}s)", file=log, flush=True)
    rep = build_report(pr, results, command or "python -m bench.online_protocol " +
                       " ".join(sys.argv[1:]))
    return rep


def main(argv: Sequence[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    cmd = "python -m bench.online_protocol " + " ".join(sys.argv[1:] if argv is None else argv)
    rep = run(a, cmd)
    m, x, p = rep["model"], rep["mixture"], rep["persistence"]
    print(f"{rep['data']} H={rep['horizon']} seeds={rep['seeds']}: model MSE {m['mse']:.4f} "
          f"+- {m['mse_std']:.4f}  MAE {m['mae']:.4f} +- {m['mae_std']:.4f} | mixture MSE "
          f"{x['mse']:.4f} +- {x['mse_std']:.4f} MAE {x['mae']:.4f} | persistence "
          f"MSE {p['mse']:.4f} MAE {p['mae']:.4f}")
    pub = rep["published_h1"]
    if pub:
        note = "comparable" if rep["horizon"] == 1 else "NOT comparable (published H>1 leaks)"
        print(f"published H=1 MSE ({note}): " + ", ".join(f"{k} {v}" for k, v in pub.items()))
    if a.report_json:
        a.report_json.parent.mkdir(parents=True, exist_ok=True)
        a.report_json.write_text(json.dumps(rep, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
