"""``streamseq run``, ``streamseq broker`` and ``streamseq demo``."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from streamseq.backtest import normalize_engine_flags
from streamseq.config_base import add_flags, flag_overrides
from streamseq.exceptions import ConfigError
from streamseq.service.config import ServiceConfig, TopicSpec, load_config

__all__ = ["register", "install_signal_handlers"]

log = logging.getLogger(__name__)

NO_BROKER = (  # one line, as every CLI error (streamseq.cli)
    "no Kafka bootstrap servers configured: pass --bootstrap HOST:PORT or set "
    "STREAMSEQ_BOOTSTRAP (a local broker: `streamseq broker --port 9092` in another terminal, "
    "needs `pip install 'streamseq[broker]'`; everything at once: `streamseq demo`)"
)


def install_signal_handlers(stop: Any) -> None:
    """SIGTERM/SIGINT call ``stop()``; a second Ctrl+C raises KeyboardInterrupt."""
    state = {"n": 0}

    def handle(signum: int, _frame: object) -> None:
        state["n"] += 1
        if state["n"] > 1 and signum == signal.SIGINT:
            raise KeyboardInterrupt
        log.info("signal %d: finishing the batch, checkpointing, then exiting "
                 "(Ctrl+C again to abort)", signum)
        stop()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, handle)
        signal.signal(signal.SIGINT, handle)


def add_service_args(p: argparse.ArgumentParser) -> None:
    """The flags of ``streamseq run``: generated from :class:`ServiceConfig`'s fields (the
    engine's included), plus ``--config`` and the repeatable topic flags."""
    p.add_argument("--config", type=Path, help="TOML or YAML configuration file")
    for kind, what in (("sensor", "sensor events"), ("price", "price events"),
                       ("text", "text and label events")):
        p.add_argument(f"--{kind}-topic", action="append", help=f"input topic of {what} "
                       "(repeatable)")
    add_flags(p, ServiceConfig)


def config_from_args(a: argparse.Namespace, env: Mapping[str, str] | None = None
                     ) -> ServiceConfig:
    """The configuration ``streamseq run`` uses: defaults <- ``--config`` file <- ``env``
    (``STREAMSEQ_*``) <- the flags given."""
    overrides = normalize_engine_flags(flag_overrides(a))
    topics = [TopicSpec(t, kind) for kind in ("sensor", "price", "text")
              for t in getattr(a, f"{kind}_topic") or []]
    if topics:
        overrides["topics"] = tuple(topics)
    return load_config(a.config, env=env, overrides=overrides)


def cmd_run(a: argparse.Namespace) -> int:
    from streamseq.service.app import Service, ServiceError
    from streamseq.service.supervisor import Supervisor, watch_parent, worker_count

    try:
        cfg = config_from_args(a, os.environ)
        if not cfg.bootstrap:
            print(f"streamseq run: {NO_BROKER}", file=sys.stderr)
            return 2
        count = worker_count(cfg.workers)
        if count > 1:
            supervisor = Supervisor(cfg, getattr(a, "argv_", None) or sys.argv[1:], count)
            install_signal_handlers(supervisor.stop)
            return supervisor.run()
        port_file = getattr(a, "worker_port_file", None)
        service = Service(cfg, on_serving=None if port_file is None else
                          lambda port: _write_atomically(port_file, str(port)))
        install_signal_handlers(service.stop)
        if port_file is not None:  # a worker of `--workers N`
            _name_worker_in_logs(getattr(a, "worker_index", None))
            watch_parent(service.stop)
        return service.run()
    except ConfigError as exc:  # a setting that cannot be used: the metrics port, the dirs
        print(f"streamseq run: configuration error: {' '.join(str(exc).split())}",
              file=sys.stderr)
        return 2
    except ServiceError as exc:
        print(f"streamseq run: {exc}", file=sys.stderr)
        return 3


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _name_worker_in_logs(index: int | None) -> None:
    """A worker's log lines say which worker wrote them (the workers share stderr)."""
    from streamseq.logsafe import EscapingFormatter

    for handler in logging.getLogger().handlers:
        handler.setFormatter(EscapingFormatter(
            f"%(asctime)s %(levelname)s [worker {index}] %(name)s: %(message)s"))


def cmd_broker(a: argparse.Namespace) -> int:
    from streamseq.broker import EmbeddedBroker

    broker = EmbeddedBroker(port=a.port, host=a.host)
    stop = threading.Event()
    install_signal_handlers(stop.set)
    with broker:
        topics = dict(_parse_topic_arg(t) for t in a.topic or [])
        if topics:
            broker.create_topics(topics)
        print(f"Kafka-compatible broker (Tansu, in memory) on {broker.bootstrap}", flush=True)
        if topics:
            print(f"topics: {topics}", flush=True)
        print("Ctrl+C to stop. Everything is lost when it stops.", flush=True)
        while not stop.wait(0.5):
            if not broker.running:
                print("broker exited", file=sys.stderr)
                return 1
    return 0


def _parse_topic_arg(text: str) -> tuple[str, int]:
    name, _, parts = text.partition(":")
    return name, int(parts or 1)


def register(sub: argparse._SubParsersAction) -> None:
    # allow_abbrev=False: "--sasl-password SECRET" must be an error, not an abbreviation of
    # --sasl-password-file (which would put the secret in the process list and the error)
    p = sub.add_parser("run", help="run the Kafka consumer service", allow_abbrev=False,
                       description="Consume sensor and price events, forecast, publish, "
                                   "checkpoint. Settings: flags > STREAMSEQ_* env > --config "
                                   "file > defaults.")
    add_service_args(p)
    # set by the supervisor of `--workers N` on the command of each worker
    p.add_argument("--worker-index", type=int, help=argparse.SUPPRESS)
    p.add_argument("--worker-port-file", type=Path, help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_run, exit_at_once=True)

    b = sub.add_parser("broker", help="run an embedded Kafka-compatible broker (Tansu)")
    b.add_argument("--host", default="127.0.0.1")
    b.add_argument("--port", type=int, default=9092)
    b.add_argument("--topic", action="append", help="NAME[:PARTITIONS] to create (repeatable)")
    b.set_defaults(func=cmd_broker)

    d = sub.add_parser("demo", help="embedded broker + simulators + the service, for a minute")
    d.add_argument("--duration", type=float, default=60.0, help="seconds (default 60)")
    d.add_argument("--sensors", type=int, default=200, help="simulated sensors")
    d.add_argument("--symbols", type=int, default=8, help="simulated price symbols")
    d.add_argument("--rate", type=float, default=3000.0, help="sensor events/s offered")
    d.add_argument("--price-rate", type=float, default=1000.0, help="price events/s offered")
    d.add_argument("--faults", type=float, default=0.002,
                   help="rate of malformed/NaN/duplicate/out-of-order sensor messages")
    d.add_argument("--metrics-port", type=int, default=9400)
    d.add_argument("--metrics-host", default="127.0.0.1")
    d.add_argument("--state-dir", type=Path, help="checkpoint directory (default: temporary)")
    d.set_defaults(func=cmd_demo)


# ---------------------------------------------------------------------- demo
def _simulator(kind: str, bootstrap: str, topic: str, rate: float, duration: float,
               extra: list[str]) -> subprocess.Popen[bytes]:
    """A simulator in its own process (its producer would otherwise share our GIL)."""
    cmd = [sys.executable, "-m", "streamseq", "--log-level", "WARNING", "simulate", kind,
           "--bootstrap", bootstrap, "--topic", topic, "--rate", str(rate),
           "--duration", str(duration), "--no-progress", *extra]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def cmd_demo(a: argparse.Namespace) -> int:
    from streamseq.broker import EmbeddedBroker
    from streamseq.service.app import Service

    with ExitStack() as stack:
        state_dir = a.state_dir or Path(stack.enter_context(tempfile.TemporaryDirectory()))
        print("starting the embedded broker ...", flush=True)
        broker = stack.enter_context(EmbeddedBroker())
        broker.create_topics({"sensors": 4, "prices": 2, "predictions": 4, "dead-letters": 1})
        cfg = load_config(env={}, overrides={
            "bootstrap": broker.bootstrap, "checkpoint_dir": str(state_dir),
            "metrics_port": a.metrics_port, "metrics_host": a.metrics_host,
            "checkpoint_every_seconds": 10.0, "session_timeout_ms": 6000,
            "heartbeat_interval_ms": 1000})
        service = Service(cfg)
        install_signal_handlers(service.stop)
        f = a.faults / 4
        sims = [
            _simulator("sensors", broker.bootstrap, "sensors", a.rate, a.duration, [
                "--sensors", str(a.sensors), "--values", "temp,humidity", "--seed", "1",
                "--spike-rate", "0.001", "--level-shift-rate", "0.0002",
                "--malformed-rate", str(f), "--nan-rate", str(f), "--duplicate-rate", str(f),
                "--out-of-order-rate", str(f)]),
            _simulator("prices", broker.bootstrap, "prices", a.price_rate, a.duration, [
                "--symbols", str(a.symbols), "--seed", "3", "--bars"]),
        ]
        for sim in sims:
            stack.callback(_stop_process, sim)
        timer = threading.Timer(a.duration, service.stop)
        timer.daemon = True
        timer.start()
        stack.callback(timer.cancel)
        done = threading.Event()
        stack.callback(done.set)
        threading.Thread(target=_progress, args=(service, done), daemon=True).start()
        print(f"service: metrics on http://{a.metrics_host}:{a.metrics_port}/metrics ; "
              f"running for {a.duration:.0f}s (Ctrl+C stops cleanly)", flush=True)
        t0 = time.monotonic()
        code = service.run()
        done.set()
        sent = {}
        for name, sim in zip(("sensors", "prices"), sims, strict=True):
            _stop_process(sim)
            err = (sim.stderr.read().decode(errors="replace") if sim.stderr else "")
            sent[name] = _sent_count(err)
        _summary(service, sent, time.monotonic() - t0)
        return code


def _stop_process(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _sent_count(stderr_text: str) -> int:
    """The simulator's final count line ("... N sent ...")."""
    import re

    nums = re.findall(r"([\d,]+) events", stderr_text)
    return int(nums[-1].replace(",", "")) if nums else 0


def _metric_sum(service: Any, name: str, **labels: str) -> float:
    total = 0.0
    for fam in service.metrics.registry.collect():
        for s in fam.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                total += s.value
    return total


def _progress(service: Any, stop: threading.Event, every: float = 5.0) -> None:
    last, t_last = 0.0, time.monotonic()
    while not stop.wait(every):
        consumed = _metric_sum(service, "streamseq_events_consumed_total")
        now = time.monotonic()
        rate = (consumed - last) / (now - t_last)
        last, t_last = consumed, now
        keys = _metric_sum(service, "streamseq_keys_held")
        rejected = _metric_sum(service, "streamseq_events_rejected_total")
        parts = []
        for kind in ("sensor", "price"):
            m = _metric_sum(service, "streamseq_mae", kind=kind, forecaster="model")
            p = _metric_sum(service, "streamseq_mae", kind=kind, forecaster="persistence")
            if p:
                parts.append(f"{kind} MAE(z) {m:.3f} vs naive {p:.3f}")
        print(f"  {consumed:>9,.0f} events  {rate:>8,.0f} ev/s  {keys:>5,.0f} keys  "
              f"{rejected:>5,.0f} dead-lettered  " + "  ".join(parts), flush=True)


def _summary(service: Any, sent: dict[str, int], elapsed: float) -> None:
    consumed = _metric_sum(service, "streamseq_events_consumed_total")
    published = _metric_sum(service, "streamseq_predictions_published_total")
    rejected = _metric_sum(service, "streamseq_events_rejected_total")
    dropped = _metric_sum(service, "streamseq_events_dropped_total")
    print("\n== streamseq demo summary ==")
    print(f"  produced by simulators : {sum(sent.values()):,} ({sent})")
    print(f"  consumed               : {consumed:,.0f} in {elapsed:.0f}s "
          f"({consumed / max(elapsed, 1e-9):,.0f} ev/s)")
    print(f"  predictions published  : {published:,.0f}")
    print(f"  dead-lettered          : {rejected:,.0f}   dropped (dup/late): {dropped:,.0f}")
    for kind in ("sensor", "price"):
        m = _metric_sum(service, "streamseq_mae", kind=kind, forecaster="model")
        p = _metric_sum(service, "streamseq_mae", kind=kind, forecaster="persistence")
        if p:
            verdict = "better" if m < p else "not better"
            print(f"  {kind:<6} MAE (z-scored)  : model {m:.4f} vs persistence {p:.4f} "
                  f"({verdict} than persistence)")
    print(f"  keys held              : {_metric_sum(service, 'streamseq_keys_held'):,.0f}")
