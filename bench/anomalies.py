"""Anomaly flags on the Numenta Anomaly Benchmark's real series, next to a rolling z-score.

``python -m bench.anomalies [--data-dir ../shared/data] [--report-json PATH]``

Every series of ``sensor/nab/data/real*/`` (47 files, one key each) is replayed through one
engine shard with the service defaults (cold, no warm-up; the series interleaved event by
event so that one shard holds them all): an event is flagged when its value falls outside
the anomaly interval (default 99%) of the published one-step forecast made before it
arrived (``EngineOutput.anomaly``). The flags are cached in ``bench/.cache``.

The baseline is the textbook rolling z-score: flag a value more than ``z`` standard
deviations from the mean of the key's previous ``window`` values (``window`` 100, ``z`` 3),
and, for a like-for-like comparison, the same detector with ``z`` set so that it raises as
many false flags as the aggregator (found by bisection on the full data: an oracle
setting that favours the baseline).

Scores, from ``labels/combined_windows.json``, as in NAB with its first 15% of each series
as a probationary period (processed, not scored): the share of labelled windows with at
least one flag inside, flags outside every window per day of data, and the share of flags
that fall inside a window.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bench.experts import CACHE
from bench.online_protocol import machine
from bench.peers import DEFAULT_DATA
from bench.peers import build_parser as peers_parser
from streamseq.backtest import engine_config_from_args
from streamseq.config import EngineConfig, ForecastConfig
from streamseq.engine import Engine
from streamseq.events.decode import parse_time
from streamseq.events.schema import Event

__all__ = ["Series", "load_nab", "zscore_flags", "score_flags", "main"]

PROBATION = 0.15
DAY_MS = 86_400_000


class Series:
    """One NAB file: times, values and its labelled windows (epoch ms)."""

    def __init__(self, name: str, ts: np.ndarray, values: np.ndarray,
                 windows: list[tuple[int, int]]) -> None:
        self.name = name
        self.ts = ts
        self.values = values
        self.windows = windows


def load_nab(data_dir: Path) -> list[Series]:
    root = data_dir / "sensor" / "nab"
    labels = json.loads((root / "labels" / "combined_windows.json").read_text())
    out = []
    for path in sorted((root / "data").glob("real*/*.csv")):
        name = f"{path.parent.name}/{path.name}"
        ts, vals = [], []
        with open(path, newline="") as fh:
            reader = csv.reader(fh)
            next(reader)
            for row in reader:
                ts.append(parse_time(row[0], "UTC"))
                vals.append(float(row[1]))
        windows = [(parse_time(a, "UTC"), parse_time(b, "UTC")) for a, b in labels[name]]
        out.append(Series(name, np.array(ts, np.int64), np.array(vals), windows))
    return out


def interleave(series: list[Series]) -> tuple[np.ndarray, np.ndarray]:
    """Round-robin event order: ``(key index, row index)`` per event."""
    longest = max(len(s.ts) for s in series)
    keys, rows = [], []
    for r in range(longest):
        for k, s in enumerate(series):
            if r < len(s.ts):
                keys.append(k)
                rows.append(r)
    return np.array(keys, np.int64), np.array(rows, np.int64)


def engine_flags(series: list[Series], order: tuple[np.ndarray, np.ndarray],
                 config: EngineConfig) -> np.ndarray:
    """The engine's anomaly flags in event order (cached by configuration)."""
    import hashlib

    tag = hashlib.sha1(json.dumps(config.to_dict(), sort_keys=True).encode()).hexdigest()[:10]
    path = CACHE / f"nab_flags_{len(order[0])}_{tag}.npy"
    if path.exists():
        return np.load(path)
    keys, rows = order
    events = [Event("sensor", series[k].name, int(series[k].ts[r]),
                    {"value": float(series[k].values[r])})
              for k, r in zip(keys.tolist(), rows.tolist(), strict=True)]
    eng = Engine(config)
    flags = np.zeros(len(events), dtype=bool)
    chunk = 4096
    for lo in range(0, len(events), chunk):
        out = eng.process(events[lo:lo + chunk])
        if out.rejected:
            raise RuntimeError(f"engine refused events: {out.rejected[:3]}")
        flags[lo + out.index] = out.anomaly[:, 0]
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, flags)
    return flags


def zscore_flags(values: np.ndarray, window: int, z: float) -> np.ndarray:
    """Flags of the rolling z-score: ``|x - mean| > z std`` over the previous ``window``
    values (none before a full window).

    >>> x = np.r_[np.tile([0.0, 1.0], 60), 9.0]
    >>> np.flatnonzero(zscore_flags(x, 100, 3.0)).tolist()
    [120]
    """
    n = len(values)
    flags = np.zeros(n, dtype=bool)
    if n <= window:
        return flags
    c1 = np.concatenate([[0.0], np.cumsum(values)])
    c2 = np.concatenate([[0.0], np.cumsum(values * values)])
    i = np.arange(window, n)
    mean = (c1[i] - c1[i - window]) / window
    var = np.maximum((c2[i] - c2[i - window]) / window - mean * mean, 0.0)
    std = np.sqrt(var)
    flags[window:] = np.abs(values[window:] - mean) > z * np.maximum(std, 1e-12)
    return flags


def score_flags(series: list[Series], flags: list[np.ndarray]) -> dict[str, float]:
    """Windows detected, false flags per day and precision, outside the probation span."""
    windows = detected = false = inside = 0
    days = 0.0
    for s, f in zip(series, flags, strict=True):
        start = int(len(s.ts) * PROBATION)
        t0 = s.ts[start]
        days += (s.ts[-1] - t0) / DAY_MS
        idx = np.flatnonzero(f[start:]) + start
        in_any = np.zeros(len(idx), dtype=bool)
        for a, b in s.windows:
            if b < t0:
                continue
            windows += 1
            hit = (s.ts[idx] >= a) & (s.ts[idx] <= b)
            detected += bool(hit.any())
            in_any |= hit
        false += int((~in_any).sum())
        inside += int(in_any.sum())
    flagged = false + inside
    return {"windows": windows, "windows_flagged": detected,
            "window_share": detected / windows if windows else math.nan,
            "flags": flagged, "false_flags": false, "days": days,
            "false_per_day": false / days if days else math.nan,
            "precision": inside / flagged if flagged else math.nan}


def _matched_z(series: list[Series], window: int, false_per_day: float) -> float:
    lo, hi = 1.0, 50.0
    for _ in range(40):
        mid = 0.5 * (lo + hi)
        got = score_flags(series, [zscore_flags(s.values, window, mid) for s in series])
        if got["false_per_day"] > false_per_day:
            lo = mid
        else:
            hi = mid
    return hi


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.anomalies", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default=str(DEFAULT_DATA))
    p.add_argument("--window", type=int, default=100)
    p.add_argument("--z", type=float, default=3.0)
    p.add_argument("--anomaly-coverage", type=float, default=ForecastConfig().anomaly_coverage)
    p.add_argument("--report-json", type=Path, default=None)
    p.add_argument("--markdown", type=Path, default=None)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    series = load_nab(Path(a.data_dir))
    order = interleave(series)
    keys, rows = order
    t0 = time.process_time()
    base = engine_config_from_args(peers_parser().parse_args([]))
    cfg = base.replace(kind="sensor", values=["value"], targets=None,
                       **{"model.horizon": 1, "forecast.anomaly_coverage": a.anomaly_coverage})
    flat = engine_flags(series, order, cfg)
    print(f"  {len(keys)} events, {len(series)} series, engine {time.process_time() - t0:.0f}s",
          file=sys.stderr, flush=True)
    flags = [np.zeros(len(s.ts), bool) for s in series]
    for k, r, f in zip(keys.tolist(), rows.tolist(), flat.tolist(), strict=True):
        flags[k][r] = f
    results: dict[str, Any] = {
        f"streamseq, {a.anomaly_coverage:.0%} interval of the mixture": score_flags(series, flags)}
    z_flags = [zscore_flags(s.values, a.window, a.z) for s in series]
    results[f"rolling z-score (window {a.window}, z {a.z:g})"] = score_flags(series, z_flags)
    target = next(iter(results.values()))["false_per_day"]
    zm = _matched_z(series, a.window, target)
    results[f"rolling z-score (window {a.window}, z {zm:.2f}: same false flags/day)"] = \
        score_flags(series, [zscore_flags(s.values, a.window, zm) for s in series])
    lines = ["## Anomaly flags on NAB (47 real series, labelled windows)", "",
             f"Command: `python -m bench.anomalies {' '.join(sys.argv[1:] if argv is None else argv)}`",
             "", "| detector | windows flagged | share | false flags/day | flags in windows |",
             "|---|---:|---:|---:|---:|"]
    for name, r in results.items():
        lines.append(f"| {name} | {r['windows_flagged']}/{r['windows']} | "
                     f"{r['window_share']:.2f} | {r['false_per_day']:.2f} | "
                     f"{r['precision']:.2f} |")
    print("\n".join(lines))
    if a.markdown:
        a.markdown.parent.mkdir(parents=True, exist_ok=True)
        a.markdown.write_text("\n".join(lines + ["", "Windows flagged: labelled windows with "
                              "at least one flag inside; false flags: flags outside every "
                              "window, per day of data; the first 15% of each series is "
                              "NAB's probation span (processed, not scored)."]) + "\n")
    if a.report_json:
        a.report_json.parent.mkdir(parents=True, exist_ok=True)
        a.report_json.write_text(json.dumps({"machine": machine(), "date": time.strftime(
            "%Y-%m-%d %H:%M:%S %Z"), "results": results, "markdown": lines}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
