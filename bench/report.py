"""Write bench/RESULTS.md (and its plots) from what the benches left in bench/results/.

``python -m bench.report [--results DIR] [--out FILE]``

Sources, all written by the benches themselves:

* ``protocol_<data>_h<H>.json``: :mod:`bench.online_protocol` ``--report-json``;
* ``peers*.json``: :mod:`bench.peers` ``--report-json`` (``peers.json`` is the default
  run, ``peers_<label>.json`` the same bench with other engine settings);
* ``tune_*.json``: :mod:`bench.tune` ``--report-json``;
* every other ``*.md`` in the folder (engine speed, text, ...): appended as written, after
  this bench's sections.

Plots (PNG, matplotlib Agg) go to the results folder: forecast vs actual for a few keys,
cumulative error over time of the model vs persistence.
"""

from __future__ import annotations

import argparse
import json
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.online_protocol import PUBLISHED_H1, machine

__all__ = ["build", "main"]

HERE = Path(__file__).resolve().parent
MINE = ("protocol_", "peers", "tune_", "defaults")


def _load(paths: list[Path]) -> list[dict[str, Any]]:
    out = []
    for p in paths:
        d = json.loads(p.read_text())
        d["_file"] = p.name
        out.append(d)
    return out


def _pm(m: float, s: float) -> str:
    return f"{m:.4f} ± {s:.4f}"


# ---------------------------------------------------------------------- summary
def summary_section(protocol: list[dict[str, Any]], peer_reps: list[dict[str, Any]]
                    ) -> list[str]:
    L = ["## Summary", ""]
    for r in sorted(protocol, key=lambda r: (r["data"], r["horizon"])):
        m, p = r["model"], r["persistence"]
        line = (f"- {r['data']} H={r['horizon']} (published protocol, leak-free, "
                f"{len(r['seeds'])} seeds): MSE {m['mse']:.4f} ± {m['mse_std']:.4f}, MAE "
                f"{m['mae']:.4f} vs persistence {p['mse']:.4f} / {p['mae']:.4f}")
        pub = PUBLISHED_H1.get(r["data"])
        if r["horizon"] == 1 and pub:
            line += "; published MSE " + ", ".join(f"{k} {v}" for k, v in pub.items()
                                                   if k != "persistence")
        elif pub:
            line += "; published H>1 numbers are not comparable (they leak labels)"
        x = r.get("mixture")
        if x:
            line += (f"; published by default (the mixture with the experts): MSE "
                     f"{x['mse']:.4f}, MAE {x['mae']:.4f}")
        L.append(line + ".")
    for rep in sorted(peer_reps, key=lambda r: r["_file"] != "peers.json"):
        wins, rw = [], []
        for name, d in rep["datasets"].items():
            ms = d["metrics"]
            eng = min((m for m in ("gru", "lstm") if m in ms), key=lambda m: ms[m]["mase"],
                      default=None)
            if eng is None:
                continue
            others = [m for m in ms if m not in ("gru", "lstm")]
            best_other = min(others, key=lambda m: ms[m]["mase"]) if others else None
            tag = f"{name} {ms[eng]['mase']:.3f}"
            if best_other and ms[best_other]["mase"] < ms[eng]["mase"]:
                tag += f" (best: {best_other} {ms[best_other]['mase']:.3f})"
            wins.append(tag)
            if d["kind"] == "price" and not d.get("beats_random_walk_mae"):
                rw.append(name)
        L.append(f"- Peers ({rep['_file']}, engine {_engine_label(rep).split(', ', 1)[1]}): "
                 "best engine MASE (gru or lstm) "
                 + "; ".join(wins) + ".")
        mix = [(n, d["metrics"]["mixture"]) for n, d in rep["datasets"].items()
               if "mixture" in d["metrics"]]
        if mix:
            L.append("  Published by default (the mixture of the GRU and the experts): MASE "
                     + "; ".join(f"{n} {m['mase']:.3f}" + (
                         f" (90% interval covers {100 * m['interval']['coverage']:.1f}%)"
                         if "interval" in m else "") for n, m in mix) + ".")
        if rw:
            L.append(f"  Nothing beats the random walk on MAE on: {', '.join(rw)}.")
    L.append("")
    return L


# ---------------------------------------------------------------------- protocol
def protocol_section(runs: list[dict[str, Any]], figs: list[str]) -> list[str]:
    if not runs:
        return []
    runs = sorted(runs, key=lambda r: (r["data"], r["horizon"]))
    L = ["## The published online protocol (ETT), leak-free", "",
         "Protocol of shared/data/README.md: all 7 channels in and out, z-score with "
         "training-split statistics, warm-up on train rows [0, 2880) with the epoch count "
         "chosen on validation rows [2880, 3600) (online validation), test rows fed from 3540 "
         "(60 rows of context, not learned, not scored), scored targets rows [3600, 14400), "
         "one step at a time, every forecast recorded before its target is learned. MSE/MAE "
         "over all scored cells (origin x step x channel) on the z-scored scale; model = "
         "mean ± sample std over seeds; persistence = the last value on the same cells.", "",
         "The model columns are the recurrent model alone (the engine with `--no-experts`); "
         "mixture is what the engine publishes by default (the model mixed per key with the "
         "experts, which start cold at the test span), scored on the same cells.", "",
         "| data | H | model MSE | model MAE | mixture MSE | mixture MAE | persistence MSE | "
         "persistence MAE | published MSE (H=1 only) | seeds | epochs |",
         "|---|---:|---:|---:|---:|---:|---:|---:|---|---|---|"]
    for r in runs:
        m, p = r["model"], r["persistence"]
        pub = PUBLISHED_H1.get(r["data"])
        if r["horizon"] == 1 and pub:
            pubs = ", ".join(f"{k} {v}" for k, v in pub.items() if k != "persistence")
        else:
            pubs = "not comparable (published H>1 leaks labels)" if pub else "-"
        epochs = ",".join(str(s["epochs"]) for s in r["per_seed"])
        x = r.get("mixture")
        mix = (f"{_pm(x['mse'], x['mse_std'])} | {_pm(x['mae'], x['mae_std'])}" if x
               else "- | -")
        L.append(f"| {r['data']} | {r['horizon']} | {_pm(m['mse'], m['mse_std'])} | "
                 f"{_pm(m['mae'], m['mae_std'])} | {mix} | {p['mse']:.4f} | {p['mae']:.4f} | "
                 f"{pubs} | {len(r['seeds'])} | {epochs} |")
    L.append("")
    h1 = [r for r in runs if r["horizon"] == 1 and r["data"] in PUBLISHED_H1]
    for r in h1:
        pub = PUBLISHED_H1[r["data"]]
        mse = r["model"]["mse"]
        verdict = [f"{name} {v}: {'beaten' if mse < v else 'NOT beaten'}"
                   for name, v in pub.items()]
        L.append(f"- **{r['data']} H=1**: model MSE {mse:.4f} vs " + "; ".join(verdict) + ".")
    if h1:
        L.append("")
    L += ["At horizons 24 and 48 the published methods update, after each step, on a window "
          "whose labels reach up to H-1 steps past the next forecast's origin; the numbers "
          "above learn each target only after it has arrived, so they are **not comparable** "
          "to the published H=24/48 tables and none are shown next to them.", "",
          "Settings of each run (engine config as JSON in the source file):", ""]
    for r in runs:
        e = r["config"]["engine"]
        L.append(f"- {r['data']} H={r['horizon']}: `{r['command']}` — {e['model']['cell']} "
                 f"hidden {e['model']['hidden']}, layers {e['model']['layers']}, k1 "
                 f"{e['learner']['k1']}, k2 {e['learner']['k2']}, batch_windows "
                 f"{e['learner']['batch_windows']}, lr {e['learner']['lr']:g}, clip "
                 f"{e['learner']['clip_grad']}; {r['date']} ({r['_file']})")
    L.append("")
    for f in figs:
        L += [f"![{f}](results/{f})", ""]
    return L


def protocol_plots(runs: list[dict[str, Any]], out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    h1 = sorted((r for r in runs if r["horizon"] == 1), key=lambda r: r["data"])
    if not h1:
        return []
    names = []
    fig, axes = plt.subplots(1, len(h1), figsize=(6 * len(h1), 3.6), squeeze=False)
    for ax, r in zip(axes[0], h1, strict=True):
        cm = r["curve"]["model"]
        cp = r["curve"]["persistence"]
        first = r["split"]["scored_targets"][0] + 1
        ax.plot([first + i for i, _ in cp], [v for _, v in cp], label="persistence", color="0.5")
        ax.plot([first + i for i, _ in cm], [v for _, v in cm], label="GRU (seed 0)",
                color="C0")
        for name, v in (PUBLISHED_H1.get(r["data"]) or {}).items():
            if name in ("FSNet", "LSTD"):
                ax.axhline(v, ls=":", lw=1, color="C3" if name == "FSNet" else "C2",
                           label=f"{name} (final, published)")
        ax.set_title(f"{r['data']} H=1: cumulative MSE (z-scored)")
        ax.set_xlabel("target row")
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "protocol_cumulative_mse.png", dpi=110)
    plt.close(fig)
    names.append("protocol_cumulative_mse.png")

    fig, axes = plt.subplots(len(h1), 1, figsize=(11, 3.2 * len(h1)), squeeze=False)
    for ax, r in zip(axes[:, 0], h1, strict=True):
        s = r["sample"]
        n = min(200, len(s["rows"]))
        ax.plot(s["rows"][:n], s["truth"][:n], color="k", lw=1.2, label="actual")
        ax.plot(s["rows"][:n], s["persistence"][:n], color="0.6", lw=1, label="persistence")
        ax.plot(s["rows"][:n], s["model"][:n], color="C0", lw=1, label="GRU forecast")
        ax.set_title(f"{r['data']} {s['column']}: one-step forecasts at the start of the test "
                     "span (original units)")
        ax.set_xlabel("row")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "protocol_forecast_vs_actual.png", dpi=110)
    plt.close(fig)
    names.append("protocol_forecast_vs_actual.png")
    return names


# ---------------------------------------------------------------------- peers
def peers_section(rep: dict[str, Any], title: str, figs: list[str]) -> list[str]:
    e = rep["engine_config"]
    L = [f"## {title}", "",
         f"Command: `{rep['command']}` ({rep['_file']}); {rep['date']}; at most "
         f"{rep['rows_per_key']} events per key. Engine: {e['model']['cell']}/lstm hidden "
         f"{e['model']['hidden']}, k1 {e['learner']['k1']}, k2 {e['learner']['k2']}, "
         f"batch_windows {e['learner']['batch_windows']}, lr {e['learner']['lr']:g}, "
         f"{e['features']['scaling']} scaling; no warm-up for any method.", "",
         "MAE/RMSE are in units of each (key, channel) series' std over the slice; MASE = MAE "
         "/ persistence MAE on the same cells (prices: log returns, persistence = random walk "
         "= zero return); dir = direction accuracy on non-zero returns (0.5 = coin flip); "
         "events/s from the CPU time of the method's whole pass, one thread (the machine was "
         "shared, so speeds are indicative).", ""]
    for name, d in rep["datasets"].items():
        price = d["kind"] == "price"
        head = (f"**{name}** — {d['note']}. {d['events']:,} events, {len(d['keys'])} key(s), "
                f"{len(d['channels'])} channel(s), {d['first']} .. {d['last']} UTC")
        if price:
            mae_w, rmse_w = d["beats_random_walk_mae"], d["beats_random_walk_rmse"]
            head += (f"; {100 * d['zero_return_share']:.0f}% zero returns. Random walk: "
                     + (f"beaten on MAE by {', '.join(mae_w)}" if mae_w
                        else "**nothing beats it on MAE**") + "; "
                     + (f"beaten on RMSE by {', '.join(rmse_w)}" if rmse_w
                        else "**nothing beats it on RMSE**"))
        L += [head + ".", ""]
        L.append("| method | MAE | RMSE | MASE |" + (" dir |" if price else "") + " events/s |")
        L.append("|---|---:|---:|---:|" + ("---:|" if price else "") + "---:|")
        for m, r in sorted(d["metrics"].items(), key=lambda kv: kv[1]["mase"]):
            extra = f" (resets {r['resets']})" if r.get("resets") else ""
            L.append(f"| {m}{extra} | {r['mae']:.4f} | {r['rmse']:.4f} | {r['mase']:.3f} |"
                     + (f" {r['direction']:.3f} |" if price else "")
                     + f" {r['events_per_s']:,.0f} |")
        iv = d["metrics"].get("mixture", {}).get("interval")
        if iv:
            L += ["", f"The mixture's {100 * iv['nominal']:.0f}% prediction interval: coverage "
                      f"{100 * iv['coverage']:.1f}%, mean width {iv['width']:.3f}, Winkler "
                      f"score {iv['winkler']:.3f} (std units, {iv['cells']:,} cells)."]
        L.append("")
    L.append(_peer_summary(rep))
    L.append("")
    for f in figs:
        L += [f"![{f}](results/{f})", ""]
    return L


def _peer_summary(rep: dict[str, Any]) -> str:
    rows = ["MASE summary (lower is better; persistence = 1):", "",
            "| dataset | " + " | ".join(_methods(rep)) + " | best |",
            "|---|" + "---:|" * (len(_methods(rep)) + 1)]
    for name, d in rep["datasets"].items():
        ms = d["metrics"]
        best = min(ms, key=lambda m: ms[m]["mase"])
        rows.append(f"| {name} | " + " | ".join(
            f"{ms[m]['mase']:.3f}" if m in ms else "-" for m in _methods(rep)) + f" | {best} |")
    return "\n".join(rows)


def _methods(rep: dict[str, Any]) -> list[str]:
    order = ["gru", "lstm", "windowed", "snarimax", "holtwinters", "seasonal", "persistence"]
    have = {m for d in rep["datasets"].values() for m in d["metrics"]}
    return [m for m in order if m in have]


def peers_plots(rep: dict[str, Any], out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    show = [n for n in ("nab", "beijing", "etth2", "fx") if n in rep["datasets"]]
    if not show:
        return []
    fig, axes = plt.subplots(len(show), 1, figsize=(11, 3.0 * len(show)), squeeze=False)
    for ax, name in zip(axes[:, 0], show, strict=True):
        s = rep["datasets"][name]["samples"][0]
        n = min(150, len(s["truth"]))
        x = range(n)
        ax.plot(x, s["truth"][-n:], color="k", lw=1.2, label="actual")
        colors = {"persistence": "0.6", "gru": "C0", "windowed": "C1", "snarimax": "C2"}
        for m in ("persistence", "snarimax", "windowed", "gru"):
            if m in s:
                ax.plot(x, s[m][-n:], lw=1, color=colors[m], label=m)
        unit = "log return" if rep["datasets"][name]["kind"] == "price" else "value"
        ax.set_title(f"{name}: {s['key']} {s['channel']} ({unit}), last {n} one-step forecasts")
        ax.set_xlabel("event of the key")
        ax.legend(fontsize=7, ncol=5)
    fig.tight_layout()
    fig.savefig(out / "peers_forecast_vs_actual.png", dpi=110)
    plt.close(fig)
    return ["peers_forecast_vs_actual.png"]


def _engine_label(rep: dict[str, Any]) -> str:
    e = rep["engine_config"]
    return (f"{e['model']['cell']}, hidden {e['model']['hidden']}, k1={e['learner']['k1']}, "
            f"k2={e['learner']['k2']}, batch_windows={e['learner']['batch_windows']}, "
            f"lr={e['learner']['lr']:g}")


def settings_section(reps: list[dict[str, Any]]) -> list[str]:
    """The engine's MASE per dataset under each engine setting the peers bench was run with,
    next to the best peer of the default run."""
    reps = sorted(reps, key=lambda r: r["_file"] != "peers.json")
    main = reps[0]
    names = list(main["datasets"])
    L = ["## Engine settings across the peer datasets (MASE, lower is better)", "",
         "Same events, same metric; only the engine's settings differ. The learning cadence "
         "per key is what matters on these few-key streams: an update point comes before a "
         "key's second due window, so a lone key's weights move once every k1 of its "
         "events.", "",
         *[f"- ({chr(65 + i)}) {r['_file']}: {_engine_label(r).split(', ', 1)[1]}"
           for i, r in enumerate(reps)], "",
         "| dataset | " + " | ".join(f"{c} ({chr(65 + i)})" for i, _ in enumerate(reps)
                                    for c in ("gru", "lstm")) +
         " | best other learner (A) |",
         "|---|" + "---:|" * (2 * len(reps) + 1)]
    for n in names:
        cells = []
        for r in reps:
            ms = r["datasets"].get(n, {}).get("metrics", {})
            cells += [f"{ms[c]['mase']:.3f}" if c in ms else "-" for c in ("gru", "lstm")]
        peers_m = {m: v for m, v in main["datasets"][n]["metrics"].items()
                   if m not in ("gru", "lstm", "persistence")}
        best = min(peers_m, key=lambda m: peers_m[m]["mase"]) if peers_m else None
        cells.append(f"{best} {peers_m[best]['mase']:.3f}" if best else "-")
        L.append(f"| {n} | " + " | ".join(cells) + " |")
    L.append("")
    return L


def ablation_section(runs: list[dict[str, Any]]) -> list[str]:
    L = ["## Protocol ablations", "",
         "Single-seed runs, no warm-up, that change one setting. `clip_z` is the engine's "
         "input clip in z units (`FeatureConfig.clip`, 8 by default): with training-split "
         "scaling, ETTh2's LULL reaches z = 51 in the test span, and the clipped value is "
         "also the residual base of the forecast and the training target.", "",
         "| file | data | H | change | model MSE | model MAE | "
         "persistence MSE | command |", "|---|---|---:|---|---:|---:|---:|---|"]
    for r in runs:
        L.append(f"| {r['_file']} | {r['data']} | {r['horizon']} | clip_z "
                 f"{r['config']['clip_z']:g}, epochs_max {r['config']['epochs_max']} | "
                 f"{r['model']['mse']:.4f} | {r['model']['mae']:.4f} | "
                 f"{r['persistence']['mse']:.4f} | `{r['command']}` |")
    L.append("")
    return L


# ---------------------------------------------------------------------- tuning
def tune_section(tunes: list[dict[str, Any]], defaults: list[dict[str, Any]]) -> list[str]:
    if not tunes and not defaults:
        return []
    L = ["## Tuning on warm-up spans only", "",
         "`python -m bench.tune` searches lr, hidden, k1/k2, batch_windows one axis at a time "
         "(coordinate search, or a grid) and never reads a test span: in protocol mode it "
         "scores the online validation MSE after warm-up on the training rows; in suite mode "
         "it runs the engine cold, online, on held-out streams that are not in the peers "
         "comparison (other NAB files, another Beijing station, ETTh1, BAC ticks, IBM bars, "
         "NZDUSD) and scores the geometric mean of its MASE (per-dataset MASE in the "
         "columns).", ""]
    for t in tunes:
        per = [tr.get("mase") for tr in t["trials"]]
        names = list(per[0]) if per and per[0] else []
        L += [f"**{t['_file']}** — {t['mode']}", "", f"Command: `{t['command']}`", ""]
        L.append("| objective | config |" + "".join(f" {n} |" for n in names))
        L.append("|---:|---|" + "---:|" * len(names))
        for tr in t["trials"]:
            cfg = " ".join(f"{k}={'x'.join(map(str, v)) if isinstance(v, list) else v}"
                           for k, v in tr.items() if k not in ("objective", "seconds", "mase"))
            L.append(f"| {tr['objective']:.5f} | {cfg} |"
                     + "".join(f" {tr['mase'][n]:.3f} |" for n in names))
        L += ["", f"Best: `{t['flags']}`", ""]
    for d in defaults:
        L += d.get("markdown", [])
    return L


# ---------------------------------------------------------------------- assemble
def build(results: Path, out: Path) -> str:
    protocol_all = _load(sorted(results.glob("protocol_*.json")))
    protocol = [r for r in protocol_all if "ablation" not in r["_file"]]
    peer_files = sorted(results.glob("peers*.json"))
    peer_reps = _load(peer_files)
    tunes = _load(sorted(results.glob("tune_*.json")))
    defaults = _load(sorted(results.glob("defaults*.json")))
    mach = machine()
    L = ["# streamseq benchmark results", "",
         "Generated by `python -m bench.report` from the files the benches wrote under "
         "`bench/results/`; do not edit by hand. "
         f"Generated {time.strftime('%Y-%m-%d %H:%M:%S %Z')} on {mach['nproc']} cores, "
         f"{mach['cpu']}, Python {mach['python']}; torch with one thread.", ""]
    L += summary_section(protocol, peer_reps)
    figs = protocol_plots(protocol, results) if protocol else []
    L += protocol_section(protocol, figs)
    main_rep = next((r for r in peer_reps if r["_file"] == "peers.json"), None)
    for rep in sorted(peer_reps, key=lambda r: r["_file"] != "peers.json"):
        label = rep["_file"].removesuffix(".json").removeprefix("peers").lstrip("_")
        title = "Peers: one-step-ahead online forecasting on real streams"
        if label:
            title = f"Peers again, engine with {_engine_label(rep)} ({label})"
        pf = peers_plots(rep, results) if not label else []
        L += peers_section(rep, title, pf)
    if main_rep is not None and len(peer_reps) > 1:
        L += settings_section(peer_reps)
    ablations = [r for r in protocol_all if "ablation" in r["_file"]]
    if ablations:
        L += ablation_section(ablations)
    L += tune_section(tunes, defaults)
    others = sorted(p for p in results.glob("*.md") if not p.name.startswith(MINE))
    for p in others:
        text = p.read_text().strip()
        # other benches' sections keep their own headings, one level deeper
        text = re.sub(r"^(#+) ", r"#\1 ", text, flags=re.M)
        L += [f"<!-- from bench/results/{p.name} -->", text, ""]
    md = "\n".join(L).rstrip() + "\n"
    out.write_text(md)
    return md


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.report", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results", type=Path, default=HERE / "results")
    p.add_argument("--out", type=Path, default=HERE / "RESULTS.md")
    a = p.parse_args(argv)
    build(a.results, a.out)
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
