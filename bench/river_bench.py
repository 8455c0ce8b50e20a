"""The River adapters' speed next to the engine they wrap and next to deep-river (issue 17).

    bash bench/peers_env.sh                      # once: bench/.venv-peers with deep-river
    .venv/bin/python -m bench.river_bench        # ~5 minutes; --quick: ~2
    ... --peers-python PATH                      # another interpreter with deep-river

Writes ``bench/results/river.md``. Every rate is events per CPU second of the process that
ran it (torch and numba on one thread), the median of ``--repeats`` runs with the spread;
everything runs in one invocation, deep-river in a subprocess of the peers venv (it needs
river 0.25, the package needs a newer one). One event is one predict-then-learn step:

* forecaster, GRU 64 (the defaults), one series (``bench.engine_speed.series``):
  ``RNNForecaster`` ``forecast(1)`` + ``learn_one(y)``, and with ``forecast(12)``; the
  engine it wraps with the same configuration: the engine calls the adapter makes
  (``Engine.last_forecast`` + ``Engine.process_one`` per event: the adapter's overhead is
  the gap to this row), ``Engine.process_one`` alone (learning, no forecast read),
  ``Engine.process`` per event (the poll path, one event per call) and ``Engine.process``
  over polls of 256 events (the service's path; it also runs the experts' aggregation,
  which the adapter does not publish);
* the same with an LSTM of hidden 16, deep-river's ``LSTMForecaster`` size;
* regressor: ``RNNRegressor`` ``predict_one(x)`` + ``learn_one(x, y)`` on River's Trump
  approval ratings (6 features, cycled), and the engine with the same configuration; its
  calls are ``Engine.peek`` (the prediction: one step on a copy of the state) +
  ``Engine.process_one``, so a prediction costs a second recurrent step per event;
* deep-river 0.3.4: ``LSTMForecaster(window_size=10, hidden_size=16)`` ``forecast(1)`` +
  ``learn_one``, ``LSTMRegressor(n_features=6, hidden_size=16)`` ``predict_one`` +
  ``learn_one`` (its rolling window: the last ``window_size`` inputs re-run per call).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bench.engine_speed import cpu_rate, fmt, machine, series

REPORT = Path(__file__).resolve().parent / "results" / "river.md"
ROOT = Path(__file__).resolve().parents[1]
PEERS_PYTHON = ROOT / "bench" / ".venv-peers" / "bin" / "python"
WARM = 200


def trump(n: int) -> list[tuple[dict[str, float], float]]:
    """River's Trump approval ratings (1,001 days, 6 features), cycled to ``n`` events."""
    from river import datasets

    rows = [(dict(x), float(y)) for x, y in datasets.TrumpApproval()]
    return [rows[i % len(rows)] for i in range(n)]


# ---------------------------------------------------------------------------- adapters
def forecaster_rate(n: int, horizon: int = 1, **params: Any) -> float:
    from streamseq.river import RNNForecaster

    model = RNNForecaster(seed=0, **params)
    ys = series(n + WARM).tolist()
    for y in ys[:WARM]:  # first calls, JIT cache: not timed
        model.forecast(horizon)
        model.learn_one(y)

    def go() -> int:
        for y in ys[WARM:]:
            model.forecast(horizon)
            model.learn_one(y)
        return n

    return cpu_rate(go)


def regressor_rate(n: int, **params: Any) -> float:
    from streamseq.river import RNNRegressor

    model = RNNRegressor(seed=0, **params)
    rows = trump(n + WARM)
    for x, y in rows[:WARM]:
        model.predict_one(x)
        model.learn_one(x, y)

    def go() -> int:
        for x, y in rows[WARM:]:
            model.predict_one(x)
            model.learn_one(x, y)
        return n

    return cpu_rate(go)


# ---------------------------------------------------------------------------- the engine
def engine_events(kind: str, n: int, **params: Any) -> tuple[Any, list[np.ndarray]]:
    """The engine configuration of an adapter with ``params`` and the value rows the
    adapter gives it for the forecaster's or the regressor's stream: the target, then the
    feature columns (the Trump features all take a column at the first event, in name
    order; the regressor's target column holds the previous target)."""
    from streamseq.river import RNNForecaster, RNNRegressor

    if kind == "forecaster":
        model: Any = RNNForecaster(seed=0, **params)
        width = 1 + model.max_features
        rows = [np.array([y] + [np.nan] * (width - 1)) for y in series(n).tolist()]
        return model.engine.config, rows
    model = RNNRegressor(seed=0, **params)
    stream = trump(n)
    names = sorted(stream[0][0])
    pad = [np.nan] * (model.max_features - len(names))
    rows, last = [], np.nan
    for x, y in stream:
        rows.append(np.array([last] + [x[k] for k in names] + pad))
        last = y
    return model.engine.config, rows


def engine_rate(kind: str, n: int, path: str, **params: Any) -> float:
    """``path``: ``process_one`` per event; ``calls``: the engine calls the adapter makes
    per event (``last_forecast`` or ``peek``, then ``process_one``); ``process`` of one
    event per call; or ``process`` of polls of 256 events."""
    from streamseq.engine import Engine
    from streamseq.events import Event

    config, rows = engine_events(kind, n + WARM, **params)
    eng = Engine(config)
    names = config.values
    if path == "process_one":
        for i in range(WARM):
            eng.process_one("k", rows[i], i)

        def go() -> int:
            for i in range(WARM, len(rows)):
                eng.process_one("k", rows[i], i)
            return n

        return cpu_rate(go)
    if path == "calls":  # what the adapter calls: its forecast or prediction, then the event
        if kind == "forecaster":
            def predict(i: int) -> Any:
                return eng.last_forecast("k")
        else:
            def predict(i: int) -> Any:
                return eng.peek("k", rows[i][None], np.array([i]))
        for i in range(WARM):
            predict(i)
            eng.process_one("k", rows[i], i)

        def go_calls() -> int:
            for i in range(WARM, len(rows)):
                predict(i)
                eng.process_one("k", rows[i], i)
            return n

        return cpu_rate(go_calls)
    events = [Event("sensor", "k", i, {nm: None if np.isnan(v) else float(v)
                                       for nm, v in zip(names, row, strict=True)})
              for i, row in enumerate(rows)]
    chunk = 1 if path == "process" else 256
    eng.process(events[:WARM])

    def go_poll() -> int:
        for i in range(WARM, len(events), chunk):
            eng.process(events[i:i + chunk])
        return n

    return cpu_rate(go_poll)


# ---------------------------------------------------------------------------- deep-river
PEERS_CHILD = r'''
import json, sys
import torch
torch.set_num_threads(1)
from bench.engine_speed import cpu_rate, repeat, series
from bench.river_bench import WARM, trump
from deep_river.forecasting import LSTMForecaster
from deep_river.regression.zoo import LSTMRegressor
spec = json.loads(sys.argv[1])

def forecaster(n):
    model = LSTMForecaster(window_size=10, hidden_size=16)
    ys = series(n + WARM).tolist()
    for y in ys[:WARM]:
        model.forecast(1)
        model.learn_one(y)
    def go():
        for y in ys[WARM:]:
            model.forecast(1)
            model.learn_one(y)
        return n
    return cpu_rate(go)

def regressor(n):
    model = LSTMRegressor(n_features=6, hidden_size=16)
    rows = trump(n + WARM)
    for x, y in rows[:WARM]:
        model.predict_one(x)
        model.learn_one(x, y)
    def go():
        for x, y in rows[WARM:]:
            model.predict_one(x)
            model.learn_one(x, y)
        return n
    return cpu_rate(go)

import deep_river, river
print(json.dumps({
    "versions": f"deep-river {deep_river.__version__}, river {river.__version__}, "
                f"torch {torch.__version__}",
    "deep-river LSTMForecaster (window 10, hidden 16)":
        repeat(lambda: forecaster(spec["n_forecaster"]), spec["repeats"]),
    "deep-river LSTMRegressor (hidden 16)":
        repeat(lambda: regressor(spec["n_regressor"]), spec["repeats"]),
}))
'''


def peer_rates(python: Path, n_forecaster: int, n_regressor: int,
               repeats: int) -> dict[str, Any]:
    spec = {"n_forecaster": n_forecaster, "n_regressor": n_regressor, "repeats": repeats}
    proc = subprocess.run([str(python), "-c", PEERS_CHILD, json.dumps(spec)], cwd=ROOT,
                          capture_output=True, text=True, timeout=3600)
    if proc.returncode != 0:
        raise RuntimeError(f"deep-river run failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------- report
def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.river_bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="fewer events")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--peers-python", type=Path, default=PEERS_PYTHON,
                   help="interpreter with deep-river (bench/peers_env.sh)")
    p.add_argument("--out", type=Path, default=REPORT)
    a = p.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    started = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    info = machine()
    s = 0.4 if a.quick else 1.0
    n, r = int(5000 * s), a.repeats
    print(f"river bench {started}: {info['cpu']}, load {info['load']}, rev {info['rev']}")

    lstm = {"cell": "lstm", "hidden": 16}
    forecaster_runs: dict[str, Callable[[], float]] = {
        "RNNForecaster forecast(1) + learn_one": lambda: forecaster_rate(n),
        "RNNForecaster forecast(12) + learn_one": lambda: forecaster_rate(n, 12),
        "Engine.last_forecast + process_one (the adapter's engine calls)":
            lambda: engine_rate("forecaster", n, "calls"),
        "Engine.process_one (learning only)":
            lambda: engine_rate("forecaster", n, "process_one"),
        "Engine.process, one event per call": lambda: engine_rate("forecaster", n, "process"),
        "Engine.process, polls of 256 events": lambda: engine_rate("forecaster", n, "polls"),
        "RNNForecaster LSTM 16, forecast(1) + learn_one": lambda: forecaster_rate(n, **lstm),
        "Engine.last_forecast + process_one, LSTM 16":
            lambda: engine_rate("forecaster", n, "calls", **lstm),
    }
    regressor_runs: dict[str, Callable[[], float]] = {
        "RNNRegressor predict_one + learn_one": lambda: regressor_rate(n),
        "Engine.peek + process_one (the adapter's engine calls)":
            lambda: engine_rate("regressor", n, "calls"),
        "Engine.process_one (learning only)":
            lambda: engine_rate("regressor", n, "process_one"),
        "Engine.process, one event per call": lambda: engine_rate("regressor", n, "process"),
        "Engine.process, polls of 256 events": lambda: engine_rate("regressor", n, "polls"),
        "RNNRegressor LSTM 16, predict_one + learn_one": lambda: regressor_rate(n, **lstm),
        "Engine.peek + process_one, LSTM 16": lambda: engine_rate("regressor", n, "calls",
                                                                 **lstm),
    }
    # repeats interleaved (every run once, then again): load drift on the shared machine
    # reaches every run alike
    got: dict[tuple[str, str], list[float]] = {}
    for rep in range(r):
        for part, runs in (("forecaster", forecaster_runs), ("regressor", regressor_runs)):
            for name, fn in runs.items():
                got.setdefault((part, name), []).append(fn())
                print(f"  {rep + 1}/{r} {part:<10} {name:<52} {got[part, name][-1]:,.0f} "
                      "ev/CPU-s", flush=True)

    def summary(vals: list[float]) -> dict[str, float]:
        return {"median": statistics.median(vals), "min": min(vals), "max": max(vals)}

    fc = {name: summary(got["forecaster", name]) for name in forecaster_runs}
    rg = {name: summary(got["regressor", name]) for name in regressor_runs}
    peers = peer_rates(a.peers_python, int(1500 * s), int(1000 * s), r)
    versions = peers.pop("versions")
    for name, v in peers.items():
        print(f"  {name:<58} {fmt(v)} ev/CPU-s")
    info_after = machine()

    def med(table: dict[str, dict[str, float]], name: str) -> float:
        return table[name]["median"]

    f_ad = med(fc, "RNNForecaster forecast(1) + learn_one")
    f_one = med(fc, "Engine.last_forecast + process_one (the adapter's engine calls)")
    f_poll = med(fc, "Engine.process, polls of 256 events")
    f_lstm = med(fc, "RNNForecaster LSTM 16, forecast(1) + learn_one")
    r_ad = med(rg, "RNNRegressor predict_one + learn_one")
    r_one = med(rg, "Engine.peek + process_one (the adapter's engine calls)")
    r_poll = med(rg, "Engine.process, polls of 256 events")
    r_lstm = med(rg, "RNNRegressor LSTM 16, predict_one + learn_one")
    dr_f = med(peers, "deep-river LSTMForecaster (window 10, hidden 16)")
    dr_r = med(peers, "deep-river LSTMRegressor (hidden 16)")

    def rows(table: dict[str, dict[str, float]], ref: float) -> list[str]:
        return [f"| {k} | {fmt(v)} | {v['median'] / ref:.2f} |" for k, v in table.items()]

    md = [
        "# River adapters: speed next to the engine and deep-river",
        "",
        f"Command: `.venv/bin/python -m bench.river_bench{' --quick' if a.quick else ''}`  ",
        f"Date: {started}; revision {info['rev']}  ",
        f"Machine: {info['cpu']}, {info['nproc']} CPUs, Python {info['python']}, one thread  ",
        f"Load average (1/5/15 min) before: {info['load']}, after: {info_after['load']} "
        "(shared machine: rates are per CPU second of the process that ran them, in one "
        "run)  ",
        f"Repeats: {r}, interleaved (each run once, then again); figures are the median "
        "(min..max) of events per CPU second; one event is one predict-then-learn step. "
        "Peers: " + versions + " (bench/.venv-peers, "
        "a subprocess).",
        "",
        "Adapters with their defaults (GRU 64, k1 = k2 = 4, Adam 1e-3) unless named; the "
        "engine rows run the engine configuration the adapter builds, on the values the "
        "adapter gives it. `Engine.process` over polls also runs the experts' aggregation "
        "(scored, not published by the adapters).",
        "",
        "## Forecaster (one series)",
        "",
        "| run | ev/CPU-s | vs `RNNForecaster` |",
        "|---|---:|---:|",
        *rows(fc, f_ad),
        f"| deep-river LSTMForecaster (window 10, hidden 16) | {fmt(peers[next(iter(peers))])}"
        f" | {dr_f / f_ad:.2f} |",
        "",
        "## Regressor (River's Trump approval ratings, 6 features, cycled)",
        "",
        "| run | ev/CPU-s | vs `RNNRegressor` |",
        "|---|---:|---:|",
        *rows(rg, r_ad),
        f"| deep-river LSTMRegressor (hidden 16) | {fmt(peers['deep-river LSTMRegressor (hidden 16)'])}"
        f" | {dr_r / r_ad:.2f} |",
        "",
        "## Summary",
        "",
        "| | forecaster | regressor |",
        "|---|---:|---:|",
        f"| adapter / the engine calls it makes | {f_ad / f_one:.0%} | {r_ad / r_one:.0%} |",
        f"| adapter / the engine over polls of 256 | {f_ad / f_poll:.0%} | {r_ad / r_poll:.0%} |",
        f"| adapter (GRU 64) / deep-river | {f_ad / dr_f:.1f}x | {r_ad / dr_r:.1f}x |",
        f"| adapter (LSTM 16) / deep-river (LSTM 16) | {f_lstm / dr_f:.1f}x | "
        f"{r_lstm / dr_r:.1f}x |",
        "",
    ]
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text("\n".join(md))
    print(f"report written to {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
