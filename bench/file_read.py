"""File reading speed: rows/s of ``streamseq.io`` against pandas and pyarrow on 1M-row files.

    bench/.venv-peers/bin/python -m bench.file_read               # 1M rows, 3 repeats
    bench/.venv-peers/bin/python -m bench.file_read --rows 200000 --repeats 2

Run it in the bench environment (``bash bench/peers_env.sh``; ``pip install pyarrow
ciso8601`` there for those columns): pandas, pyarrow, ciso8601 are never dependencies of
the package. Writes ``bench/results/file_read.md``.

Files (generated, seeded), one per layout a user has:

* ``iso``: ``timestamp,value``, ``2010-01-01 00:00:00``, one value (NAB-like);
* ``mdy``: ``Datetime,Load,Temp,Hum``, ``1/1/2010 0:00`` (month first, unpadded; the
  first day over 12 comes 17,280 rows in, so our reader reads on to decide the order);
* ``compact``: no header, ``;``, ``20100101 000000`` and five values (HistData-like);
* ``iso_z``: ``ts,value``, ``2010-01-01T00:00:00.000Z``;
* ``epoch_ms``: ``ts,value`` with epoch milliseconds.

Measured, each ``--repeats`` times (median and range; wall and CPU time of this process):

1. whole file to events: ``read_events`` (what backtest and replay consume), and the share
   of it that is ``Event`` construction alone;
2. whole file to a table: ``pandas.read_csv(..., parse_dates=...)`` with the format inferred
   (pandas' default) and with ``date_format`` given, and ``pyarrow.csv.read_csv`` with the
   format given (one thread); pandas and pyarrow are given the delimiter and header, which
   they do not detect;
3. the time column alone, 1M strings in memory to epoch ms: our ``TimeParser`` against
   ``pandas.to_datetime(format=)``, ``pyarrow.compute.strptime``, ``datetime.strptime``,
   ``datetime.fromisoformat``, ``ciso8601``, ``dateutil.parser.parse`` (slow ones on a
   subset, scaled), and numpy ``datetime64`` for ISO;
4. agreement: our epoch ms equal pandas' (explicit format) on every row;
5. install weight of each library (bytes of its installed files).
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import importlib.metadata as md
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import cpu_model
from streamseq.events import Event
from streamseq.io import read_events
from streamseq.io.times import TimeParser

REPORT = Path(__file__).resolve().parent / "results" / "file_read.md"


@dataclass(frozen=True)
class Layout:
    name: str
    fmt: str  # strptime format of the time column (what pandas/pyarrow are given)
    header: list[str] | None
    delimiter: str
    values: int

    def time_text(self, t: dt.datetime) -> str:
        if self.name == "mdy":
            return f"{t.month}/{t.day}/{t.year} {t.hour}:{t.minute:02d}"
        if self.name == "epoch_ms":
            return str(int(t.replace(tzinfo=dt.timezone.utc).timestamp() * 1000))
        if self.name == "iso_z":
            return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"
        return t.strftime(self.fmt)


LAYOUTS = (
    Layout("iso", "%Y-%m-%d %H:%M:%S", ["timestamp", "value"], ",", 1),
    Layout("mdy", "%m/%d/%Y %H:%M", ["Datetime", "Load", "Temp", "Hum"], ",", 3),
    Layout("compact", "%Y%m%d %H%M%S", None, ";", 5),
    Layout("iso_z", "%Y-%m-%dT%H:%M:%S.%fZ", ["ts", "value"], ",", 1),
    Layout("epoch_ms", "epoch_ms", ["ts", "value"], ",", 1),
)


def write_file(layout: Layout, rows: int, folder: Path) -> tuple[Path, list[str]]:
    rnd = random.Random(0)
    start = dt.datetime(2010, 1, 1)
    path = folder / f"{layout.name}.csv"
    times = []
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh, delimiter=layout.delimiter)
        if layout.header:
            w.writerow(layout.header)
        for i in range(rows):
            t = start + dt.timedelta(minutes=i, milliseconds=rnd.randrange(1000)
                                     if layout.name == "iso_z" else 0)
            text = layout.time_text(t)
            times.append(text)
            w.writerow([text] + [f"{rnd.gauss(50, 10):.4f}" for _ in range(layout.values)])
    return path, times


def measure(fn: Callable[[], Any], repeats: int) -> dict[str, float]:
    """Median and range of wall and CPU seconds over ``repeats`` runs."""
    walls, cpus = [], []
    for _ in range(repeats):
        w0, c0 = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - w0)
        cpus.append(time.process_time() - c0)
    return {"wall": statistics.median(walls), "wall_min": min(walls), "wall_max": max(walls),
            "cpu": statistics.median(cpus)}


def _pandas_to_ms(values: list[str], fmt: str) -> list[int]:
    import pandas as pd

    if fmt == "epoch_ms":
        return [int(v) for v in values]
    s = pd.to_datetime(pd.Series(values), format=fmt, utc=True)
    return (s.astype("int64") // 1_000_000).tolist()


def bench_layout(layout: Layout, path: Path, times: list[str], repeats: int,
                 subset: int) -> dict[str, Any]:
    import pandas as pd
    import pyarrow as pa
    import pyarrow.compute as pc
    from pyarrow import csv as pacsv

    n = len(times)
    out: dict[str, Any] = {"rows": n}
    col = 0 if layout.header is None else layout.header[0]
    pd_kw: dict[str, Any] = {"sep": layout.delimiter, "header": None if layout.header is None
                             else "infer"}
    # -- 1. whole file to events ----------------------------------------------------------
    out["ours_events"] = measure(lambda: sum(1 for _ in read_events([path])), repeats)
    keys = ["v"] * n
    out["event_ctor"] = measure(lambda: [Event("sensor", k, 0, {"v": 1.0}) for k in keys],
                                repeats)
    # -- 2. whole file to a table ---------------------------------------------------------
    if layout.fmt != "epoch_ms":
        out["pandas_infer"] = measure(
            lambda: pd.read_csv(path, parse_dates=[col], **pd_kw), repeats)
        out["pandas_format"] = measure(
            lambda: pd.read_csv(path, parse_dates=[col], date_format=layout.fmt, **pd_kw),
            repeats)
        names = None if layout.header else [f"c{i}" for i in range(layout.values + 1)]
        fmt_pa = layout.fmt.replace(".%fZ", "%z") if layout.name == "iso_z" else layout.fmt
        convert = pacsv.ConvertOptions(timestamp_parsers=[fmt_pa] if layout.name != "iso_z"
                                       else [pacsv.ISO8601])
        out["pyarrow_format"] = measure(lambda: pacsv.read_csv(
            path, read_options=pacsv.ReadOptions(use_threads=False, column_names=names),
            parse_options=pacsv.ParseOptions(delimiter=layout.delimiter),
            convert_options=convert), repeats)
    else:
        out["pandas_format"] = measure(lambda: pd.to_datetime(
            pd.read_csv(path, **pd_kw)[col], unit="ms"), repeats)

    def pandas_events() -> int:
        """pandas as the reader: the table, then the same events ours yields."""
        if layout.fmt == "epoch_ms":
            df = pd.read_csv(path, **pd_kw)
            ts = df[col].tolist()
        else:
            df = pd.read_csv(path, parse_dates=[col], date_format=layout.fmt, **pd_kw)
            ts = (df[col].astype("int64") // 1_000_000).tolist()
        names = [c for c in df.columns if c != col]
        rows = df[names].to_numpy().tolist()
        labels = [str(c) for c in names]
        return len([Event("sensor", "k", t, dict(zip(labels, v, strict=True)))
                    for t, v in zip(ts, rows, strict=True)])

    out["pandas_events"] = measure(pandas_events, repeats)
    # -- 3. the time column alone ---------------------------------------------------------
    parse = TimeParser(layout.fmt).parse
    out["t_ours"] = measure(lambda: [parse(v) for v in times], repeats)
    series = pd.Series(times)
    if layout.fmt == "epoch_ms":
        out["t_pandas"] = measure(lambda: pd.to_datetime(series.astype("int64"), unit="ms"),
                                  repeats)
    else:
        out["t_pandas"] = measure(lambda: pd.to_datetime(series, format=layout.fmt), repeats)
        arr = pa.array(times)
        pa_fmt = layout.fmt.replace(".%fZ", "")
        if layout.name == "iso_z":
            arr = pa.array([t[:19] for t in times])
        out["t_pyarrow"] = measure(lambda: pc.strptime(arr, format=pa_fmt, unit="ms"),
                                   repeats)
        sub = times[:subset]
        scale = n / len(sub)
        fmt_py = layout.fmt
        r = measure(lambda: [dt.datetime.strptime(v, fmt_py) for v in sub], repeats)
        out["t_strptime"] = {k: v * scale for k, v in r.items()}
        from dateutil import parser as du

        r = measure(lambda: [du.parse(v) for v in sub[: subset // 5]], repeats)
        out["t_dateutil"] = {k: v * n / (subset // 5) for k, v in r.items()}
    if layout.name in ("iso", "iso_z"):
        import ciso8601
        import numpy as np

        out["t_fromisoformat"] = measure(
            lambda: [dt.datetime.fromisoformat(v) for v in times], repeats)
        out["t_ciso8601"] = measure(lambda: [ciso8601.parse_datetime(v) for v in times],
                                    repeats)
        clean = [t.rstrip("Z") for t in times]
        out["t_numpy"] = measure(lambda: np.array(clean, dtype="datetime64[ms]"), repeats)
    # -- 4. agreement ---------------------------------------------------------------------
    ours = [parse(v) for v in times]
    theirs = _pandas_to_ms(times, layout.fmt)
    out["agree"] = sum(a == b for a, b in zip(ours, theirs, strict=True))
    return out


def install_weight() -> dict[str, int]:
    """Bytes of the installed files of each candidate library (and the extras it pulls in
    that our package does not already have)."""
    sizes: dict[str, int] = {}
    for dist in ("pandas", "pyarrow", "ciso8601", "python-dateutil", "pytz", "tzdata", "six"):
        try:
            files = md.distribution(dist).files or []
        except md.PackageNotFoundError:
            continue
        sizes[dist] = sum(f.size or 0 for f in files)
    return sizes


def _rate(n: int, r: dict[str, float] | None, key: str = "wall") -> str:
    if r is None:
        return "-"
    return f"{n / r[key] / 1e3:,.0f}k"


def _spread(n: int, r: dict[str, float] | None) -> str:
    if r is None:
        return "-"
    return f"{n / r['wall_max'] / 1e3:,.0f}-{n / r['wall_min'] / 1e3:,.0f}k"


def report(results: dict[str, dict[str, Any]], weights: dict[str, int], args: argparse.Namespace,
           load: str) -> str:
    lines = [
        "# File reading speed",
        "",
        f"`{' '.join(['python -m bench.file_read', *sys.argv[1:]])}` on {cpu_model()}, "
        f"{os.cpu_count()} cores shared with other work, Python {platform.python_version()}, "
        f"{dt.date.today()}; load before: {load}.",
        f"{args.repeats} runs of each. pandas and pyarrow are told the delimiter, header and "
        "time format; our reader detects all three (and, for `mdy`, reads on 17,280 rows to "
        "decide month/day order).",
        "",
        "## Whole file",
        "",
        "Thousands of rows per CPU second of this process (median of the runs; the machine is "
        "shared, so CPU time is the figure that does not depend on the other work); ours "
        "also per wall second, with its range over runs.",
        "",
        "| layout | ours: file -> events | ours, wall (range) | Event() alone | ours minus "
        "Event() | pandas read_csv -> same events | pandas read_csv, format inferred | "
        "pandas, format given | pyarrow, format given (1 thread) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        n = r["rows"]
        ours, ctor = r["ours_events"], r["event_ctor"]
        rest = ({"cpu": ours["cpu"] - ctor["cpu"]} if ours["cpu"] > ctor["cpu"] else None)
        lines.append(
            f"| {name} | {_rate(n, ours, 'cpu')} | {_rate(n, ours)} ({_spread(n, ours)}) | "
            f"{_rate(n, ctor, 'cpu')} | {_rate(n, rest, 'cpu')} | "
            f"{_rate(n, r.get('pandas_events'), 'cpu')} | "
            f"{_rate(n, r.get('pandas_infer'), 'cpu')} | "
            f"{_rate(n, r.get('pandas_format'), 'cpu')} | "
            f"{_rate(n, r.get('pyarrow_format'), 'cpu')} |")
    lines += [
        "",
        "## The time column alone (strings in memory -> epoch ms)",
        "",
        "Thousands of values per CPU second.",
        "",
        "| layout | ours (TimeParser) | pandas.to_datetime(format=) | pyarrow strptime | "
        "datetime.strptime | fromisoformat | ciso8601 | numpy datetime64 | dateutil.parse |"
        " agree with pandas |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        n = r["rows"]
        cells = [_rate(n, r.get(k), "cpu") for k in (
            "t_ours", "t_pandas", "t_pyarrow", "t_strptime", "t_fromisoformat", "t_ciso8601",
            "t_numpy", "t_dateutil")]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {r['agree']:,}/{n:,} |")
    lines += ["", "## Install weight (installed files)", "", "| library | MB |", "|---|---|"]
    lines += [f"| {k} | {v / 1e6:.1f} |" for k, v in weights.items()]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--subset", type=int, default=100_000,
                   help="values for the slow per-value parsers (strptime; dateutil: 1/5)")
    p.add_argument("--layouts", default=",".join(x.name for x in LAYOUTS))
    p.add_argument("--out", type=Path, default=REPORT)
    args = p.parse_args(argv)
    load = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    load = f"{load}; commit {commit or '?'}"
    wanted = set(args.layouts.split(","))
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for layout in LAYOUTS:
            if layout.name not in wanted:
                continue
            path, times = write_file(layout, args.rows, Path(tmp))
            print(f"{layout.name}: {args.rows:,} rows ...", file=sys.stderr, flush=True)
            results[layout.name] = bench_layout(layout, path, times, args.repeats, args.subset)
            path.unlink()
    text = report(results, install_weight(), args, load)
    after = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    text += f"\nload after: {after}\n"
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    args.out.with_suffix(".json").write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
