"""Simulator speed: events per CPU-second the sensor and price generators write (dry run).

    python -m bench.simulator_speed            # 200,000 events x 5 repeats per generator
    python -m bench.simulator_speed --quick    # 20,000 x 3

The reference, measured in the same run, is ``json.dumps`` of the very payloads the
generator produced, written to the same in-memory sink: the plain way of producing these
bytes, without generating them. A ratio generator / reference above 1 means the generators
(which format their payloads directly) write events faster than a ``json.dumps`` loop
alone would. Rates are per CPU second of
this process (``time.process_time``), so other work on a shared machine does not count.
Prints and writes ``bench/results/simulator_speed.md``. (This replaces a unit test that
asserted "at least 100k events/s": speed is measured here, not asserted in tests.)
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import os
import statistics
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from bench.common import cpu_model
from simulators.output import dry_run
from simulators.prices import PriceSimulator
from simulators.sensors import SensorSimulator

RESULTS = Path(__file__).resolve().parent / "results" / "simulator_speed.md"
Messages = Callable[[], Iterator[tuple[str, bytes, int]]]


def _cpu_rate(work: Callable[[], int]) -> float:
    t0 = time.process_time()
    n = work()
    return n / max(time.process_time() - t0, 1e-9)


def _generator_rate(messages: Messages, count: int) -> float:
    return _cpu_rate(lambda: dry_run(messages(), io.BytesIO(), count=count))


def _bare_rate(messages: Messages, count: int) -> float:
    docs = []
    for _, payload, _ in messages():
        docs.append(json.loads(payload))
        if len(docs) == count:
            break

    def write() -> int:
        out = io.BytesIO()
        for doc in docs:
            out.write(json.dumps(doc).encode() + b"\n")
        return len(docs)

    return _cpu_rate(write)


def measure(name: str, messages: Messages, count: int, repeats: int) -> dict[str, object]:
    """Median and spread (min..max) of both rates, interleaved so drift hits both alike."""
    gen, bare = [], []
    for _ in range(repeats):
        gen.append(_generator_rate(messages, count))
        bare.append(_bare_rate(messages, count))
    ratios = [g / b for g, b in zip(gen, bare, strict=True)]
    return {"name": name, "gen": gen, "bare": bare, "ratio": ratios}


def _fmt(values: list[float], fmt: str = "{:,.0f}") -> str:
    return (f"{fmt.format(statistics.median(values))} "
            f"({fmt.format(min(values))}..{fmt.format(max(values))})")


def report(rows: list[dict[str, object]], count: int, repeats: int) -> str:
    load = os.getloadavg()
    lines = [
        "# Simulator speed",
        "",
        f"`python -m bench.simulator_speed` on {dt.date.today()}, {cpu_model()}, "
        f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; {count:,} events, "
        f"{repeats} repeats, median (min..max), events per CPU second.",
        "",
        "| generator | generator events/s | json.dumps reference events/s | ratio |",
        "|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['name']} | {_fmt(r['gen'])} | {_fmt(r['bare'])} | "  # type: ignore[arg-type]
                     f"{_fmt(r['ratio'], '{:.2f}')} |")  # type: ignore[arg-type]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    count, repeats = (20_000, 3) if args.quick else (200_000, 5)
    rows = [
        measure("sensors (100 sensors)", lambda: SensorSimulator(100, seed=0).messages(),
                count, repeats),
        measure("prices (4 symbols, ticks)", lambda: PriceSimulator(seed=0).messages(),
                count, repeats),
    ]
    text = report(rows, count, repeats)
    print(text)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
