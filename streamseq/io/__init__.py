"""Sources and sinks: files (CSV, CSV.gz, JSONL), Kafka, and in-memory."""

from __future__ import annotations

from streamseq.io.files import FileLayout, RowErrors, expand_paths, read_events

__all__ = ["FileLayout", "RowErrors", "expand_paths", "read_events"]
