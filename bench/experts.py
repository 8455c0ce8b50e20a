"""Offline harness: the per-key experts, their mixture and intervals on the peers' streams.

``python -m bench.experts [--datasets nab,etth1,...] [--rows 2000] [--set share=0.02 ...]
[--grid 'share=0.005,0.01;loss=absolute,gradient'] [--report-json PATH]``

Replays a dataset of :mod:`bench.peers` (its test sets ``DATASETS`` or its held-out sets
``TUNING``) through :class:`streamseq.forecast.ExpertAggregator`, with the recurrent
model's one-step forecasts taken from the current engine run with the service defaults
(cold, no warm-up, exactly as ``bench.peers`` runs it; cached in ``bench/.cache`` by
dataset, rows and engine configuration). It reports, on the cells ``bench.peers.evaluate``
scores (so the figures sit beside the peers' in ``bench/results/peers.json``):

* MASE of every forecaster: ``model``, ``persistence``, ``smoother``, ``seasonal``,
  ``linear`` and the ``mixture`` (prices: on log returns, as the peers);
* the mixture's interval: empirical coverage, mean width and mean Winkler score, in units
  of each series' standard deviation (the peers' reporting scale).

``--grid`` runs every combination of the listed settings and ranks them by mean mixture
MASE (then coverage error): use it on the held-out sets only (``--datasets`` from
``TUNING``), never on the test sets.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from bench.online_protocol import machine
from bench.peers import (
    DATASETS,
    DEFAULT_DATA,
    TUNING,
    Dataset,
    as_target,
    engine_config,
    evaluate,
    evaluate_interval,
    load_dataset,
)
from bench.peers import (
    build_parser as peers_parser,
)
from streamseq.backtest import engine_config_from_args
from streamseq.config import EngineConfig, ForecastConfig
from streamseq.engine import Engine
from streamseq.features.transforms import CODES, default_transform
from streamseq.forecast import FORECASTERS, ExpertAggregator

__all__ = ["model_forecasts", "run_aggregator", "score", "main"]

CACHE = Path(__file__).resolve().parent / ".cache"
ALL = {**DATASETS, **TUNING}


def model_forecasts(ds: Dataset, config: EngineConfig, cache: Path | None = CACHE) -> np.ndarray:
    """The engine's one-step model forecasts ``[n, 1, channels]``, original units (cached)."""
    tag = hashlib.sha1(json.dumps(config.to_dict(), sort_keys=True).encode()).hexdigest()[:10]
    path = None if cache is None else cache / f"{ds.spec.name}_{len(ds)}_{tag}.npy"
    if path is not None and path.exists():
        return np.load(path)
    eng = Engine(config)
    yhat = np.full((len(ds), 1, len(ds.spec.columns)), np.nan)
    chunk = 2048
    for lo in range(0, len(ds), chunk):
        out = eng.process(ds.events[lo:lo + chunk])
        if out.rejected or out.dropped:
            raise RuntimeError(f"{ds.spec.name}: engine refused events")
        yhat[lo + out.index] = out.model_yhat[:, :1, :]
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, yhat)
    return yhat


def run_aggregator(ds: Dataset, config: ForecastConfig, model: np.ndarray | None,
                   chunk: int = 4096) -> tuple[ExpertAggregator, dict[str, np.ndarray]]:
    """Replay ``ds`` through an aggregator (one slot per key); returns it and the per-event
    outputs stacked (``yhat``, ``lo``, ``hi``, ``anomaly``, ``errors``)."""
    codes = np.array([CODES[default_transform(ds.spec.kind, c)] for c in ds.spec.columns])
    agg = ExpertAggregator(config, codes, horizon=1, capacity=len(ds.keys))
    parts: dict[str, list[np.ndarray]] = {n: [] for n in ("yhat", "lo", "hi", "anomaly",
                                                          "errors")}
    for lo in range(0, len(ds), chunk):
        sl = slice(lo, lo + chunk)
        out = agg.process(ds.key_idx[sl], ds.ts[sl], ds.values[sl],
                          None if model is None else model[sl])
        for name in parts:
            parts[name].append(getattr(out, name))
    return agg, {n: np.concatenate(v) for n, v in parts.items()}


def score(ds: Dataset, outputs: dict[str, np.ndarray], coverage: float) -> dict[str, Any]:
    """MASE of every forecaster (``bench.peers.evaluate``) and the interval's coverage,
    mean width and Winkler score, on the cells every forecaster forecast."""
    n, c = ds.values.shape
    forecasts: dict[str, np.ndarray] = {}
    rows = np.flatnonzero(ds.prev >= 0)
    for f, name in enumerate(FORECASTERS):
        level = np.full((n, c), np.nan)
        level[ds.prev[rows]] = ds.values[rows] - outputs["errors"][rows, :, f]
        forecasts[name] = as_target(ds, level)
    interval = evaluate_interval(ds, forecasts, as_target(ds, outputs["lo"][:, 0, :]),
                                 as_target(ds, outputs["hi"][:, 0, :]), coverage)
    return {"metrics": evaluate(ds, forecasts), "interval": interval,
            "anomalies": int(outputs["anomaly"].sum())}


def _parse_value(text: str) -> Any:
    if text in ("None", "none"):
        return None
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    if text.startswith("(") or "+" in text:
        return tuple(x for x in text.strip("()").replace("+", ",").split(",") if x)
    return text


def _settings(pairs: Sequence[str]) -> dict[str, Any]:
    out = {}
    for p in pairs:
        name, _, value = p.partition("=")
        out[name.strip()] = _parse_value(value.strip())
    return out


def _grid(spec: str | None) -> list[dict[str, Any]]:
    if not spec:
        return [{}]
    axes = []
    for part in spec.split(";"):
        name, _, values = part.partition("=")
        axes.append([(name.strip(), _parse_value(v.strip())) for v in values.split(",")])
    return [dict(combo) for combo in itertools.product(*axes)]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.experts", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", default=",".join(DATASETS))
    p.add_argument("--rows", type=int, default=2000, help="events per key (file)")
    p.add_argument("--data-dir", default=str(DEFAULT_DATA))
    p.add_argument("--set", nargs="*", default=[], metavar="NAME=VALUE",
                   help="ForecastConfig settings (experts as a+b+c)")
    p.add_argument("--grid", default=None, help="'name=v1,v2;name2=...' combinations")
    p.add_argument("--no-model", action="store_true", help="experts only (no engine run)")
    p.add_argument("--report-json", type=Path, default=None)
    p.add_argument("--markdown", type=Path, default=None, help="write the tables here")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    base = replace(ForecastConfig(), **_settings(a.set))
    eng_base = engine_config_from_args(peers_parser().parse_args([]))
    datasets = {}
    for name in a.datasets.split(","):
        ds = load_dataset(ALL[name], Path(a.data_dir), a.rows)
        t0 = time.process_time()
        model = None if a.no_model else model_forecasts(ds, engine_config(ds, eng_base, "gru"))
        print(f"  {name}: {len(ds)} events, model {time.process_time() - t0:.1f}s",
              file=sys.stderr, flush=True)
        datasets[name] = (ds, model)
    runs = []
    md: list[str] = []
    for combo in _grid(a.grid):
        cfg = replace(base, **combo)
        res: dict[str, Any] = {"settings": combo, "datasets": {}}
        for name, (ds, model) in datasets.items():
            t0 = time.process_time()
            _, outputs = run_aggregator(ds, cfg, model)
            dt = time.process_time() - t0
            r = score(ds, outputs, cfg.coverage)
            r["events_per_s"] = len(ds) / dt if dt > 0 else math.inf
            res["datasets"][name] = r
        mases = [r["metrics"]["mixture"]["mase"] for r in res["datasets"].values()]
        covs = [abs(r["interval"]["coverage"] - cfg.coverage) for r in res["datasets"].values()]
        res["mean_mase"] = float(np.mean(mases))
        res["max_coverage_error"] = float(np.max(covs))
        runs.append(res)
        md += _run_markdown(res, cfg)
    print("\n".join(md))
    if len(runs) > 1:
        print("\nranked by mean mixture MASE:")
        for r in sorted(runs, key=lambda r: (r["mean_mase"], r["max_coverage_error"])):
            print(f"  {r['mean_mase']:.4f}  cov err {r['max_coverage_error']:.3f}  "
                  f"{r['settings']}")
    if a.markdown:
        command = "python -m bench.experts " + " ".join(sys.argv[1:] if argv is None else argv)
        a.markdown.parent.mkdir(parents=True, exist_ok=True)
        a.markdown.write_text("\n".join([
            f"## Experts, mixture and intervals per forecaster ({', '.join(datasets)})", "",
            f"Command: `{command}`; {a.rows} events per key at most; the recurrent model is "
            "the engine with the service defaults, cold (no warm-up). MASE as in bench.peers "
            "(prices: on log returns); coverage, width and Winkler score of the mixture's "
            "interval in std units.", "", *md]) + "\n")
    if a.report_json:
        a.report_json.parent.mkdir(parents=True, exist_ok=True)
        a.report_json.write_text(json.dumps({
            "command": "python -m bench.experts " + " ".join(sys.argv[1:] if argv is None
                                                             else argv),
            "machine": machine(), "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "rows_per_key": a.rows, "forecast_config": base.__dict__ | {"experts": list(
                base.experts)}, "runs": runs}, indent=1))
    return 0


def _run_markdown(res: dict[str, Any], cfg: ForecastConfig) -> list[str]:
    names = list(FORECASTERS)
    lines = [f"settings {res['settings'] or 'defaults'}", "",
             f"| dataset | {' | '.join(names)} | coverage | width | winkler | anomalies | "
             "ev/s |", "|---|" + "---:|" * (len(names) + 5)]
    for name, r in res["datasets"].items():
        m = r["metrics"]
        iv = r["interval"]
        lines.append(f"| {name} | " + " | ".join(f"{m[n]['mase']:.4f}" for n in names)
                     + f" | {iv['coverage']:.3f} | {iv['width']:.3f} | {iv['winkler']:.3f} | "
                     f"{r['anomalies']} | {r['events_per_s']:,.0f} |")
    lines += ["", f"mean mixture MASE {res['mean_mase']:.4f}, worst coverage error "
                  f"{res['max_coverage_error']:.3f} (nominal {cfg.coverage})", ""]
    return lines


if __name__ == "__main__":
    raise SystemExit(main())
