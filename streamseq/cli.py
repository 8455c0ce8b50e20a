"""The ``streamseq`` command. Each subcommand's parser lives beside the code it runs.

A module that adds commands exposes ``register(subparsers)``, which adds its parsers and
sets ``func`` (``args -> int`` exit code) on each. Only this module configures logging.

Errors are handled here, the same way for every command: a command returns its exit code or
raises, and :func:`main` turns what it raises into one line on stderr,
``streamseq COMMAND: error: MESSAGE``, and an exit code, never a traceback:

====  ===================================================================================
code  meaning
====  ===================================================================================
0     done
1     the input or the run failed: a file that cannot be read as given, no event applied,
      a broker that fails (:class:`~streamseq.exceptions.DataError`, other errors)
2     usage: an unknown or malformed option, a file that does not exist
      (:class:`~streamseq.exceptions.UsageError`, ``ConfigError``); ``streamseq run``: a
      setting that cannot be used as given (bootstrap not ``HOST:PORT``, metrics port in
      use, checkpoint directory that is a file or under one)
3     the service cannot continue from its state (``streamseq run``: refused checkpoint,
      another architecture or every snapshot of a partition unreadable)
130   interrupted (Ctrl+C)
====  ===================================================================================

An error that is not one of ours (a bug) says so on its one line, exit code 1; ``--log-level
DEBUG`` shows its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from streamseq.exceptions import ConfigError, StreamseqError, UsageError
from streamseq.logsafe import EscapingFormatter, escape

__all__ = ["main", "build_parser", "CommandParser", "EXIT_OK", "EXIT_FAILED", "EXIT_USAGE",
           "configure_logging", "KafkaRetryNoise"]

log = logging.getLogger("streamseq")

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130

COMMAND_MODULES = (
    "streamseq.backtest",
    "streamseq.service.commands",
    "streamseq.top",
    "simulators.commands",
    "streamseq.text.commands",
)
# Which module defines a command, so `streamseq top` need not import torch.
COMMAND_HOME = {
    "backtest": "streamseq.backtest",
    "run": "streamseq.service.commands",
    "broker": "streamseq.service.commands",
    "demo": "streamseq.service.commands",
    "top": "streamseq.top",
    "simulate": "simulators.commands",
    "replay": "simulators.commands",
    "generate": "streamseq.text.commands",
    "backtest-text": "streamseq.text.commands",
}


def _command_of(argv: Sequence[str]) -> str | None:
    skip = False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg == "--log-level":
            skip = True
        elif not arg.startswith("-"):
            return arg
    return None


class CommandParser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (``PROG: error: MESSAGE``), exit 2.

    Subcommand parsers inherit the class, and record their ``prog`` in the parsed
    arguments so that :func:`main` names the command in its error lines."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")

    def parse_args(self, args: Any = None, namespace: Any = None) -> Any:
        ns, rest = self.parse_known_args(args, namespace)
        if rest:
            prog = getattr(ns, "prog_", None) or self.prog
            self.exit(EXIT_USAGE, f"{prog}: error: unrecognized arguments: {' '.join(rest)} "
                                  f"(see {prog} --help)\n")
        return ns

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
        ns, rest = super().parse_known_args(args, namespace)
        if getattr(ns, "prog_", None) is None:
            ns.prog_ = self.prog  # the innermost subcommand parser sets it first
        return ns, rest


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    parser = CommandParser(
        prog="streamseq",
        description="Stateful online GRU/LSTM forecasting over Kafka streams and files.",
    )
    parser.add_argument("--log-level", default="INFO",
                        choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    modules = [only] if only else COMMAND_MODULES
    for name in modules:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name is not None and name.startswith(exc.name):
                continue  # that part of the product is not installed/built yet
            raise
        module.register(sub)
    return parser


class KafkaRetryNoise(logging.Filter):
    """Drops kafka-python's records of expected connection retries (below DEBUG level).

    kafka-python logs every refused connection attempt at ERROR and every wait for the
    bootstrap server at WARNING. A broker that is still starting, or briefly away, is waited
    out by design, and the service reports it in its own words (a WARNING per retry,
    ``streamseq_broker_connected``, ``/readyz``), so these lines are noise that reads like a
    failure. So are kafka-python's note that one of its I/O tasks ran for more than 100 ms,
    and its report of a metadata refresh cut short because the client or its connection is
    closing (``Cancelled``, ``Transport closed for writes``).
    Everything else kafka-python says at WARNING or above (TLS, authentication, protocol
    errors) is kept. ``--log-level DEBUG`` shows them all.

    Examples
    --------
    >>> def record(name, level, msg):
    ...     return logging.LogRecord(name, level, __file__, 1, msg, None, None)
    >>> noise = KafkaRetryNoise()
    >>> noise.filter(record("kafka.net.manager", logging.ERROR,
    ...                     "Connection failed: KafkaConnectionError: 111 ECONNREFUSED"))
    False
    >>> noise.filter(record("kafka.net.manager", logging.ERROR, "SSL handshake failed"))
    True
    >>> noise.filter(record("streamseq.service.app", logging.WARNING, "broker 111 ECONNREFUSED"))
    True
    """

    RETRY_MARKERS = ("ECONNREFUSED", "not ready; waiting", "Unable to bootstrap",
                     "It is blocking the event loop", "Metadata refresh: failed Cancelled",
                     "Metadata refresh: failed Transport closed")

    def filter(self, record: logging.LogRecord) -> bool:
        if not (record.name == "kafka" or record.name.startswith("kafka.")):
            return True
        message = record.getMessage()
        return not any(marker in message for marker in self.RETRY_MARKERS)


def configure_logging(level: str) -> None:
    """Log records at ``level`` and above to stderr, control characters escaped
    (:class:`~streamseq.logsafe.EscapingFormatter`), kafka-python's at WARNING and above
    without its expected connection retries (:class:`KafkaRetryNoise`); DEBUG shows all."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(EscapingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    if level != "DEBUG":
        handler.addFilter(KafkaRetryNoise())
        # kafka-python logs every reconnect at INFO, WARNING or ERROR
        logging.getLogger("kafka").setLevel(logging.CRITICAL if level == "ERROR"
                                            else logging.WARNING)
    logging.basicConfig(level=getattr(logging, level), handlers=[handler])


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; its exit code (see the module docstring). Never raises.

    Run as the process's own command (``argv`` not given), a command whose parser sets
    ``exit_at_once`` (``streamseq run``: every client and file of its own is closed when it
    returns) ends the process right away, without the interpreter's teardown of torch and
    numba (1-3 s on a busy machine): a SIGTERM stops the service in about a second.
    """
    code, exit_at_once = _main(argv)
    if argv is None and exit_at_once:
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def _main(argv: Sequence[str] | None) -> tuple[int, bool]:
    """The exit code, and whether the command asked to end the process at once."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(COMMAND_HOME.get(_command_of(argv) or ""))
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error already printed (2)
        return (exc.code if isinstance(exc.code, int) else EXIT_USAGE), False
    configure_logging(args.log_level)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE, False
    prog = getattr(args, "prog_", None) or parser.prog
    args.argv_ = argv  # what a command that starts copies of itself passes on
    exit_at_once = bool(getattr(args, "exit_at_once", False))
    try:
        return int(args.func(args) or 0), exit_at_once
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED, exit_at_once
    except Exception as exc:  # noqa: BLE001 - the one place that turns errors into exit codes
        code, message = _describe(exc)
        log.debug("%s failed", prog, exc_info=True)
        print(f"{prog}: error: {message}", file=sys.stderr, flush=True)
        return code, exit_at_once


def _describe(exc: Exception) -> tuple[int, str]:
    """Exit code and one-line message of an error escaping a command."""
    text = escape(" ".join(str(exc).split())) or type(exc).__name__
    if isinstance(exc, (UsageError, ConfigError)):
        return EXIT_USAGE, text
    if isinstance(exc, FileNotFoundError):
        return EXIT_USAGE, f"no such file or folder: {exc.filename or text}"
    if isinstance(exc, StreamseqError):
        return EXIT_FAILED, text
    if isinstance(exc, OSError):
        where = f" ({exc.filename})" if exc.filename else ""
        return EXIT_FAILED, f"{exc.strerror or text}{where}"
    return EXIT_FAILED, (f"internal error, please report it: {type(exc).__name__}: {text} "
                         "(--log-level DEBUG shows the traceback)")


if __name__ == "__main__":
    raise SystemExit(main())
