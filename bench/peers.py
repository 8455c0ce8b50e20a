"""Peers on real streams: one-step-ahead online forecasting, predict then learn.

``python -m bench.peers [--rows N] [--datasets nab,beijing,...] [--methods ...]``

Every method sees the same events in the same order (a dataset's keys interleaved by event
time), forecasts each key's next value before it arrives, then learns from it. All start
cold (no warm-up, no tuning on the data). Methods:

* ``gru``, ``lstm``: the streamseq engine (:class:`streamseq.engine.Engine`) with the
  service defaults of ``streamseq/config.py`` (online scaling, TBPTT), one shard per
  dataset (weights shared by its keys, one hidden state per key), the aggregation off
  (``--no-experts``): the bare recurrent model.
* ``mixture``: the same engine with its defaults: what it publishes, the per-key mixture
  of the GRU and the experts (:mod:`streamseq.forecast`); its prediction interval is
  scored too (coverage, mean width and Winkler score in the report's ``interval``).
* ``persistence``: the last value (for prices: the random walk, a zero return).
* ``seasonal``: seasonal naive, the value one period ago (sensor sets with a period).
* ``snarimax``, ``holtwinters``: river ``time_series`` models, one per key and channel, on
  SNARIMAX on values scaled by a running mean/std frozen after 100 values (inputs clipped to
  +-8; a diverged model is replaced, see ``resets``), HoltWinters on raw values (it is
  scale-free) with fixed, untuned smoothing constants. HoltWinters gets the period where the
  data has one; river 0.26 initialises an *additive* season with ratios
  ``y / level`` (meant for the multiplicative case), the bench re-initialises it with
  differences ``y - level``.
* ``windowed``: the deep-river way, in plain torch: an LSTM of the engine's hidden size that
  re-runs the key's last 32 inputs on every event to forecast, and makes one Adam step on
  the previous window with the value that just arrived (same inputs as the engine: scaled
  values, missing flags, calendar; same residual head for levels).

Sensor sets forecast every numeric channel in levels. Price sets forecast log returns of
one price channel (all methods, the engine's own price transform): the engine's price
forecast is turned back into a return ``log(yhat / last)``. Metrics per dataset, on the
events every method forecast: MAE and RMSE in units of each (key, channel) series' standard
deviation over the slice (a reporting scale only, no method sees it); MASE = MAE / MAE of
persistence (the random walk for prices) on the same cells; events/s from the CPU time of
each method's whole pass (one thread); for prices the direction accuracy on events whose
return is not zero (a zero forecast counts one half, so the random walk scores 0.5).
"""

from __future__ import annotations

import argparse
import csv
import gzip
import heapq
import io
import json
import math
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench.online_protocol import machine
from streamseq.backtest import add_engine_args, engine_config_from_args
from streamseq.config import EngineConfig, StateConfig
from streamseq.engine import Engine
from streamseq.events.decode import parse_time
from streamseq.events.schema import Event
from streamseq.features.calendar import calendar_features

__all__ = ["DatasetSpec", "Dataset", "DATASETS", "TUNING", "load_dataset", "evaluate",
           "evaluate_interval", "scored_cells", "as_target",
           "METHODS", "engine_config", "run_engine", "run_peers", "main"]

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
WINDOW = 32
CLIP = 8.0
SCALE_FREEZE = 100
GUARD = 100.0


# ---------------------------------------------------------------------- datasets
@dataclass(frozen=True)
class DatasetSpec:
    """One benchmark stream: files (one key each unless ``key_col``), compared columns."""

    name: str
    kind: str
    files: tuple[str, ...]
    columns: tuple[str, ...]
    period: int | None = None  # events per season (per file via ``periods``)
    periods: tuple[int, ...] | None = None
    time_col: str | None = None  # None: year, month, day, hour columns
    tz: str = "UTC"
    start: str | None = None  # first event time of the slice
    adjust: str | None = None  # "split": multiply prices by split_factor
    drop_col: str | None = None  # rows whose column is non-zero are dropped
    note: str = ""


DATASETS: dict[str, DatasetSpec] = {
    "nab": DatasetSpec(
        "nab", "sensor",
        ("sensor/nab/data/realKnownCause/machine_temperature_system_failure.csv",
         "sensor/nab/data/realKnownCause/nyc_taxi.csv",
         "sensor/nab/data/realAWSCloudwatch/ec2_cpu_utilization_5f5533.csv"),
        ("value",), periods=(288, 48, 288), time_col="timestamp",
        note="NAB: machine temperature (5 min), NYC taxi (30 min), EC2 CPU (5 min)"),
    "beijing": DatasetSpec(
        "beijing", "sensor",
        ("sensor/beijing_air/PRSA_Data_Aotizhongxin_20130301-20170228.csv.gz",
         "sensor/beijing_air/PRSA_Data_Dongsi_20130301-20170228.csv.gz"),
        ("PM2.5", "PM10", "SO2", "NO2", "CO", "O3", "TEMP", "PRES", "DEWP", "RAIN", "WSPM"),
        period=24, tz="Asia/Shanghai", note="Beijing air, 2 stations, 11 channels, 1 h, NA gaps"),
    "etth2": DatasetSpec("etth2", "sensor", ("sensor/ett/ETTh2.csv",),
                         ("HUFL", "HULL", "MUFL", "MULL", "LUFL", "LULL", "OT"), period=24,
                         time_col="date", note="ETTh2, 7 channels, 1 h"),
    "ettm1": DatasetSpec("ettm1", "sensor", ("sensor/ett/ETTm1.csv.gz",),
                         ("HUFL", "HULL", "MUFL", "MULL", "LUFL", "LULL", "OT"), period=96,
                         time_col="date", note="ETTm1, 7 channels, 15 min"),
    "ticks": DatasetSpec("ticks", "price",
                         ("price/lean_equity_ticks/SPY_trades_20131007-11.csv.gz",),
                         ("price",), time_col="timestamp_ny", tz="America/New_York",
                         start="2013-10-07 09:30:00", drop_col="suspicious",
                         note="SPY trade ticks from the 2013-10-07 open (suspicious dropped, "
                              "repeated same-ms same-price trades dropped, as the engine's duplicate policy does)"),
    "hourly": DatasetSpec("hourly", "price",
                          ("price/lean_equity_hourly/SPY.csv.gz",
                           "price/lean_equity_hourly/AAPL.csv.gz"),
                          ("close",), time_col="timestamp_ny", tz="America/New_York",
                          start="2019-01-01 00:00:00", adjust="split",
                          note="SPY and AAPL hourly bars from 2019, split-adjusted close"),
    "fx": DatasetSpec("fx", "price",
                      ("price/lean_fx_hourly/oanda_EURUSD.csv.gz",
                       "price/lean_fx_hourly/oanda_XAUUSD.csv.gz"),
                      ("bid_close",), time_col="timestamp_utc", start="2016-01-01 00:00:00",
                      note="EURUSD and XAUUSD hourly bid close from 2016"),
}


# Held-out keys for bench.tune (``--suite heldout``): the same kinds of stream, none of the
# files above, so defaults chosen on them are not chosen on the peers' test streams.
TUNING: dict[str, DatasetSpec] = {
    "nab_heldout": DatasetSpec(
        "nab_heldout", "sensor",
        ("sensor/nab/data/realKnownCause/ambient_temperature_system_failure.csv",
         "sensor/nab/data/realTraffic/occupancy_6005.csv",
         "sensor/nab/data/realAWSCloudwatch/rds_cpu_utilization_cc0c53.csv"),
        ("value",), periods=(24, 288, 288), time_col="timestamp",
        note="NAB: ambient temperature (1 h), traffic occupancy (5 min), RDS CPU (5 min)"),
    "beijing_heldout": DatasetSpec(
        "beijing_heldout", "sensor",
        ("sensor/beijing_air/PRSA_Data_Changping_20130301-20170228.csv.gz",),
        DATASETS["beijing"].columns, period=24, tz="Asia/Shanghai",
        note="Beijing air, Changping station"),
    "etth1": DatasetSpec("etth1", "sensor", ("sensor/ett/ETTh1.csv",),
                         DATASETS["etth2"].columns, period=24, time_col="date", note="ETTh1"),
    "ticks_heldout": DatasetSpec(
        "ticks_heldout", "price", ("price/lean_equity_ticks/BAC_trades_20131007-11.csv.gz",),
        ("price",), time_col="timestamp_ny", tz="America/New_York",
        start="2013-10-07 09:30:00", drop_col="suspicious", note="BAC trade ticks"),
    "hourly_heldout": DatasetSpec(
        "hourly_heldout", "price", ("price/lean_equity_hourly/IBM.csv.gz",), ("close",),
        time_col="timestamp_ny", tz="America/New_York", start="2019-01-01 00:00:00",
        adjust="split", note="IBM hourly bars"),
    "fx_heldout": DatasetSpec(
        "fx_heldout", "price", ("price/lean_fx_hourly/oanda_NZDUSD.csv.gz",), ("bid_close",),
        time_col="timestamp_utc", start="2016-01-01 00:00:00", note="NZDUSD hourly"),
}


@dataclass
class Dataset:
    """A dataset's events (stream order) and the arrays the metrics need."""

    spec: DatasetSpec
    events: list[Event]
    keys: list[str]
    key_idx: np.ndarray  # [n]
    ts: np.ndarray  # [n] epoch ms
    values: np.ndarray  # [n, c] compared columns, NaN = missing
    prev: np.ndarray  # [n] index of the key's previous event, -1 if none
    periods: dict[str, int] = field(default_factory=dict)

    @property
    def is_price(self) -> bool:
        return self.spec.kind == "price"

    def __len__(self) -> int:
        return len(self.events)


def _open(path: Path) -> io.TextIOBase:
    if path.name.endswith(".gz"):
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")  # noqa: SIM115


def _key_of(path: Path) -> str:
    name = path.name
    for s in (".csv.gz", ".csv"):
        if name.endswith(s):
            name = name[: -len(s)]
    for prefix in ("PRSA_Data_", "oanda_"):
        name = name.removeprefix(prefix)
    return name.split("_2013")[0].split("_trades")[0]


def _iter_rows(spec: DatasetSpec, path: Path, rows: int) -> Iterator[Event]:
    """The first ``rows`` usable rows of one file from ``spec.start`` on, as events."""
    key = _key_of(path)
    start = parse_time(spec.start, spec.tz) if spec.start else None
    with _open(path) as fh:
        reader = csv.reader(fh)
        header = [h.strip() for h in next(reader)]
        ix = {h: i for i, h in enumerate(header)}
        cols = [ix[c] for c in spec.columns]
        split_i = ix.get("split_factor") if spec.adjust == "split" else None
        drop_i = ix.get(spec.drop_col) if spec.drop_col else None
        parts = None if spec.time_col else [ix[p] for p in ("year", "month", "day", "hour")]
        t_i = ix[spec.time_col] if spec.time_col else None
        n = 0
        last_ts: int | None = None
        recent: deque[tuple[int, dict[str, float | None]]] = deque(
            maxlen=StateConfig().recent_events)
        for row in reader:
            if not row:
                continue
            if drop_i is not None and row[drop_i].strip() not in ("", "0"):
                continue
            if t_i is not None:
                ts = parse_time(row[t_i], spec.tz)
            else:
                assert parts is not None
                y, mo, d, h = (int(float(row[i])) for i in parts)
                ts = parse_time(f"{y:04d}-{mo:02d}-{d:02d}T{h:02d}:00:00", spec.tz)
            if start is not None and ts < start:
                continue
            vals: dict[str, float | None] = {}
            for name, i in zip(spec.columns, cols, strict=True):
                cell = row[i].strip()
                v = None if cell.lower() in ("", "na", "nan", "null") else float(cell)
                if v is not None and split_i is not None:
                    v *= float(row[split_i])
                vals[name] = v
            if all(v is None for v in vals.values()):
                continue  # nothing to learn (the engine would reject it too)
            # the engine's ordering policy, applied up front so every method sees the same
            if last_ts is not None and (ts < last_ts or (ts, vals) in recent):
                continue
            last_ts = ts
            recent.append((ts, vals))
            yield Event(spec.kind, key, ts, vals)
            n += 1
            if n >= rows:
                return


def load_dataset(spec: DatasetSpec, data_dir: Path, rows: int) -> Dataset:
    """``rows`` events per key (file), keys interleaved by event time (stable)."""
    paths = [data_dir / f for f in spec.files]
    streams = [list(_iter_rows(spec, p, rows)) for p in paths]
    events = list(heapq.merge(*streams, key=lambda e: e.ts_ms))
    keys = [_key_of(p) for p in paths]
    kpos = {k: i for i, k in enumerate(keys)}
    key_idx = np.array([kpos[e.key] for e in events], dtype=np.int64)
    ts = np.array([e.ts_ms for e in events], dtype=np.int64)
    values = np.array([[math.nan if e.values[c] is None else e.values[c] for c in spec.columns]
                       for e in events], dtype=np.float64).reshape(len(events), len(spec.columns))
    prev = np.full(len(events), -1, dtype=np.int64)
    last: dict[int, int] = {}
    for i, k in enumerate(key_idx.tolist()):
        prev[i] = last.get(k, -1)
        last[k] = i
    periods: dict[str, int] = {}
    for i, k in enumerate(keys):
        p = spec.periods[i] if spec.periods else spec.period
        if p:
            periods[k] = p
    return Dataset(spec, events, keys, key_idx, ts, values, prev, periods)


def carried(ds: Dataset) -> np.ndarray:
    """Values with each key's missing cells carried forward (NaN before the first)."""
    out = ds.values.copy()
    last: dict[int, np.ndarray] = {}
    for i, k in enumerate(ds.key_idx.tolist()):
        row = out[i]
        prev = last.get(k)
        if prev is not None:
            miss = np.isnan(row)
            row[miss] = prev[miss]
        last[k] = row
    return out


def targets(ds: Dataset) -> np.ndarray:
    """What is forecast at each event: levels (sensors) or the log return since the key's
    previous event (prices; NaN for a key's first event)."""
    if not ds.is_price:
        return ds.values
    filled = carried(ds)
    y = np.full_like(filled, np.nan)
    ok = ds.prev >= 0
    with np.errstate(divide="ignore", invalid="ignore"):
        y[ok] = np.log(filled[ok] / filled[ds.prev[ok]])
    y[~np.isfinite(y)] = np.nan
    return y


# ---------------------------------------------------------------------- methods
# A method maps a dataset to F [n, c]: the forecast made at event i of the value (sensors) or
# return (prices) of the key's next event.
# ``notes`` collects what the report should mention (e.g. model resets).
Method = Callable[[Dataset, argparse.Namespace, dict[str, Any]], np.ndarray]


def persistence(ds: Dataset, a: argparse.Namespace, notes: dict[str, Any]) -> np.ndarray:
    if ds.is_price:
        return np.zeros_like(ds.values)
    return carried(ds)


def seasonal_naive(ds: Dataset, a: argparse.Namespace, notes: dict[str, Any]) -> np.ndarray:
    """The key's value ``period - 1`` events before the current one (its value one period
    before the target); the last value until a period has been seen."""
    filled = carried(ds)
    out = filled.copy()
    hist: dict[int, list[int]] = {}
    for i, k in enumerate(ds.key_idx.tolist()):
        p = ds.periods.get(ds.keys[k])
        h = hist.setdefault(k, [])
        h.append(i)
        if p and len(h) >= p:
            out[i] = filled[h[-p]]
            if len(h) > 4 * p:
                del h[: len(h) - p]
    return out


class _Wrapped:
    """A river forecaster with the bench's guards.

    With ``scaled`` the model sees ``(y - mean) / std`` clipped to +-8, the mean/std being
    running ones frozen after the first 100 values (so its lag features keep one scale).
    A forecast that is not finite, or (scaled) beyond 100 std, means the model's SGD has
    diverged: it is replaced by a fresh one (counted in ``resets``) and the step falls back
    to persistence.
    """

    def __init__(self, make: Callable[[], Any], scaled: bool) -> None:
        self.make = make
        self.model = make()
        self.scaled = scaled
        self.n = 0
        self.mean = 0.0
        self.m2 = 0.0
        self.resets = 0

    @property
    def std(self) -> float:
        s = math.sqrt(self.m2 / self.n) if self.n > 1 else 1.0
        return s if s > 1e-12 else 1.0

    def learn_forecast(self, y: float) -> float:
        if not self.scaled:
            mean, sd = 0.0, 1.0
            self.model.learn_one(y)
        else:
            if self.n < SCALE_FREEZE:
                self.n += 1
                d = y - self.mean
                self.mean += d / self.n
                self.m2 += d * (y - self.mean)
            mean, sd = self.mean, self.std
            self.model.learn_one(min(max((y - mean) / sd, -CLIP), CLIP))
        try:
            f = float(self.model.forecast(horizon=1)[0])
        except (IndexError, TypeError, ZeroDivisionError, ValueError, OverflowError):
            return math.nan
        if not math.isfinite(f) or (self.scaled and abs(f) > GUARD):
            self.model = self.make()
            self.resets += 1
            return math.nan
        return f * sd + mean


def _additive_holt_winters(alpha: float, beta: float | None, gamma: float | None,
                           period: int) -> Any:
    from river.time_series import HoltWinters

    class AdditiveHoltWinters(HoltWinters):  # type: ignore[misc]
        """river's HoltWinters with the additive season initialised by differences."""

        def learn_one(self, y: float, x: Any = None) -> None:
            was = self._initialized
            first = list(self._first_values)
            with np.errstate(divide="ignore", invalid="ignore"):  # river's ratio init
                super().learn_one(np.float64(y), x)
            if not was and self._initialized and self.season is not None:
                level = self.level[-1]
                self.season.clear()
                self.season.extend([v - level for v in [*first, y]])

    return AdditiveHoltWinters(alpha=alpha, beta=beta, gamma=gamma, seasonality=period)


def _river(ds: Dataset, make: Callable[[int | None], Any], scaled: bool,
           stats: dict[str, int]) -> np.ndarray:
    """One river model per key and channel; learn the new value, forecast the next."""
    y = targets(ds)
    fallback = persistence(ds, argparse.Namespace(), {})
    out = np.full_like(ds.values, np.nan)
    models: dict[tuple[int, int], _Wrapped] = {}
    last: dict[tuple[int, int], float] = {}
    for i, k in enumerate(ds.key_idx.tolist()):
        period = ds.periods.get(ds.keys[k]) if not ds.is_price else None
        for c in range(y.shape[1]):
            v = y[i, c]
            kc = (k, c)
            if math.isnan(v):
                if kc not in last:
                    out[i, c] = fallback[i, c]
                    continue
                v = last[kc] if not ds.is_price else 0.0
            last[kc] = v
            m = models.get(kc)
            if m is None:
                m = models[kc] = _Wrapped(lambda p=period: make(p), scaled)
            f = m.learn_forecast(v)
            out[i, c] = f if math.isfinite(f) else fallback[i, c]
    stats["resets"] = sum(m.resets for m in models.values())
    return out


def snarimax(ds: Dataset, a: argparse.Namespace, notes: dict[str, Any]) -> np.ndarray:
    from river.time_series import SNARIMAX

    def make(period: int | None) -> Any:
        if ds.is_price:
            return SNARIMAX(p=3, d=0, q=1)
        if period:
            return SNARIMAX(p=3, d=1, q=1, m=period, sp=1, sq=0)
        return SNARIMAX(p=3, d=1, q=1)
    return _river(ds, make, True, notes)


def holtwinters(ds: Dataset, a: argparse.Namespace, notes: dict[str, Any]) -> np.ndarray:
    def make(period: int | None) -> Any:
        if ds.is_price:
            return _additive_holt_winters(0.05, None, None, 0)
        if period:
            return _additive_holt_winters(0.6, 0.01, 0.1, period)
        return _additive_holt_winters(0.6, 0.01, None, 0)
    return _river(ds, make, False, notes)


def engine_config(ds: Dataset, base: EngineConfig, cell: str | None = None) -> EngineConfig:
    """``base`` set up for ``ds``: its kind, its compared columns in and out, horizon 1."""
    ch: dict[str, Any] = {"model.horizon": 1}
    if cell is not None:
        ch["model.cell"] = cell
    return base.replace(kind=ds.spec.kind, values=list(ds.spec.columns), targets=None, **ch)


def run_engine(ds: Dataset, config: EngineConfig,
               intervals: dict[str, np.ndarray] | None = None) -> np.ndarray:
    """The engine's one-step forecasts (returns for prices), in stream order; with
    ``intervals`` also its one-step ``lo`` and ``hi`` (same space)."""
    eng = Engine(config)
    yhat = np.full_like(ds.values, np.nan)
    lo_hi = np.full((2, *ds.values.shape), np.nan)
    chunk = 2048
    for lo in range(0, len(ds), chunk):
        out = eng.process(ds.events[lo:lo + chunk])
        if out.rejected or out.dropped:
            raise RuntimeError(f"{ds.spec.name}: engine refused events: "
                               f"{out.rejected[:3]} {out.dropped[:3]}")
        yhat[lo + out.index] = out.yhat[:, 0, :]
        lo_hi[0, lo + out.index] = out.lo[:, 0, :]
        lo_hi[1, lo + out.index] = out.hi[:, 0, :]
    if intervals is not None:
        intervals["lo"], intervals["hi"] = as_target(ds, lo_hi[0]), as_target(ds, lo_hi[1])
    return as_target(ds, yhat, fill=0.0)


def as_target(ds: Dataset, level: np.ndarray, fill: float = math.nan) -> np.ndarray:
    """Forecasts of the next value (original units) in the compared space: prices as the
    log return from the origin's last price (``fill`` where that is not finite)."""
    if not ds.is_price:
        return level
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.log(level / carried(ds))
    return np.where(np.isfinite(r), r, fill)


def engine_method(cell: str) -> Method:
    def run(ds: Dataset, a: argparse.Namespace, notes: dict[str, Any]) -> np.ndarray:
        cfg = engine_config(ds, engine_config_from_args(a), cell)
        return run_engine(ds, cfg.replace(**{"forecast.experts": ()}))
    return run


def mixture(ds: Dataset, a: argparse.Namespace, notes: dict[str, Any]) -> np.ndarray:
    cfg = engine_config(ds, engine_config_from_args(a), "gru")
    intervals: dict[str, np.ndarray] = {}
    f = run_engine(ds, cfg, intervals)
    notes["_interval"] = intervals
    notes["coverage_nominal"] = cfg.forecast.coverage
    return f


class WindowedLSTM:
    """deep-river style: re-run the key's last ``window`` inputs on every event.

    One shared LSTM (hidden size as the engine) for the dataset's keys; per key a window of
    inputs and running mean/std per channel. Per event: learn (one Adam step on the previous
    window, target = the value that just arrived), then forecast from the new window.
    """

    def __init__(self, n_ch: int, hidden: int, levels: bool, window: int = WINDOW,
                 lr: float = 1e-3, seed: int = 0) -> None:
        import torch
        from torch import nn

        torch.manual_seed(seed)
        self.torch = torch
        self.n_ch = n_ch
        self.levels = levels
        self.window = window
        self.n_in = 2 * n_ch + 4
        self.rnn = nn.LSTM(self.n_in, hidden, batch_first=True)
        self.head = nn.Linear(hidden, n_ch)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        self.params = [*self.rnn.parameters(), *self.head.parameters()]
        self.opt = torch.optim.Adam(self.params, lr=lr)
        self.win: dict[int, deque[np.ndarray]] = {}
        self.stats: dict[int, np.ndarray] = {}  # [3, c]: count, mean, m2

    def _forward(self, xs: np.ndarray) -> Any:
        x = self.torch.from_numpy(xs)[None]
        out, _ = self.rnn(x)
        delta = self.head(out[:, -1])[0]
        return x[0, -1, : self.n_ch] + delta if self.levels else delta

    def step(self, key: int, u: np.ndarray, ts: int) -> np.ndarray:
        """Learn from ``u`` (the key's new transformed values, NaN = missing), forecast the
        next ones (transformed units)."""
        torch = self.torch
        st = self.stats.setdefault(key, np.zeros((3, self.n_ch)))
        obs = ~np.isnan(u)
        st[0] += obs
        d = np.where(obs, u - st[1], 0.0)
        st[1] += np.where(obs, d / np.maximum(st[0], 1), 0.0)
        st[2] += np.where(obs, d * (u - st[1]), 0.0)
        std = np.sqrt(np.where(st[0] > 1, st[2] / np.maximum(st[0], 1), 0.0))
        std = np.where(std > 1e-12, std, 1.0)
        win = self.win.setdefault(key, deque(maxlen=self.window))
        last_z = win[-1][: self.n_ch] if win else np.zeros(self.n_ch, np.float32)
        z = np.clip(np.where(obs, (u - st[1]) / std, 0.0), -8, 8)
        z = np.where(obs, z, last_z if self.levels else 0.0).astype(np.float32)
        if win and obs.any():
            pred = self._forward(np.stack(win))
            m = torch.from_numpy(obs.astype(np.float32))
            loss = ((pred - torch.from_numpy(z)) ** 2 * m).sum() / m.sum()
            self.opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.params, 1.0)
            self.opt.step()
        cal = calendar_features(np.array([ts]))[0].astype(np.float32)
        win.append(np.concatenate([z, (~obs).astype(np.float32), cal]))
        with torch.no_grad():
            zhat = self._forward(np.stack(win)).numpy().astype(np.float64)
        return zhat * std + st[1]


def windowed(ds: Dataset, a: argparse.Namespace, notes: dict[str, Any]) -> np.ndarray:
    cfg = engine_config_from_args(a)
    model = WindowedLSTM(len(ds.spec.columns), cfg.model.hidden, levels=not ds.is_price,
                         seed=cfg.learner.seed)
    y = targets(ds)
    if ds.is_price:
        y = np.where(np.isnan(y) & (ds.prev[:, None] < 0), 0.0, y)
    out = np.full_like(ds.values, np.nan)
    for i, (k, t) in enumerate(zip(ds.key_idx.tolist(), ds.ts.tolist(), strict=True)):
        out[i] = model.step(k, y[i], t)
    return out


METHODS: dict[str, Method] = {
    "gru": engine_method("gru"),
    "lstm": engine_method("lstm"),
    "persistence": persistence,
    "seasonal": seasonal_naive,
    "snarimax": snarimax,
    "holtwinters": holtwinters,
    "windowed": windowed,
    "mixture": mixture,
}


# ---------------------------------------------------------------------- metrics
def scored_cells(ds: Dataset, forecasts: dict[str, np.ndarray]) -> tuple[np.ndarray, ...]:
    """The cells every method forecast: ``(prev, truth, mask, scale)`` for the events that
    have a previous one (``prev`` their origin, ``scale`` the reporting scale: the std of
    each (key, channel) series over the scored cells)."""
    y = targets(ds)
    idx = np.flatnonzero(ds.prev >= 0)
    prev = ds.prev[idx]
    truth = y[idx]
    mask = ~np.isnan(truth)
    for f in forecasts.values():
        mask &= np.isfinite(f[prev])
    scale = np.ones_like(truth)
    for k in range(len(ds.keys)):
        rows = ds.key_idx[idx] == k
        for c in range(truth.shape[1]):
            cells = rows & mask[:, c]
            s = float(np.std(truth[cells, c])) if cells.sum() > 1 else 1.0
            scale[rows, c] = s if s > 1e-12 else 1.0
    return prev, truth, mask, scale


def evaluate_interval(ds: Dataset, forecasts: dict[str, np.ndarray], lo: np.ndarray,
                      hi: np.ndarray, coverage: float) -> dict[str, float]:
    """Empirical coverage, mean width and mean Winkler score (reporting-scale units) of a
    one-step interval ``[lo, hi]`` (made at each origin) on the cells of :func:`evaluate`."""
    prev, truth, mask, scale = scored_cells(ds, forecasts)
    lo, hi = lo[prev], hi[prev]
    mask = mask & np.isfinite(lo) & np.isfinite(hi)
    a = 1.0 - coverage
    width = (hi - lo) / scale
    wink = width + 2.0 / a * (np.maximum(lo - truth, 0.0) + np.maximum(truth - hi, 0.0)) / scale
    inside = (truth >= lo) & (truth <= hi)
    return {"nominal": coverage, "coverage": float(inside[mask].mean()),
            "width": float(width[mask].mean()), "winkler": float(wink[mask].mean()),
            "cells": int(mask.sum())}


def evaluate(ds: Dataset, forecasts: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
    """Metrics of each method on the cells every method forecast (see module doc)."""
    prev, truth, mask, scale = scored_cells(ds, forecasts)
    base = persistence(ds, argparse.Namespace(), {})[prev]
    base_mae = float(np.abs((truth - base) / scale)[mask].mean()) if mask.any() else math.nan
    res: dict[str, dict[str, float]] = {}
    for name, f in forecasts.items():
        e = ((truth - f[prev]) / scale)[mask]
        r = {"mae": float(np.abs(e).mean()), "rmse": float(np.sqrt(np.mean(e ** 2))),
             "cells": int(mask.sum())}
        r["mase"] = r["mae"] / base_mae if base_mae > 0 else math.nan
        if ds.is_price:
            nz = mask & (truth != 0)
            s_f = np.sign(f[prev][nz])
            hit = np.where(s_f == 0, 0.5, (s_f == np.sign(truth[nz])).astype(float))
            r["direction"] = float(hit.mean()) if hit.size else math.nan
        res[name] = r
    return res


def run_peers(a: argparse.Namespace, log: Any = None) -> dict[str, Any]:
    import torch

    torch.set_num_threads(max(1, a.threads))
    data_dir = Path(a.data_dir)
    out: dict[str, Any] = {"datasets": {}, "rows_per_key": a.rows,
                           "engine_config": engine_config_from_args(a).to_dict(),
                           "machine": machine(), "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    for name in a.datasets.split(","):
        spec = DATASETS[name]
        t0 = time.perf_counter()
        ds = load_dataset(spec, data_dir, a.rows)
        methods = [m for m in a.methods.split(",")
                   if not (m == "seasonal" and (ds.is_price or not ds.periods))]
        forecasts: dict[str, np.ndarray] = {}
        speed: dict[str, float] = {}
        notes: dict[str, dict[str, Any]] = {m: {} for m in methods}
        for m in methods:
            t1 = time.process_time()
            forecasts[m] = METHODS[m](ds, a, notes[m])
            dt = time.process_time() - t1
            speed[m] = len(ds) / dt if dt > 0 else math.inf
            if log:
                print(f"  {name:<8} {m:<12} {len(ds):>7} events {dt:7.1f}s", file=log,
                      flush=True)
        metrics = evaluate(ds, forecasts)
        for m in methods:
            metrics[m]["events_per_s"] = speed[m]
            iv = notes[m].pop("_interval", None)
            if iv is not None:
                metrics[m]["interval"] = evaluate_interval(
                    ds, forecasts, iv["lo"], iv["hi"], notes[m].pop("coverage_nominal"))
            metrics[m].update(notes[m])
        y = targets(ds)
        entry: dict[str, Any] = {
            "note": spec.note, "kind": spec.kind, "events": len(ds), "keys": ds.keys,
            "channels": list(spec.columns), "periods": ds.periods,
            "first": _iso(int(ds.ts[0])), "last": _iso(int(ds.ts[-1])),
            "metrics": metrics, "seconds": time.perf_counter() - t0,
        }
        if ds.is_price:
            yy = y[ds.prev >= 0]
            entry["zero_return_share"] = float(np.mean(yy[~np.isnan(yy)] == 0))
            rw = metrics.get("persistence")
            others = [m for m in methods if m != "persistence"]
            entry["beats_random_walk_mae"] = [m for m in others if metrics[m]["mase"] < 1.0]
            entry["beats_random_walk_rmse"] = [
                m for m in others if rw is not None and metrics[m]["rmse"] < rw["rmse"]]
        entry["samples"] = _samples(ds, y, forecasts)
        out["datasets"][name] = entry
    return out


def _iso(ms: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.gmtime(ms / 1000))


def _samples(ds: Dataset, y: np.ndarray, forecasts: dict[str, np.ndarray],
             n: int = 300) -> list[dict[str, Any]]:
    """The last ``n`` events of the first key, channel 0: truth and a few forecasts."""
    k = 0
    rows = np.flatnonzero((ds.key_idx == k) & (ds.prev >= 0))[-n:]
    prev = ds.prev[rows]
    shown = [m for m in ("mixture", "gru", "persistence", "windowed", "snarimax")
             if m in forecasts]
    return [{"key": ds.keys[k], "channel": ds.spec.columns[0], "ts": ds.ts[rows].tolist(),
             "truth": _clean(y[rows, 0]),
             **{m: _clean(forecasts[m][prev, 0]) for m in shown}}]


def _clean(x: np.ndarray) -> list[float | None]:
    return [None if not math.isfinite(v) else float(v) for v in x.tolist()]


def format_markdown(rep: dict[str, Any], command: str) -> str:
    lines = ["## Peers: one-step-ahead online forecasting on real streams", "",
             f"Command: `{command}`  ", f"Machine: {rep['machine']['nproc']} cores, "
             f"{rep['machine']['cpu']}; {rep['date']}; {rep['rows_per_key']} events per key "
             "at most.", "",
             "MAE/RMSE in units of each series' std over the slice; MASE = MAE / persistence "
             "MAE (prices: random walk) on the same cells; prices are log returns; dir = "
             "direction accuracy on non-zero returns (0.5 = coin).", ""]
    for name, d in rep["datasets"].items():
        lines.append(f"### {name}: {d['note']}")
        lines.append("")
        lines.append(f"{d['events']:,} events, keys {', '.join(d['keys'])}, {d['first']} .. "
                     f"{d['last']} UTC; periods {d['periods'] or 'none'}")
        if d["kind"] == "price":
            mae_w, rmse_w = d["beats_random_walk_mae"], d["beats_random_walk_rmse"]
            lines.append(f"; zero returns {100 * d['zero_return_share']:.0f}%. Random walk: "
                         + (f"beaten on MAE by {', '.join(mae_w)}" if mae_w else
                            "**nothing beats it on MAE**") + "; "
                         + (f"beaten on RMSE by {', '.join(rmse_w)}" if rmse_w else
                            "**nothing beats it on RMSE**") + ".")
        lines.append("")
        price = d["kind"] == "price"
        lines.append("| method | MAE | RMSE | MASE |" + (" dir |" if price else "")
                     + " events/s |")
        lines.append("|---|---:|---:|---:|" + ("---:|" if price else "") + "---:|")
        for m, r in sorted(d["metrics"].items(), key=lambda kv: kv[1]["mase"]):
            lines.append(f"| {m} | {r['mae']:.4f} | {r['rmse']:.4f} | {r['mase']:.3f} |"
                         + (f" {r['direction']:.3f} |" if price else "")
                         + f" {r['events_per_s']:,.0f} |")
        iv = d["metrics"].get("mixture", {}).get("interval")
        if iv:
            lines.append("")
            lines.append(f"mixture's {100 * iv['nominal']:.0f}% interval: coverage "
                         f"{100 * iv['coverage']:.1f}%, mean width {iv['width']:.3f}, "
                         f"Winkler score {iv['winkler']:.3f} (std units)")
        lines.append("")
    return "\n".join(lines)


# ---------------------------------------------------------------------- command line
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.peers", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=2000, help="events per key (file)")
    p.add_argument("--datasets", default=",".join(DATASETS))
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--data-dir", default=str(DEFAULT_DATA))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--report-json", type=Path, default=None)
    p.add_argument("--markdown", type=Path, default=None)
    p.add_argument("--quiet", action="store_true")
    add_engine_args(p)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    args = list(sys.argv[1:] if argv is None else argv)
    command = "python -m bench.peers " + " ".join(args)
    rep = run_peers(a, None if a.quiet else sys.stderr)
    rep["command"] = command
    md = format_markdown(rep, command)
    print(md)
    if a.report_json:
        a.report_json.parent.mkdir(parents=True, exist_ok=True)
        a.report_json.write_text(json.dumps(rep, indent=1))
    if a.markdown:
        a.markdown.parent.mkdir(parents=True, exist_ok=True)
        a.markdown.write_text(md + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
