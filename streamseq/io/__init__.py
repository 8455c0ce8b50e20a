"""Sources of recorded streams: tables (CSV and its dialects) and JSON lines, read the same
way by ``streamseq backtest`` and ``streamseq replay``.

:mod:`~streamseq.io.files` reads, :mod:`~streamseq.io.sniff` tells what a file holds,
:mod:`~streamseq.io.columns` finds the key, time and value columns, :mod:`~streamseq.io.times`
parses and detects time formats, :mod:`~streamseq.io.options` holds the command-line options.
"""

from __future__ import annotations

from streamseq.io.exceptions import LayoutError
from streamseq.io.files import FileLayout, RowErrors, expand_paths, iter_file, read_events

__all__ = ["FileLayout", "LayoutError", "RowErrors", "expand_paths", "iter_file", "read_events"]
