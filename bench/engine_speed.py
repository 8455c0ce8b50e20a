"""Engine speed and memory next to the real peers, in one run (issue 11).

    bash bench/peers_env.sh                                   # once: deep-river + river
    bench/.venv-peers/bin/python -m bench.engine_speed        # full run (~10 minutes)
    bench/.venv-peers/bin/python -m bench.engine_speed --quick
    ... --before /tmp/engine-before   # also the engine of another checkout (subprocess)

Writes ``bench/results/engine_speed.md``. Every rate is events per CPU second of the
process that ran it (torch and numba on one thread), the median of ``--repeats`` runs with
the spread (min..max); the machine's load is recorded before and after.

* single key, GRU 64, one value: the engine with its defaults and with learning off;
  deep-river's ``LSTMForecaster`` (the package, window 10, hidden 16: ``learn_one`` +
  ``forecast``); a hand-rolled stateful ``nn.GRU(64)`` loop (forecast each event, TBPTT
  every event / every 8 events, Adam); river ``SNARIMAX(p=10)``;
* 1,000 keys x 30 events interleaved: the engine with its defaults; ``SNARIMAX(p=10)``,
  one model per key;
* memory per key at 10k, 100k and 1M keys (a fresh process each: RSS growth and the key
  table's own bytes);
* the arithmetic limit: FLOPs per event of the configuration (forward + backward) at
  the machine's measured float32 rate (a large torch matmul), beside each figure;
* ``--before``: the same engine runs from another checkout (e.g. ``git worktree add
  /tmp/engine-before 2297f0b``) in a subprocess, for a before/after table.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

REPORT = Path(__file__).resolve().parent / "results" / "engine_speed.md"
ROOT = Path(__file__).resolve().parents[1]
HIDDEN = 64


# ---------------------------------------------------------------------------- inputs
def series(n: int, seed: int = 0) -> np.ndarray:
    """A noisy daily-ish sine with a random walk: one sensor's values."""
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    return (np.sin(2 * np.pi * t / 48) + 0.3 * np.cumsum(rng.normal(size=n)) * 0.05
            + 0.1 * rng.normal(size=n))


def key_events(n: int, keys: int, seed: int = 0) -> list[Any]:
    """``n`` events, ``keys`` keys in round-robin, one value each, one minute apart."""
    from streamseq.events import Event

    vals = series(n, seed)
    t0 = 1_700_000_000_000
    return [Event("sensor", f"key-{i % keys:07d}", t0 + 60_000 * (i // keys),
                  {"x": float(vals[i])}) for i in range(n)]


def cpu_rate(fn: Callable[[], int]) -> float:
    """Events per CPU second of ``fn`` (which returns how many events it processed)."""
    c0 = time.process_time()
    n = fn()
    return n / max(time.process_time() - c0, 1e-9)


def repeat(fn: Callable[[], float], times: int) -> dict[str, float]:
    vals = [fn() for _ in range(times)]
    return {"median": statistics.median(vals), "min": min(vals), "max": max(vals)}


# ---------------------------------------------------------------------------- the engine
def engine_rate(n: int, keys: int, learn: bool = True, warm: int = 0,
                chunk: int = 256, **learner: Any) -> float:
    import torch

    from streamseq.config import EngineConfig, LearnerConfig, ModelConfig
    from streamseq.engine import Engine

    torch.set_num_threads(1)
    lc = LearnerConfig(**{**LearnerConfig().__dict__, "learn": learn, **learner})
    eng = Engine(EngineConfig(values=("x",), model=ModelConfig(hidden=HIDDEN), learner=lc))
    events = key_events(n + warm, keys)
    for i in range(0, warm, chunk):  # first-call costs, table growth: not timed
        eng.process(events[i:min(i + chunk, warm)])

    def go() -> int:
        for i in range(warm, len(events), chunk):
            eng.process(events[i:i + chunk])
        return n

    return cpu_rate(go)


# ---------------------------------------------------------------------------- peers
def deep_river_rate(n: int) -> float:
    from deep_river.forecasting import LSTMForecaster

    model = LSTMForecaster(window_size=10, hidden_size=16)
    ys = series(n + 20).tolist()
    for y in ys[:20]:
        model.learn_one(y)

    def go() -> int:
        for y in ys[20:]:
            model.forecast(1)
            model.learn_one(y)
        return n

    return cpu_rate(go)


def stateful_gru_rate(n: int, every: int) -> float:
    """The hand-rolled loop: a stateful ``nn.GRU(64)`` that forecasts each event from its
    carried state and learns by truncated BPTT every ``every`` events (Adam)."""
    import torch
    from torch import nn

    torch.set_num_threads(1)
    torch.manual_seed(0)
    rnn, head = nn.GRU(1, HIDDEN, batch_first=True), nn.Linear(HIDDEN, 1)
    params = [*rnn.parameters(), *head.parameters()]
    opt = torch.optim.Adam(params, lr=1e-3)
    ys = torch.tensor(series(n + 1), dtype=torch.float32)

    def go() -> int:
        h = torch.zeros(1, 1, HIDDEN)
        loss = torch.zeros(())
        for i in range(n):
            out, h = rnn(ys[i].view(1, 1, 1), h)
            pred = head(out[0, -1])
            loss = loss + (pred[0] - ys[i + 1]) ** 2
            if (i + 1) % every == 0:
                opt.zero_grad()
                (loss / every).backward()
                nn.utils.clip_grad_norm_(params, 1.0)
                opt.step()
                h = h.detach()
                loss = torch.zeros(())
        return n

    return cpu_rate(go)


def snarimax_rate(n: int, keys: int) -> float:
    from river.time_series import SNARIMAX

    models = [SNARIMAX(p=10, d=0, q=0) for _ in range(keys)]
    ys = series(n).tolist()

    def go() -> int:
        for i, y in enumerate(ys):
            m = models[i % keys]
            m.forecast(horizon=1)
            m.learn_one(y)
        return n

    return cpu_rate(go)


# ---------------------------------------------------------------------------- memory
MEMORY_CHILD = r'''
import json, os, sys, resource
sys.path.insert(0, sys.argv[1])
import numpy as np, torch
torch.set_num_threads(1)
from streamseq.config import EngineConfig, ModelConfig, StateConfig
from streamseq.engine import Engine
from streamseq.events import Event
keys = int(sys.argv[2])

def rss() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

eng = Engine(EngineConfig(values=("x",), model=ModelConfig(hidden=64),
                          state=StateConfig(max_keys=max(keys, 100_000))))
eng.process([Event("sensor", "warm", 0, {"x": 0.0})])
base = rss()
t0 = 1_700_000_000_000
chunk = 4096
for rnd in range(2):
    for lo in range(0, keys, chunk):
        eng.process([Event("sensor", f"k{i:07d}", t0 + 60_000 * rnd, {"x": float(i % 7)})
                     for i in range(lo, min(lo + chunk, keys))])
table = eng.table
nbytes = table.nbytes() if hasattr(table, "nbytes") else 0
print(json.dumps({"keys": len(table), "rss_growth": rss() - base, "table_bytes": nbytes,
                  "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                  "rss": rss()}))
'''


def memory(root: Path, keys: int) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, "-c", MEMORY_CHILD, str(root), str(keys)],
                          capture_output=True, text=True, timeout=3600)
    if proc.returncode != 0:
        return {"keys": keys, "error": proc.stderr.strip().splitlines()[-1:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------- before
BEFORE_CHILD = r'''
import importlib.util, json, sys
sys.path.insert(0, sys.argv[1])  # that checkout's streamseq; this file's harness by path
spec_ = importlib.util.spec_from_file_location("harness", sys.argv[2])
harness = importlib.util.module_from_spec(spec_)
spec_.loader.exec_module(harness)
engine_rate, repeat = harness.engine_rate, harness.repeat
import streamseq
assert streamseq.__file__.startswith(sys.argv[1]), streamseq.__file__
spec = json.loads(sys.argv[3])
print(json.dumps({name: repeat(lambda: engine_rate(**kw), spec["repeats"])
                  for name, kw in spec["runs"].items()}))
'''


def before_rates(path: Path, runs: dict[str, dict[str, Any]], repeats: int) -> dict[str, Any]:
    """Engine rates of another checkout (its own streamseq, this file's harness)."""
    proc = subprocess.run([sys.executable, "-c", BEFORE_CHILD, str(path.resolve()),
                           str(Path(__file__).resolve()),
                           json.dumps({"runs": runs, "repeats": repeats})],
                          capture_output=True, text=True, timeout=3600)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-2000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------- limits
def matmul_gflops() -> float:
    import torch

    torch.set_num_threads(1)
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    a @ b
    c0 = time.process_time()
    for _ in range(8):
        a @ b
    return 8 * 2 * 1024 ** 3 / (time.process_time() - c0) / 1e9


def flops_per_event(k1: int, k2: int, learn: bool, inputs: int = 7, hidden: int = HIDDEN
                    ) -> float:
    """GRU forward of one step (3 gates over inputs and state, the head) and, learning,
    ``k2 / k1`` window steps of forward + backward (backward ~ 2 x forward)."""
    step = 2 * 3 * hidden * (inputs + hidden) + 2 * hidden
    return step + (3 * step * k2 / k1 if learn else 0)


# ---------------------------------------------------------------------------- report
def machine() -> dict[str, str]:
    from bench.common import cpu_model

    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                          capture_output=True, text=True).stdout.strip() or "unknown"
    return {"cpu": cpu_model(), "nproc": str(os.cpu_count()), "rev": head,
            "python": platform.python_version(),
            "load": " / ".join(f"{x:.2f}" for x in os.getloadavg())}


def fmt(r: dict[str, float]) -> str:
    return f"{r['median']:,.0f} ({r['min']:,.0f}..{r['max']:,.0f})"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.engine_speed", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="fewer events, 10k/100k keys only")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--before", type=Path, help="another checkout to compare (subprocess)")
    p.add_argument("--out", type=Path, default=REPORT)
    a = p.parse_args(argv)
    import torch

    from streamseq.config import LearnerConfig

    torch.set_num_threads(1)
    started = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    info = machine()
    s = 0.3 if a.quick else 1.0
    lc = LearnerConfig()
    r = a.repeats
    say = print
    say(f"engine speed {started}: {info['cpu']}, load {info['load']}, rev {info['rev']}")

    # first call: numba loads its cache (or compiles) -- what a service start pays
    c0 = time.perf_counter()
    engine_rate(10, 1)
    first_call = time.perf_counter() - c0
    say(f"  first engine call (JIT cache load or compile): {first_call:.1f} s")

    n1 = int(6000 * s)
    runs: dict[str, dict[str, float]] = {}
    runs["engine defaults"] = repeat(lambda: engine_rate(n1, 1, warm=200), r)
    runs["engine learning off"] = repeat(lambda: engine_rate(n1, 1, learn=False, warm=200), r)
    runs["deep-river LSTMForecaster"] = repeat(lambda: deep_river_rate(int(1500 * s)), r)
    runs["stateful nn.GRU, TBPTT every event"] = repeat(
        lambda: stateful_gru_rate(int(2000 * s), 1), r)
    runs["stateful nn.GRU, TBPTT every 8 events"] = repeat(
        lambda: stateful_gru_rate(int(3000 * s), 8), r)
    runs["river SNARIMAX(p=10)"] = repeat(lambda: snarimax_rate(int(20000 * s), 1), r)
    for name, v in runs.items():
        say(f"  single key  {name:<40} {fmt(v)} ev/CPU-s")
    n_k = 30_000
    many: dict[str, dict[str, float]] = {}
    many["engine defaults"] = repeat(lambda: engine_rate(n_k, 1000, warm=2000, chunk=2048), r)
    many["engine batch_windows=64"] = repeat(
        lambda: engine_rate(n_k, 1000, warm=2000, chunk=2048, batch_windows=64), r)
    many["engine learning off"] = repeat(
        lambda: engine_rate(n_k, 1000, learn=False, warm=2000, chunk=2048), r)
    many["river SNARIMAX(p=10), one per key"] = repeat(lambda: snarimax_rate(n_k, 1000), r)
    for name, v in many.items():
        say(f"  1,000 keys  {name:<40} {fmt(v)} ev/CPU-s")
    before: dict[str, Any] = {}
    if a.before is not None:
        before = before_rates(a.before, {
            "single key, defaults": {"n": n1, "keys": 1, "warm": 200},
            "single key, learning off": {"n": n1, "keys": 1, "learn": False, "warm": 200},
            "1,000 keys, defaults": {"n": n_k, "keys": 1000, "warm": 2000, "chunk": 2048},
        }, r)
        for name, v in before.items():
            say(f"  before      {name:<40} {fmt(v)} ev/CPU-s")
    gflops = matmul_gflops()
    fl_learn = flops_per_event(lc.k1, lc.k2, True)
    fl_infer = flops_per_event(lc.k1, lc.k2, False)
    say(f"  matmul {gflops:.1f} GFLOP/s; FLOPs per event {fl_learn:,.0f} learning, "
        f"{fl_infer:,.0f} inference")
    mem = [memory(ROOT, k) for k in ((10_000, 100_000) if a.quick else
                                     (10_000, 100_000, 1_000_000))]
    mem_before = [memory(a.before, k) for k in (10_000, 100_000)] if a.before else []
    for m in mem + mem_before:
        say(f"  memory {json.dumps(m)}")
    info_after = machine()

    def limit(fl: float) -> float:
        return gflops * 1e9 / fl

    dr = runs["deep-river LSTMForecaster"]["median"]
    gru1 = runs["stateful nn.GRU, TBPTT every event"]["median"]
    gru8 = runs["stateful nn.GRU, TBPTT every 8 events"]["median"]
    eng1 = runs["engine defaults"]["median"]
    off1 = runs["engine learning off"]["median"]
    engk = many["engine defaults"]["median"]
    snk = many["river SNARIMAX(p=10), one per key"]["median"]

    def verdict(ok: bool) -> str:
        return "**met**" if ok else "**not met**"

    rows = [f"| single key, {k} | {fmt(v)} |" for k, v in runs.items()]
    rows += [f"| 1,000 keys, {k} | {fmt(v)} |" for k, v in many.items()]
    targets = [
        f"| single key defaults vs deep-river LSTMForecaster | >= 10x | {eng1 / dr:.1f}x | "
        f"{verdict(eng1 >= 10 * dr)} |",
        f"| single key defaults vs stateful GRU loop (TBPTT every event) | >= 2x | "
        f"{eng1 / gru1:.1f}x | {verdict(eng1 >= 2 * gru1)} |",
        f"| (same, vs the loop with TBPTT every 8 events) | | {eng1 / gru8:.1f}x | |",
        f"| single key, learning off | >= 50,000 ev/CPU-s | {off1:,.0f} | "
        f"{verdict(off1 >= 50_000)} |",
        f"| 1,000 keys defaults | >= 100,000 ev/CPU-s | {engk:,.0f} | "
        f"{verdict(engk >= 100_000)} |",
        f"| 1,000 keys defaults vs SNARIMAX per key | >= 2x | {engk / snk:.1f}x | "
        f"{verdict(engk >= 2 * snk)} |",
    ]
    limits = [
        f"| learning (k1={lc.k1}, k2={lc.k2}) | {fl_learn:,.0f} | {limit(fl_learn):,.0f} | "
        f"single key {eng1 / limit(fl_learn):.1%}, 1,000 keys {engk / limit(fl_learn):.1%} |",
        f"| learning off | {fl_infer:,.0f} | {limit(fl_infer):,.0f} | "
        f"{off1 / limit(fl_infer):.1%} |",
    ]
    mem_rows = []
    for label, ms in (("engine", mem), ("before", mem_before)):
        for m in ms:
            if "error" in m:
                mem_rows.append(f"| {label} | {m['keys']:,} | error: {m['error']} | | |")
                continue
            per_rss = m["rss_growth"] / m["keys"]
            per_tab = m["table_bytes"] / m["keys"] if m["table_bytes"] else math.nan
            mem_rows.append(f"| {label} | {m['keys']:,} | {per_rss:,.0f} | {per_tab:,.0f} | "
                            f"{m['rss'] / 2**30:.2f} GiB |")
    before_rows = []
    if before:
        now = {"single key, defaults": runs["engine defaults"],
               "single key, learning off": runs["engine learning off"],
               "1,000 keys, defaults": many["engine defaults"]}
        for name, b in before.items():
            before_rows.append(f"| {name} | {fmt(b)} | {fmt(now[name])} | "
                               f"{now[name]['median'] / b['median']:.1f}x |")
    md = [
        "# Engine speed and memory",
        "",
        f"Command: `bench/.venv-peers/bin/python -m bench.engine_speed"
        f"{' --quick' if a.quick else ''}{f' --before {a.before}' if a.before else ''}`  ",
        f"Date: {started}; revision {info['rev']}  ",
        f"Machine: {info['cpu']}, {info['nproc']} CPUs, Python {info['python']}, one thread  ",
        f"Load average (1/5/15 min) before: {info['load']}, after: {info_after['load']} "
        "(shared machine: rates are per CPU second of the process that ran them)  ",
        f"Repeats: {r}; figures are the median (min..max). First engine call in a fresh "
        f"process (numba cache load): {first_call:.1f} s.",
        "",
        f"Model: GRU, 1 layer, hidden {HIDDEN}, one value (inputs: value, missing flag, time "
        f"gap, 4 calendar), horizon 1, defaults k1={lc.k1} k2={lc.k2} "
        f"batch_windows={lc.batch_windows}.",
        "",
        "## Rates (events per CPU second)",
        "",
        "| run | ev/CPU-s |",
        "|---|---:|",
        *rows,
        "",
        "## Targets (issue 11)",
        "",
        "| target | wanted | measured | |",
        "|---|---:|---:|---|",
        *targets,
        "",
        "## Arithmetic limit",
        "",
        f"float32 matmul rate of this machine (1024x1024, one thread): {gflops:.1f} GFLOP/s.",
        "",
        "| configuration | FLOPs per event | limit ev/s | measured, share of the limit |",
        "|---|---:|---:|---|",
        *limits,
        "",
        "## Memory per key (a fresh process per size; GRU 64, one value)",
        "",
        "| engine | keys | RSS growth per key (bytes) | table bytes per key | RSS |",
        "|---|---:|---:|---:|---:|",
        *mem_rows,
        "",
    ]
    if before_rows:
        md += ["## Before / after", "", f"Before: `{a.before}` (its own streamseq package, "
               "the same harness), in the same run.", "",
               "| run | before ev/CPU-s | now ev/CPU-s | ratio |", "|---|---:|---:|---:|",
               *before_rows, ""]
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text("\n".join(md))
    say(f"report written to {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
