"""``streamseq backtest``: replay recorded files through the engine and report accuracy.

The same engine as the live service; only the source (files) and sink (a report) differ.
Every number comes from forecasts made before their target was seen.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from streamseq.config import EngineConfig, LearnerConfig
from streamseq.config_base import add_flags, flag_overrides
from streamseq.engine import Engine
from streamseq.evaluation.metrics import ErrorTotals, summarize
from streamseq.events.schema import Event
from streamseq.exceptions import DataError
from streamseq.forecast import EXPERTS, add_totals, summarize_totals
from streamseq.io.files import RowErrors, read_events
from streamseq.io.options import add_layout_args, layout_from_args
from streamseq.pipeline import InputRecord, apply_events
from streamseq.shards import NumericShard
from streamseq.state.checkpoint import load_file, save_file

__all__ = ["Backtest", "run_backtest", "register", "engine_config_from_args", "add_engine_args"]

log = logging.getLogger(__name__)
MAX_ANOMALIES = 10_000  # anomalies listed in the report (all are counted)
CHUNK = 2048


@dataclass
class Backtest:
    """Routes events to one shard per (kind, value names) and keeps the report figures.

    Each batch goes through the same pipeline step as the live service
    (:func:`streamseq.pipeline.apply_events`); a prediction's source is ``("file", 0,
    position in the replay)``.

    Examples
    --------
    >>> bt = Backtest(EngineConfig(learner=LearnerConfig(k1=1, k2=4, batch_windows=1)))
    >>> evs = [Event("sensor", "a", 60_000 * i, {"x": float(i % 4)}) for i in range(40)]
    >>> bt.run(evs)
    >>> r = bt.report(); r["overall"]["events"], sorted(r["keys"])
    (40, ['a'])
    """

    config: EngineConfig
    warmup_rows: int = 0
    warmup_epochs: int = 1
    shards: dict[tuple[str, tuple[str, ...]], NumericShard] = field(default_factory=dict)
    elapsed: float = 0.0
    online_events: int = 0
    predictions_out: TextIO | None = None
    anomalies: list[dict[str, Any]] = field(default_factory=list)  # the first MAX_ANOMALIES
    anomalies_total: int = 0
    _seen: int = 0

    @property
    def engines(self) -> dict[tuple[str, tuple[str, ...]], Engine]:
        """The engine of each (kind, value names) signature."""
        return {sig: shard.engine for sig, shard in self.shards.items()}

    def add_engine(self, engine: Engine) -> None:
        """Route the events of ``engine``'s signature to it (a restored checkpoint)."""
        sig = (engine.config.kind, tuple(sorted(engine.value_names or ())))
        self.shards[sig] = NumericShard(engine=engine)

    def _shard_for(self, ev: Event) -> NumericShard:
        sig = (ev.kind, tuple(sorted(ev.values)))
        shard = self.shards.get(sig)
        if shard is None:
            cfg = self.config
            if cfg.kind != ev.kind:
                cfg = cfg.replace(kind=ev.kind)
            if cfg.values is None:
                cfg = cfg.replace(values=list(sig[1]))
            if cfg.targets is not None:
                cfg = cfg.replace(targets=[t for t in cfg.targets if t in sig[1]] or None)
            shard = self.shards[sig] = NumericShard(cfg)
        return shard

    def _engine_for(self, ev: Event) -> Engine:
        return self._shard_for(ev).engine

    def _feed(self, batch: list[Event]) -> None:
        groups: dict[int, tuple[NumericShard, list[Event], list[InputRecord]]] = {}
        for ev in batch:
            shard = self._shard_for(ev)
            group = groups.get(id(shard))
            if group is None:
                group = groups[id(shard)] = (shard, [], [])
            group[1].append(ev)
            group[2].append(InputRecord("file", 0, self._seen))  # position in the replay
            self._seen += 1
        for shard, evs, sources in groups.values():
            step = apply_events(evs, sources, shard)
            if step.anomalies and shard.engine.scoring:
                self.anomalies_total += len(step.anomalies)
                room = MAX_ANOMALIES - len(self.anomalies)
                self.anomalies += [json.loads(a.value) for a in step.anomalies[:max(room, 0)]]
            if self.predictions_out is not None and step.predictions:
                self.predictions_out.write(
                    b"\n".join(p.value for p in step.predictions).decode() + "\n")

    def warm_up(self, events: Sequence[Event]) -> None:
        """Offline training on ``events`` (the first rows of each key), ``warmup_epochs``
        passes, nothing scored; the online phase continues from the last pass's state."""
        if not events:
            return
        if self.config.features.scaling == "fixed":
            for ev in events:
                self._engine_for(ev)
            for eng in self.engines.values():
                eng.fit_scaler([e for e in events if self._engine_for(e) is eng])
        for eng in {id(self._engine_for(e)): self._engine_for(e) for e in events}.values():
            eng.scoring = False
        for epoch in range(self.warmup_epochs):
            if epoch:
                for eng in self.engines.values():
                    eng.reset_streams()
            for i in range(0, len(events), CHUNK):
                self._feed(list(events[i:i + CHUNK]))
        for eng in self.engines.values():
            eng.scoring = True
            eng.stats.z_abs_model = eng.stats.z_abs_persistence = 0.0
            eng.stats.z_scored = 0

    def run(self, events: Iterable[Event], progress: Progress | None = None) -> None:
        """Warm up on the first ``warmup_rows`` of each key, then run the rest online."""
        it = iter(events)
        online: Iterator[Event] = it
        if self.warmup_rows > 0:
            warm: list[Event] = []
            held: list[Event] = []
            counts: Counter[str] = Counter()
            for ev in it:
                if counts[ev.key] < self.warmup_rows:
                    counts[ev.key] += 1
                    warm.append(ev)
                else:
                    held.append(ev)
                    if len(held) >= CHUNK * 64:
                        break
            self.warm_up(warm)
            online = _chain(held, it)
        t0 = time.perf_counter()
        batch: list[Event] = []
        for ev in online:
            batch.append(ev)
            if len(batch) >= CHUNK:
                self._feed(batch)
                self.online_events += len(batch)
                batch = []
                if progress:
                    progress.update(self.online_events, time.perf_counter() - t0)
        if batch:
            self._feed(batch)
            self.online_events += len(batch)
        self.elapsed += time.perf_counter() - t0
        if progress:
            progress.done(self.online_events, self.elapsed)

    def report(self) -> dict[str, Any]:
        """Per key and overall MAE, RMSE, MSE, MASE (model and persistence)."""
        keys: dict[str, Any] = {}
        overall: ErrorTotals | None = None
        z_m = z_p = 0.0
        z_n = 0
        rejected: Counter[str] = Counter()
        dropped: Counter[str] = Counter()
        forecast: dict[str, np.ndarray] | None = None
        for eng in self.engines.values():
            for key, tot in eng.key_totals().items():
                keys[key] = {**summarize(tot), "events": int(tot.cnt[0].max(initial=0))}
                ft = eng.forecast_totals(key)
                w = eng.key_weights(key)
                if ft is not None and w is not None:
                    mix = summarize_totals(ft, self.config.forecast.coverage)
                    keys[key]["mixture"] = mix["forecasters"]["mixture"]
                    keys[key]["weights"] = {
                        name: dict(zip(EXPERTS, w[0, j].round(4).tolist(), strict=True))
                        for j, name in enumerate(eng.target_names)}
            ft = eng.forecast_totals()
            if ft is not None:
                forecast = add_totals(forecast, ft)
            tot = eng.totals()
            if overall is None or overall.cnt.shape != tot.cnt.shape:
                overall = tot if overall is None else _merge_flat(overall, tot)
            else:
                overall.add(tot)
            z_m += eng.stats.z_abs_model
            z_p += eng.stats.z_abs_persistence
            z_n += eng.stats.z_scored
            rejected.update(eng.stats.rejected)
            dropped.update(eng.stats.dropped)
        summary = summarize(overall) if overall is not None else summarize(ErrorTotals.zeros(1, 1))
        eps = self.online_events / self.elapsed if self.elapsed > 0 else 0.0
        experts = ({} if forecast is None
                   else summarize_totals(forecast, self.config.forecast.coverage))
        return {
            "overall": {**summary, "events": self.online_events, "events_per_s": eps,
                        "scaled_mae": {"model": z_m / z_n if z_n else None,
                                       "persistence": z_p / z_n if z_n else None},
                        "aggregation": bool(self.config.forecast.experts), **experts},
            "keys": keys,
            "anomalies": self.anomalies,
            "anomalies_total": self.anomalies_total,
            "rejected": dict(rejected),
            "dropped": dict(dropped),
            "config": self.config.to_dict(),
        }


def _merge_flat(a: ErrorTotals, b: ErrorTotals) -> ErrorTotals:
    """Engines with different target counts: average over targets, keep horizons."""
    def flat(t: ErrorTotals) -> ErrorTotals:
        return ErrorTotals(*(x.sum(axis=1, keepdims=True) for x in
                             (t.m_abs, t.m_sq, t.p_abs, t.p_sq, t.cnt)))
    fa, fb = flat(a), flat(b)
    h = max(fa.cnt.shape[0], fb.cnt.shape[0])
    out = ErrorTotals.zeros(h, 1)
    for t in (fa, fb):
        for name in ("m_abs", "m_sq", "p_abs", "p_sq", "cnt"):
            getattr(out, name)[: t.cnt.shape[0]] += getattr(t, name)
    return out


def _chain(first: list[Event], rest: Iterator[Event]) -> Iterator[Event]:
    yield from first
    yield from rest


class Progress:
    """A one-line progress report on stderr (events, events/s), throttled."""

    def __init__(self, stream: TextIO = sys.stderr, every: float = 0.5,
                 total: int | None = None) -> None:
        self.stream = stream
        self.every = every
        self.total = total
        self._last = 0.0

    def update(self, n: int, elapsed: float) -> None:
        if elapsed - self._last < self.every:
            return
        self._last = elapsed
        rate = n / elapsed if elapsed > 0 else 0.0
        pct = f" {100 * n / self.total:5.1f}%" if self.total else ""
        self.stream.write(f"\r  {n:>10,} events{pct}  {rate:>10,.0f} ev/s  {elapsed:7.1f}s")
        self.stream.flush()

    def done(self, n: int, elapsed: float) -> None:
        rate = n / elapsed if elapsed > 0 else 0.0
        self.stream.write(f"\r  {n:>10,} events  {rate:>10,.0f} ev/s  {elapsed:7.1f}s\n")
        self.stream.flush()


def format_table(report: dict[str, Any], max_keys: int = 50) -> str:
    """The human-readable table of a backtest report."""
    head = (f"{'key':<28} {'events':>9} {'MAE':>11} {'RMSE':>11} {'MSE':>11} {'MASE':>7}"
            f" | {'MAE naive':>11} {'RMSE naive':>11} {'MSE naive':>11}")
    lines = [head, "-" * len(head)]

    def row(name: str, r: dict[str, Any], events: int) -> str:
        m, p = r["model"], r["persistence"]

        def f(x: float | None, w: int = 11) -> str:
            return f"{x:>{w}.5g}" if x is not None else f"{'-':>{w}}"
        return (f"{name[:28]:<28} {events:>9,} {f(m['mae'])} {f(m['rmse'])} {f(m['mse'])} "
                f"{f(m['mase'], 7)} | {f(p['mae'])} {f(p['rmse'])} {f(p['mse'])}")

    for i, (k, r) in enumerate(sorted(report["keys"].items())):
        if i >= max_keys:
            lines.append(f"... {len(report['keys']) - max_keys} more keys in the JSON report")
            break
        lines.append(row(k, r, r["events"]))
    lines.append("-" * len(head))
    o = report["overall"]
    lines.append(row("OVERALL", o, o["events"]))
    lines.append(f"events/s: {o['events_per_s']:,.0f}   scaled MAE model "
                 f"{_fmt(o['scaled_mae']['model'])} vs persistence "
                 f"{_fmt(o['scaled_mae']['persistence'])}")
    if o.get("forecasters"):
        fc = o["forecasters"]
        shown = "published" if o["aggregation"] else "not published: --no-experts"
        lines.append("MASE by forecaster: " + "  ".join(
            f"{name} {_fmt(r['mase'])}" for name, r in fc.items()) + f" (mixture {shown})")
        iv = o["interval"]
        if iv["coverage"] is not None:
            lines.append(f"{100 * iv['nominal']:.0f}% interval: coverage "
                         f"{100 * iv['coverage']:.1f}%, mean width {iv['width']:.5g}, "
                         f"Winkler {iv['winkler']:.5g}; anomalies flagged: {o['anomalies']}")
    if report["rejected"] or report["dropped"]:
        lines.append(f"rejected: {report['rejected']}  dropped: {report['dropped']}")
    return "\n".join(lines)


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.4f}"


# ---------------------------------------------------------------------- command line
def add_engine_args(p: argparse.ArgumentParser) -> None:
    """Model, learner and feature options shared by backtest, run and the benches
    (generated from :class:`EngineConfig`'s fields)."""
    add_flags(p.add_argument_group("model and learning"), EngineConfig)


def normalize_engine_flags(overrides: dict[str, Any]) -> dict[str, Any]:
    """``--k1`` above the default backprop length raises ``k2`` with it (unless ``--k2``
    is given too): flags name what the user wants, the config file what it must be."""
    for engine in (overrides, overrides.get("engine", {})):
        learner = engine.get("learner", {})
        if "k1" in learner and "k2" not in learner:
            learner["k2"] = max(learner["k1"], LearnerConfig().k2)
    return overrides


def engine_config_from_args(a: argparse.Namespace, kind: str = "sensor",
                            targets: Sequence[str] | None = None) -> EngineConfig:
    """The engine configuration of the flags given (defaults for the others)."""
    given = normalize_engine_flags(flag_overrides(a))
    given["kind"] = kind
    given["targets"] = tuple(targets) if targets else None
    warm = getattr(a, "warmup_rows", 0) or 0
    if warm:
        given.setdefault("features", {})["fixed_warmup"] = warm
    return EngineConfig.from_dict(given)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("backtest", help="replay CSV/CSV.gz/JSONL files through the engine",
                       description=__doc__)
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="files or folders")
    add_layout_args(p)
    add_engine_args(p)
    p.add_argument("--warmup-rows", type=int, default=0,
                   help="offline training on the first N rows of each key before scoring")
    p.add_argument("--warmup-epochs", type=int, default=1)
    p.add_argument("--report-json", type=Path)
    p.add_argument("--predictions", type=Path, help="write every forecast as JSON lines")
    p.add_argument("--checkpoint", type=Path, help="start from this engine checkpoint "
                   "(warm start)")
    p.add_argument("--save-checkpoint", type=Path,
                   help="save the engine state at the end (a warm start for `streamseq run`)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.set_defaults(func=run_backtest)


def run_backtest(a: argparse.Namespace) -> int:
    """The ``backtest`` command: exit 0 with a report, or raise (the CLI maps the error to
    one line and exit code 1 or 2; a run that scored nothing is an error, not a report)."""
    import torch

    torch.set_num_threads(max(1, a.threads))
    layout = layout_from_args(a)
    text = _text_dispatch(a)
    if text is not None:
        return text
    errors = RowErrors()
    events = read_events(a.inputs, layout, errors)
    cfg = engine_config_from_args(a, kind=a.kind or "sensor", targets=a.target)
    bt = Backtest(cfg, warmup_rows=a.warmup_rows, warmup_epochs=a.warmup_epochs)
    pred_fh = open(a.predictions, "w") if a.predictions else None  # noqa: SIM115
    bt.predictions_out = pred_fh
    try:
        if a.checkpoint:
            state = load_file(a.checkpoint)
            for sig_state in state["engines"]:
                eng = Engine(EngineConfig.from_dict(sig_state["config"]))
                eng.load_state_dict(sig_state)
                bt.add_engine(eng)
        bt.run(events, None if a.no_progress else Progress())
    finally:
        if pred_fh:
            pred_fh.close()
    report = bt.report()
    report["bad_rows"] = dict(errors.counts)
    if not report["overall"]["scored"]:
        raise DataError(_nothing_scored(report, errors, a.warmup_rows))
    print(format_table(report))
    if errors.total:
        print(f"bad rows: {errors.summary()}")
    if a.report_json:
        a.report_json.write_text(json.dumps(report, indent=2, default=_json_default))
    if a.save_checkpoint:
        save_file(a.save_checkpoint, {"format": "streamseq-backtest", "engines": [
            e.state_dict() for e in bt.engines.values()]})
    return 0


def _nothing_scored(report: dict[str, Any], errors: RowErrors, warmup_rows: int) -> str:
    """Why a backtest has no figure, with the first reasons."""
    online = report["overall"]["events"]
    engine = {**report["rejected"], **{f"dropped {k}": v for k, v in report["dropped"].items()}}
    if errors.total and not online:
        return f"no event applied: {errors.summary()}"
    if not online:
        more = f" (all within --warmup-rows {warmup_rows})" if warmup_rows else ""
        return f"no event to score: the input holds no data rows{more}"
    if engine and sum(engine.values()) >= online:
        return (f"no event applied: the engine refused all {online:,} events ({engine})"
                + (f"; reading: {errors.summary()}" if errors.total else ""))
    return (f"no forecast could be scored from {online:,} events: every key needs at least "
            "two events in time order after warm-up (--horizon more for longer horizons)"
            + (f"; reading: {errors.summary()}" if errors.total else ""))


def _json_default(x: Any) -> Any:
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    raise TypeError(type(x).__name__)


def _text_dispatch(a: argparse.Namespace) -> int | None:
    """Text layouts (one text, sentence<TAB>label, pos/neg) go to the text backtest."""
    try:
        from streamseq.text import backtest as text_backtest
    except ImportError:
        return None
    if not text_backtest.is_text_input(a.inputs):
        return None
    options = text_backtest.TextBacktestOptions(
        limit_messages=a.limit, seed=a.seed,
        save_checkpoint=str(a.save_checkpoint) if a.save_checkpoint else None,
        load_checkpoint=str(a.checkpoint) if a.checkpoint else None)
    report = text_backtest.run_and_print(a.inputs, options)
    applied = report["events"] - sum(report["rejected"].values())
    if applied <= 0:
        raise DataError(f"no text message applied ({report['events']} read, rejected: "
                        f"{report['rejected']})")
    if a.report_json:
        a.report_json.write_text(json.dumps(report, indent=2, default=_json_default))
    return 0
