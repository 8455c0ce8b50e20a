"""A small, honest hyperparameter search: on a warm-up span only, never on the test span.

``python -m bench.tune --data FILE [--data FILE ...] [--lr 3e-4,1e-3,3e-3]
[--hidden 32,64,128] [--k 1x16,4x16] [--batch-windows 1,16] [--search coord|grid]``

Three modes; each looks only at the first part of a stream, or at other streams:

* **protocol** (``--train-rows A --val-rows B``, one CSV whose first column is a date): the
  objective is the best online validation MSE of :mod:`bench.online_protocol` (warm-up
  epochs on ``[0, A)``, predict-then-learn on ``[A, A+B)``, z-scored with training
  statistics). Rows at and after ``A + B + horizon + 1`` are not even read into events.
* **stream** (default; files or folders as ``streamseq backtest`` reads them): the first
  ``--tune-rows`` events of each key form the tuning span; the engine warms up offline on
  its first half (``--epochs`` passes) and runs its second half online, predict then learn,
  exactly as the service would. The objective is the engine's scaled MAE (errors in units of
  each key's running std) divided by persistence's on the same events; with several
  ``--data`` the geometric mean over them.
* **suite** (``--suite heldout``): the defaults question. The held-out streams of
  :data:`bench.peers.TUNING` (other NAB files, another Beijing station, ETTh1, BAC ticks,
  IBM bars, NZDUSD; none of them in the peers' comparison), the first ``--tune-rows``
  events per key, online from a cold start as in :mod:`bench.peers`; the objective is the
  geometric mean over them of the engine's MASE.

The search is coordinate-wise by default: start from the first value of every axis (or the
engine's defaults), sweep one axis at a time keeping the best value, ``--rounds`` times.
``--search grid`` tries every combination. It prints every trial and the best config, as
command-line flags and as ``streamseq/config.py`` field values.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bench.online_protocol import ProtocolRun, Split, load_table
from streamseq.backtest import Backtest
from streamseq.config import EngineConfig
from streamseq.events.schema import Event
from streamseq.io.files import FileLayout, read_events

__all__ = ["Trial", "coordinate_search", "grid_search", "stream_objective",
           "suite_objective", "protocol_objective", "main"]

Trial = dict[str, Any]
AXES = ("lr", "hidden", "k", "batch_windows", "cell")


def _floats(s: str) -> list[float]:
    return [float(x) for x in s.split(",") if x]


def _ints(s: str) -> list[int]:
    return [int(x) for x in s.split(",") if x]


def _ks(s: str) -> list[tuple[int, int]]:
    out = []
    for part in s.split(","):
        k1, k2 = part.lower().split("x")
        out.append((int(k1), int(k2)))
    return out


def apply(base: EngineConfig, point: dict[str, Any]) -> EngineConfig:
    """``base`` with a search point (``lr``, ``hidden``, ``k`` = (k1, k2), ...) applied."""
    ch: dict[str, Any] = {}
    if "lr" in point:
        ch["learner.lr"] = point["lr"]
    if "hidden" in point:
        ch["model.hidden"] = point["hidden"]
    if "k" in point:
        ch["learner.k1"], ch["learner.k2"] = point["k"]
    if "batch_windows" in point:
        ch["learner.batch_windows"] = point["batch_windows"]
    if "cell" in point:
        ch["model.cell"] = point["cell"]
    return base.replace(**ch)


def coordinate_search(space: dict[str, list[Any]], objective: Callable[[dict[str, Any]], Any],
                      start: dict[str, Any] | None = None, rounds: int = 1,
                      log: Any = None) -> tuple[dict[str, Any], list[Trial]]:
    """One axis at a time from ``start`` (default: each axis' first value)."""
    point = dict(start or {k: v[0] for k, v in space.items()})
    cache: dict[str, float] = {}
    trials: list[Trial] = []

    def score(p: dict[str, Any]) -> float:
        key = json.dumps(p, sort_keys=True, default=str)
        if key not in cache:
            t0 = time.perf_counter()
            val, extra = _split(objective(p))
            cache[key] = val
            trials.append({**p, "objective": val, **extra,
                           "seconds": time.perf_counter() - t0})
            if log is not None:
                print(f"  {_fmt_point(p)} -> {cache[key]:.5f}", file=log, flush=True)
        return cache[key]

    best = score(point)
    for _ in range(rounds):
        changed = False
        for axis, values in space.items():
            for v in values:
                cand = {**point, axis: v}
                s = score(cand)
                if s < best - 1e-12:
                    best, point, changed = s, cand, True
        if not changed:
            break
    return point, trials


def grid_search(space: dict[str, list[Any]], objective: Callable[[dict[str, Any]], Any],
                log: Any = None) -> tuple[dict[str, Any], list[Trial]]:
    trials: list[Trial] = []
    best: tuple[float, dict[str, Any]] = (math.inf, {})
    for combo in itertools.product(*space.values()):
        p = dict(zip(space.keys(), combo, strict=True))
        t0 = time.perf_counter()
        s, extra = _split(objective(p))
        trials.append({**p, "objective": s, **extra, "seconds": time.perf_counter() - t0})
        if log is not None:
            print(f"  {_fmt_point(p)} -> {s:.5f}", file=log, flush=True)
        if s < best[0]:
            best = (s, p)
    return best[1], trials


def parse_candidates(text: str) -> list[dict[str, Any]]:
    """``"lr=1e-3 k=4x16; lr=3e-3 k=1x16 batch_windows=1"`` -> search points."""
    conv: dict[str, Callable[[str], Any]] = {
        "lr": float, "hidden": int, "batch_windows": int, "cell": str,
        "k": lambda v: _ks(v)[0]}
    out = []
    for part in text.split(";"):
        if part.strip():
            out.append({k: conv[k](v) for k, v in (kv.split("=") for kv in part.split())})
    return out


def list_search(points: Sequence[dict[str, Any]], objective: Callable[[dict[str, Any]], Any],
                log: Any = None) -> tuple[dict[str, Any], list[Trial]]:
    trials: list[Trial] = []
    best: tuple[float, dict[str, Any]] = (math.inf, {})
    for p in points:
        t0 = time.perf_counter()
        s, extra = _split(objective(p))
        trials.append({**p, "objective": s, **extra, "seconds": time.perf_counter() - t0})
        if log is not None:
            print(f"  {_fmt_point(p)} -> {s:.5f}", file=log, flush=True)
        if s < best[0]:
            best = (s, p)
    return best[1], trials


def _split(r: float | tuple[float, dict[str, Any]]) -> tuple[float, dict[str, Any]]:
    """An objective returns its value, or its value and details for the trial record."""
    return (r[0], r[1]) if isinstance(r, tuple) else (r, {})


def _fmt_point(p: dict[str, Any]) -> str:
    return " ".join(f"{k}={'x'.join(map(str, v)) if isinstance(v, tuple) else v}"
                    for k, v in p.items())


# ---------------------------------------------------------------------- objectives
def tuning_span(events: Sequence[Event], rows_per_key: int) -> list[Event]:
    """The first ``rows_per_key`` events of every key, in stream order."""
    seen: Counter[str] = Counter()
    out = []
    for ev in events:
        if seen[ev.key] < rows_per_key:
            seen[ev.key] += 1
            out.append(ev)
    return out


def stream_score(config: EngineConfig, events: Sequence[Event], warm_rows: int,
                 epochs: int) -> float:
    """Engine scaled MAE / persistence scaled MAE on the online half of ``events``."""
    bt = Backtest(config, warmup_rows=warm_rows, warmup_epochs=epochs)
    bt.run(events)
    z = bt.report()["overall"]["scaled_mae"]
    if not z["model"] or not z["persistence"]:
        return math.inf
    return float(z["model"] / z["persistence"])


def stream_objective(base: EngineConfig, datasets: Sequence[Sequence[Event]],
                     rows_per_key: int, epochs: int) -> Callable[[dict[str, Any]], float]:
    """Geometric mean over datasets of :func:`stream_score`."""
    def f(point: dict[str, Any]) -> float:
        cfg = apply(base, point)
        logs = []
        for evs in datasets:
            s = stream_score(cfg, evs, rows_per_key // 2, epochs)
            if not math.isfinite(s) or s <= 0:
                return math.inf
            logs.append(math.log(s))
        return math.exp(sum(logs) / len(logs))
    return f


def suite_objective(base: EngineConfig, suite: Sequence[Any]
                    ) -> Callable[[dict[str, Any]], tuple[float, dict[str, Any]]]:
    """Geometric mean over ``bench.peers`` datasets of the engine's MASE, cold start; the
    trial also records each dataset's MASE."""
    from bench import peers

    def f(point: dict[str, Any]) -> tuple[float, dict[str, Any]]:
        cfg = apply(base, point)
        per: dict[str, float] = {}
        for ds in suite:
            fc = peers.run_engine(ds, peers.engine_config(ds, cfg))
            per[ds.spec.name] = peers.evaluate(ds, {"engine": fc})["engine"]["mase"]
        if not all(math.isfinite(v) and v > 0 for v in per.values()):
            return math.inf, {"mase": per}
        return math.exp(sum(math.log(v) for v in per.values()) / len(per)), {"mase": per}
    return f


def protocol_objective(base: EngineConfig, run_for: Callable[[EngineConfig], ProtocolRun],
                       seed: int = 0) -> Callable[[dict[str, Any]], float]:
    """Best online validation MSE over warm-up epochs (bench.online_protocol)."""
    def f(point: dict[str, Any]) -> float:
        pr = run_for(apply(base, point))
        _, hist = pr.warm_up(seed)
        return min(hist) if hist else math.inf
    return f


# ---------------------------------------------------------------------- command line
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.tune", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", action="append", default=[],
                   help="CSV/CSV.gz file or folder (repeatable in stream mode)")
    p.add_argument("--suite", choices=["heldout"], help="instead of --data: the held-out "
                   "streams of bench.peers (TUNING: other files than the peers' test sets), "
                   "cold start, objective = geometric mean of the engine's MASE")
    p.add_argument("--data-dir", default=None, help="shared/data (suite mode)")
    p.add_argument("--train-rows", type=int, help="protocol mode: training rows")
    p.add_argument("--val-rows", type=int, help="protocol mode: validation rows")
    p.add_argument("--horizon", type=int, default=1)
    p.add_argument("--tune-rows", type=int, default=2000,
                   help="stream mode: first N events per key (half warm-up, half online)")
    p.add_argument("--epochs", type=int, default=2, help="warm-up epochs (protocol: most)")
    p.add_argument("--patience", type=int, default=1)
    p.add_argument("--lr", type=_floats, default=[1e-3, 3e-4, 3e-3])
    p.add_argument("--hidden", type=_ints, default=[64, 32, 128])
    p.add_argument("--k", type=_ks, default=[(4, 16), (1, 16), (8, 32)],
                   help="k1xk2 pairs, e.g. 1x16,4x16")
    p.add_argument("--batch-windows", type=_ints, default=[16, 1, 4])
    p.add_argument("--cell", default="gru", help="gru, lstm or gru,lstm")
    p.add_argument("--search", choices=["coord", "grid", "list"], default="coord",
                   help="list: only the --candidates")
    p.add_argument("--candidates", default="", help="list search: configs separated by ';', "
                   "each 'lr=1e-3 hidden=64 k=4x16 batch_windows=16 cell=gru'")
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--kind", choices=["sensor", "price"], help="stream mode: event kind")
    p.add_argument("--report-json", type=Path)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    import torch

    torch.set_num_threads(1)
    a = build_parser().parse_args(argv)
    space: dict[str, list[Any]] = {"lr": a.lr, "hidden": a.hidden, "k": a.k,
                                   "batch_windows": a.batch_windows,
                                   "cell": a.cell.split(",")}
    space = {k: v for k, v in space.items() if len(v) > 0}
    base = EngineConfig()
    if a.suite:
        from bench import peers

        data_dir = Path(a.data_dir) if a.data_dir else peers.DEFAULT_DATA
        suite = [peers.load_dataset(spec, data_dir, a.tune_rows)
                 for spec in peers.TUNING.values()]
        objective = suite_objective(base, suite)
        mode = (f"suite {a.suite}: {', '.join(d.spec.name for d in suite)}, first "
                f"{a.tune_rows} events per key, cold start online; objective = geometric "
                "mean over datasets of the engine's MASE (bench.peers metric)")
    elif not a.data:
        raise SystemExit("give --data or --suite")
    elif a.train_rows is not None:
        if len(a.data) != 1 or a.val_rows is None:
            raise SystemExit("protocol mode takes one --data and --val-rows")
        table = load_table(a.data[0])
        s = a.train_rows + a.val_rows
        split = Split(a.train_rows, a.val_rows, max(s - min(60, a.val_rows), a.train_rows),
                      min(len(table), s + a.horizon + 1), a.horizon)

        def run_for(cfg: EngineConfig) -> ProtocolRun:
            return ProtocolRun(table, split, cfg, epochs=a.epochs, patience=a.patience)

        objective = protocol_objective(base, run_for)
        mode = f"protocol: train [0,{a.train_rows}) val [{a.train_rows},{s}), objective = " \
               "best online validation MSE (z-scored)"
    else:
        layout = FileLayout(kind=a.kind, limit_per_file=a.tune_rows)
        datasets = [tuning_span(list(read_events([d], layout)), a.tune_rows) for d in a.data]
        objective = stream_objective(base, datasets, a.tune_rows, a.epochs)
        mode = (f"stream: first {a.tune_rows} events per key, half warm-up, half online; "
                "objective = scaled MAE model / persistence (geometric mean over --data)")
    print(f"tuning ({mode}); search {a.search} over "
          + ", ".join(f"{k}={v}" for k, v in space.items()), file=sys.stderr)
    if a.search == "list":
        best, trials = list_search(parse_candidates(a.candidates), objective, log=sys.stderr)
    elif a.search == "grid":
        best, trials = grid_search(space, objective, log=sys.stderr)
    else:
        best, trials = coordinate_search(space, objective, rounds=a.rounds, log=sys.stderr)
    trials.sort(key=lambda t: t["objective"])
    print(f"{'objective':>10}  config")
    for t in trials:
        print(f"{t['objective']:>10.5f}  " + _fmt_point(
            {k: v for k, v in t.items() if k not in ("objective", "seconds", "mase")}))
    cfg = apply(base, best)
    flags = (f"--cell {cfg.model.cell} --hidden {cfg.model.hidden} --k1 {cfg.learner.k1} "
             f"--k2 {cfg.learner.k2} --batch-windows {cfg.learner.batch_windows} "
             f"--lr {cfg.learner.lr:g}")
    print(f"best: {_fmt_point(best)}  (objective {trials[0]['objective']:.5f})")
    print(f"flags: {flags}")
    print(f"config.py: ModelConfig(cell={cfg.model.cell!r}, hidden={cfg.model.hidden}), "
          f"LearnerConfig(k1={cfg.learner.k1}, k2={cfg.learner.k2}, "
          f"batch_windows={cfg.learner.batch_windows}, lr={cfg.learner.lr:g})")
    if a.report_json:
        a.report_json.parent.mkdir(parents=True, exist_ok=True)
        a.report_json.write_text(json.dumps({
            "mode": mode, "data": a.data, "search": a.search,
            "space": {k: [list(x) if isinstance(x, tuple) else x for x in v]
                      for k, v in space.items()},
            "best": {k: list(v) if isinstance(v, tuple) else v for k, v in best.items()},
            "flags": flags,
            "trials": [{k: list(v) if isinstance(v, tuple) else v for k, v in t.items()}
                       for t in trials],
            "command": "python -m bench.tune " + " ".join(sys.argv[1:] if argv is None
                                                           else argv),
        }, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
