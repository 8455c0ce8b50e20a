"""The ``streamseq`` command. Each subcommand's parser lives beside the code it runs.

A module that adds commands exposes ``register(subparsers)``, which adds its parsers and
sets ``func`` (``args -> int`` exit code) on each. Only this module configures logging.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from streamseq.logsafe import EscapingFormatter

__all__ = ["main", "build_parser"]

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


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
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


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(COMMAND_HOME.get(_command_of(argv) or ""))
    args = parser.parse_args(argv)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(EscapingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=getattr(logging, args.log_level), handlers=[handler])
    if args.log_level != "DEBUG":  # kafka-python logs every reconnect at INFO/ERROR
        logging.getLogger("kafka").setLevel(logging.CRITICAL if args.log_level == "ERROR"
                                            else logging.WARNING)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
