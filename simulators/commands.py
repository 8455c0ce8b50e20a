"""``streamseq simulate sensors|prices`` and ``streamseq replay``: command-line entry points.

Examples (shell)::

    # 50 sensors, two values, anomalies and faults, 100k events as JSON lines, with truth
    streamseq simulate sensors --sensors 50 --values temp,hum --anomaly-rate 0.001 \\
        --duplicate-rate 0.01 --malformed-rate 0.005 --count 100000 --seed 1 \\
        --truth truth.jsonl --dry-run > events.jsonl

    # correlated ticks into Kafka at 2,000 events/s for a minute
    streamseq simulate prices --symbols 8 --bootstrap localhost:9092 --topic prices \\
        --rate 2000 --duration 60

    # ETT replayed at 3600x real time (one hourly row a second), forever
    streamseq replay ../shared/data/sensor/ett/ETTh2.csv --speed 3600 --loop --topic sensors

Common options: ``--bootstrap`` (default ``$STREAMSEQ_BOOTSTRAP`` or ``localhost:9092``),
``--topic``, ``--rate`` (events/s), ``--count``, ``--duration`` (wall seconds), ``--speed``
(event time x N; 0 = as fast as possible), ``--seed``, ``--dry-run`` (JSON lines on stdout),
``--truth PATH``, the fault rates (``--duplicate-rate`` ...) and ``--progress``. The final
count always goes to stderr. Simulators default to ``--speed 0``; replay defaults to
``--speed 1`` (real time) when producing to Kafka without ``--rate``, else to ``0``.
Exit codes (as every command, :mod:`streamseq.cli`): 0 done, 1 Kafka failure,
unacknowledged messages or nothing to replay, 2 bad arguments or a missing file.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path

from simulators.faults import FaultInjector, FaultRates
from simulators.output import KafkaSink, Message, Progress, StreamSink, run
from simulators.truth import TruthWriter
from streamseq.io.options import add_layout_args, layout_from_args
from streamseq.io.options import names as _names

__all__ = ["register"]

log = logging.getLogger(__name__)

MessageFactory = Callable[[TruthWriter | None], Iterator[Message]]


def _fraction(text: str) -> float:
    x = float(text)
    if not 0.0 <= x <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} is not in [0, 1]")
    return x


def _positive(text: str) -> float:
    x = float(text)
    if x <= 0:
        raise argparse.ArgumentTypeError(f"{text} is not > 0")
    return x


def _session(text: str) -> tuple[float, float]:
    try:
        a, b = text.split("-")
        hours = []
        for part in (a, b):
            h, _, m = part.strip().partition(":")
            hours.append(int(h) + int(m or 0) / 60.0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"session {text!r} is not HH:MM-HH:MM") from None
    return hours[0], hours[1]


def _common_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("output and pacing")
    g.add_argument("--bootstrap", default=os.environ.get("STREAMSEQ_BOOTSTRAP", "localhost:9092"),
                   help="Kafka bootstrap servers (default $STREAMSEQ_BOOTSTRAP or %(default)s)")
    g.add_argument("--topic", help="destination topic")
    g.add_argument("--dry-run", action="store_true",
                   help="print the messages as JSON lines to stdout instead of producing")
    g.add_argument("--rate", type=_positive, help="at most this many events per second")
    g.add_argument("--speed", type=float, default=None,
                   help="event time x N (1 = real time, 0 = as fast as possible)")
    g.add_argument("--max-gap", type=_positive, default=None,
                   help="with --speed: never wait longer than this many seconds for an event")
    g.add_argument("--count", type=int, help="stop after this many messages")
    g.add_argument("--duration", type=_positive, help="stop after this many seconds")
    g.add_argument("--seed", type=int, default=0, help="random seed (default %(default)s)")
    g.add_argument("--truth", type=Path, help="write the ground truth (JSONL) to this file")
    g.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress line on stderr (default: when stderr is a terminal)")
    g.add_argument("--linger-ms", type=int, default=20, help="producer linger.ms")
    g.add_argument("--connect-timeout", type=_positive, default=30.0,
                   help="seconds to wait for the broker at start (default %(default)s)")
    g.add_argument("--kafka-timestamp", choices=("now", "event"), default="now",
                   help="Kafka record timestamp: send time (default) or the event time")
    f = p.add_argument_group("fault injection (per message probabilities)")
    f.add_argument("--out-of-order-rate", type=_fraction, default=0.0,
                   help="delay a message by 1..--max-delay positions")
    f.add_argument("--duplicate-rate", type=_fraction, default=0.0, help="send a message twice")
    f.add_argument("--malformed-rate", type=_fraction, default=0.0,
                   help="truncate a message or replace it by garbage bytes")
    f.add_argument("--nan-rate", type=_fraction, default=0.0, help="set one value to NaN")
    f.add_argument("--missing-field-rate", type=_fraction, default=0.0,
                   help="drop the key, the time or the values")
    f.add_argument("--max-delay", type=int, default=5,
                   help="largest out-of-order delay in positions (default %(default)s)")
    return p


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``simulate sensors``, ``simulate prices`` and ``replay`` to the CLI."""
    common = _common_parser()
    sim = subparsers.add_parser("simulate", help="synthetic sensor or price streams",
                                description="Seeded synthetic streams into Kafka or stdout.")
    sim.set_defaults(func=lambda args: _usage(sim))
    kinds = sim.add_subparsers(dest="simulator", metavar="SIMULATOR")

    s = kinds.add_parser("sensors", parents=[common], help="seasonal sensors with anomalies",
                         description="N sensors with daily/weekly seasonality, trend, noise "
                                     "and optional anomalies (see simulators.sensors).")
    g = s.add_argument_group("sensors")
    g.add_argument("--sensors", "--n-sensors", dest="n_sensors", type=int, default=10,
                   help="number of sensors (default %(default)s)")
    vals = g.add_mutually_exclusive_group()
    vals.add_argument("--values", type=_names, help="value names, e.g. temp,hum")
    vals.add_argument("--n-values", type=int, help="K values named v0..v{K-1}")
    g.add_argument("--start", default="2024-01-01T00:00:00Z", help="simulated clock start")
    g.add_argument("--interval", type=_positive, default=60.0,
                   help="seconds between readings of one sensor (default %(default)s)")
    g.add_argument("--steps", type=int, help="readings per sensor (default: endless)")
    g.add_argument("--jitter", type=float, default=0.05, help="time jitter, fraction of interval")
    g.add_argument("--noise", type=float, default=0.2, help="noise sigma / series scale")
    g.add_argument("--daily", type=float, default=1.0, help="daily amplitude / series scale")
    g.add_argument("--weekly", type=float, default=0.3, help="weekly amplitude / series scale")
    g.add_argument("--trend", type=float, default=0.02, help="trend per day / series scale")
    g.add_argument("--decimals", type=int, default=3, help="decimals on the wire")
    a = s.add_argument_group("anomalies (per sensor step probabilities)")
    a.add_argument("--anomaly-rate", type=_fraction, default=0.0,
                   help="default rate of every anomaly below")
    for name, what in (("level-shift", "permanent level shift"), ("drift", "slow drift"),
                       ("burst", "variance burst"), ("stuck", "stuck value"),
                       ("dropout", "gap in the stream"), ("spike", "single outlier")):
        a.add_argument(f"--{name}-rate", type=_fraction, default=None, help=what)
    for name, default in (("drift", 720), ("burst", 60), ("stuck", 30), ("dropout", 30)):
        a.add_argument(f"--{name}-steps", type=int, default=default,
                       help=f"mean {name} length in steps (default %(default)s)")
    s.set_defaults(func=_run_sensors)

    p = kinds.add_parser("prices", parents=[common], help="correlated ticks or OHLCV bars",
                         description="Correlated GBM prices with jumps, GARCH volatility, "
                                     "regimes and bursty trades (see simulators.prices).")
    g = p.add_argument_group("prices")
    g.add_argument("--symbols", default="4", help="number of symbols, or names A,B,C")
    g.add_argument("--bars", action="store_true", help="OHLCV bars instead of trade ticks")
    g.add_argument("--bar-seconds", type=_positive, default=60.0, help="bar length")
    g.add_argument("--start", default="2024-01-01T00:00:00Z", help="simulated clock start")
    g.add_argument("--steps", type=int, help="latent seconds (ticks) or bars (default: endless)")
    g.add_argument("--tick-rate", type=_positive, default=2.0, help="trades/s per symbol")
    g.add_argument("--price", type=_positive, default=100.0, help="typical start price")
    g.add_argument("--vol", type=float, default=0.3, help="annualised volatility")
    g.add_argument("--drift", type=float, default=0.05, help="annual drift")
    g.add_argument("--vol-half-life", type=_positive, default=1800.0,
                   help="seconds for a volatility shock to halve")
    g.add_argument("--correlation", type=float, default=0.5, help="pairwise correlation")
    g.add_argument("--jump-rate", type=float, default=1.0, help="jumps per day per symbol")
    g.add_argument("--jump-size", type=float, default=0.02, help="std of log jump size")
    g.add_argument("--stressed-vol", type=float, default=2.5, help="stressed vol multiplier")
    g.add_argument("--calm-days", type=_positive, default=5.0, help="mean calm regime stay")
    g.add_argument("--stressed-days", type=_positive, default=1.0, help="mean stressed stay")
    g.add_argument("--session", type=_session, default=(13.5, 20.0),
                   help="trading session, UTC HH:MM-HH:MM (default 13:30-20:00)")
    g.add_argument("--off-hours", type=float, default=0.1, help="activity outside the session")
    g.add_argument("--weekends", action="store_true", help="trade on weekends too")
    g.add_argument("--burstiness", type=float, default=1.0, help="std of log trade intensity")
    g.add_argument("--tick-size", type=_positive, default=0.01, help="price grid")
    p.set_defaults(func=_run_prices)

    r = subparsers.add_parser("replay", parents=[common], help="replay recorded files",
                              description="Replay CSV/CSV.gz/JSONL files, interleaved by "
                                          "event time (see simulators.replay).")
    r.add_argument("paths", nargs="+", type=Path, help="files or folders")
    add_layout_args(r)  # the same reader and options as streamseq backtest
    g = r.add_argument_group("replay")
    g.add_argument("--values", type=_names, action="extend",
                   help="value columns, comma-separated or repeated (as --target)")
    g.add_argument("--loop", action="store_true",
                   help="replay forever, shifting each pass forward in event time")
    r.set_defaults(func=_run_replay)


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


# -- runners --------------------------------------------------------------------------------
def _run_sensors(args: argparse.Namespace) -> int:
    from simulators.sensors import AnomalyRates, SensorSimulator

    if args.values:
        values = args.values
    elif args.n_values:
        values = [f"v{i}" for i in range(args.n_values)]
    else:
        values = ["value"]

    def rate(name: str) -> float:
        own = getattr(args, f"{name}_rate")
        return args.anomaly_rate if own is None else own

    try:
        sim = SensorSimulator(
            args.n_sensors, values, seed=args.seed, start=args.start, interval=args.interval,
            steps=args.steps, jitter=args.jitter, noise=args.noise, daily=args.daily,
            weekly=args.weekly, trend=args.trend, decimals=args.decimals,
            anomalies=AnomalyRates(level_shift=rate("level_shift"), drift=rate("drift"),
                                   variance_burst=rate("burst"), stuck=rate("stuck"),
                                   dropout=rate("dropout"), spike=rate("spike")),
            drift_steps=args.drift_steps, burst_steps=args.burst_steps,
            stuck_steps=args.stuck_steps, dropout_steps=args.dropout_steps)
    except ValueError as exc:
        log.error("simulate sensors: %s", exc)
        return 2
    return _emit(args, sim.messages, "sensors", "simulate sensors", default_speed=0.0)


def _run_prices(args: argparse.Namespace) -> int:
    from simulators.prices import PriceSimulator

    spec = args.symbols.strip()
    n, names = (int(spec), None) if spec.isdigit() else (0, _names(spec))
    try:
        sim = PriceSimulator(
            n, names, seed=args.seed, start=args.start, bars=args.bars,
            bar_seconds=args.bar_seconds, tick_rate=args.tick_rate, price=args.price,
            vol=args.vol, drift=args.drift, vol_half_life=args.vol_half_life,
            correlation=args.correlation, jump_rate=args.jump_rate, jump_size=args.jump_size,
            stressed_vol=args.stressed_vol, calm_days=args.calm_days,
            stressed_days=args.stressed_days, session=args.session, off_hours=args.off_hours,
            weekends=args.weekends, burstiness=args.burstiness, tick_size=args.tick_size,
            steps=args.steps)
    except ValueError as exc:
        log.error("simulate prices: %s", exc)
        return 2
    return _emit(args, sim.messages, "prices", "simulate prices", default_speed=0.0)


def _run_replay(args: argparse.Namespace) -> int:
    from simulators.replay import replay_messages
    from streamseq.exceptions import DataError
    from streamseq.io.files import RowErrors, expand_paths

    layout = layout_from_args(args)
    files = expand_paths(args.paths)
    if not files:
        raise DataError(f"no tables or JSON-lines files in {', '.join(map(str, args.paths))}")
    errors = RowErrors()
    stream = replay_messages(files, layout, loop=args.loop, errors=errors)
    first = list(itertools.islice(stream, 1))
    if not first:
        raise DataError(f"no event to replay: {errors.summary()}" if errors.total
                        else "no event to replay: the input holds no data rows")
    kind = _kind(first[0][1])
    default_topic = "prices" if kind == "price" else "sensors"
    if args.speed is None:
        default_speed = 0.0 if args.dry_run or args.rate else 1.0
    else:
        default_speed = args.speed
    log.info("replaying %d files at speed %s", len(files), default_speed or "max")

    def messages(_truth: TruthWriter | None) -> Iterator[Message]:
        return itertools.chain(first, stream)

    code = _emit(args, messages, default_topic, "replay", default_speed=default_speed)
    if errors.total:
        log.warning("replay: %s", errors.summary())
    return code


def _kind(payload: bytes) -> str:
    with contextlib.suppress(ValueError):
        doc = json.loads(payload)
        if isinstance(doc, dict) and doc.get("kind") in ("sensor", "price"):
            return str(doc["kind"])
    return "sensor"


def _emit(args: argparse.Namespace, factory: MessageFactory, default_topic: str, label: str,
          default_speed: float) -> int:
    """Build the message stream (faults, truth) and send it to stdout or Kafka."""
    try:
        rates = FaultRates(out_of_order=args.out_of_order_rate, duplicate=args.duplicate_rate,
                           malformed=args.malformed_rate, nan=args.nan_rate,
                           missing_field=args.missing_field_rate)
        injector = FaultInjector(rates, seed=args.seed, max_delay=args.max_delay)
    except ValueError as exc:
        log.error("%s: %s", label, exc)
        return 2
    speed = default_speed if args.speed is None else args.speed
    if speed < 0:
        log.error("%s: --speed must be >= 0", label)
        return 2
    progress = Progress(label, enabled=args.progress)
    pacing = {"rate": args.rate, "speed": speed, "count": args.count,
              "duration": args.duration, "max_gap": args.max_gap, "progress": progress}
    truth = TruthWriter(args.truth) if args.truth else None
    try:
        messages = injector.apply(factory(truth), truth)
        if args.dry_run:
            sink = StreamSink()
            n = run(messages, sink, **pacing)
            progress.final(n)
            code = 0
        else:
            code = _produce(args, messages, args.topic or default_topic, pacing, progress)
    finally:
        if truth is not None:
            truth.close()
    if injector.counts:
        log.info("%s: faults injected %s", label, dict(sorted(injector.counts.items())))
    return code


def _produce(args: argparse.Namespace, messages: Iterator[Message], topic: str,
             pacing: dict[str, object], progress: Progress) -> int:
    from kafka.errors import KafkaError

    try:
        sink = KafkaSink(args.bootstrap, topic, linger_ms=args.linger_ms,
                         event_timestamps=args.kafka_timestamp == "event",
                         bootstrap_timeout_ms=int(args.connect_timeout * 1000))
    except KafkaError as exc:
        log.error("cannot reach Kafka at %s: %s", args.bootstrap, exc)
        return 1
    n = 0
    try:
        n = run(messages, sink, **pacing)  # type: ignore[arg-type]
    except KafkaError as exc:
        log.error("producing to %s failed: %s", topic, exc)
    finally:
        try:
            sink.close()
        except KafkaError as exc:
            log.error("flushing to %s failed: %s", topic, exc)
    progress.final(n, sink.delivered)
    return 0 if sink.delivered == n and not sink.failed else 1
