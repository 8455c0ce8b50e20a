"""Replay recorded text through the text engine and report prequential metrics.

Layouts read (files, or folders of them; README/SOURCE/LICENSE files are skipped):

* **one text** (``.txt`` that is not ``sentence<TAB>label``): a language-model stream whose
  key is the file name; cut into messages of one line (newline kept, so the messages
  concatenate back to the file) or of ``N`` characters;
* **labelled sentences** (``.txt``/``.tsv`` whose lines are ``sentence<TAB>label``): a
  classification stream, key = file name;
* **polarity pairs** (``NAME.pos`` / ``NAME.neg``, Latin-1): one classification stream with
  labels ``pos`` / ``neg``, the two files merged;
* **JSONL** of text/label events (``{"kind": "text", ...}``), replayed as recorded.

Several sources are interleaved deterministically: at each step a seeded draw picks the next
source with probability proportional to the messages it has left (each source's own order is
kept). Messages get synthetic event times (one second apart, from 2024-01-01) and ids
``KEY:N``. With ``label_delay = D`` a labelled message is sent without its label, and a
``label`` event follows after ``D`` further messages.
"""

from __future__ import annotations

import json
import logging
import math
import random
import re
import sys
import time
from collections import Counter, deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TextIO

from streamseq.events.errors import EventError
from streamseq.exceptions import DataError, UsageError
from streamseq.io.files import SUFFIXES as NUMERIC_SUFFIXES
from streamseq.io.sniff import content_kind
from streamseq.text.baselines import BigramCharModel
from streamseq.text.config import ClassifierConfig, LMConfig, TextEngineConfig
from streamseq.text.engine import TextEngine
from streamseq.text.events import TEXT_KINDS, LabelEvent, TextDecoder, TextEvent

__all__ = [
    "TextBacktestOptions",
    "TextSource",
    "expand_text_paths",
    "format_report",
    "is_text_input",
    "read_text_events",
    "read_text_sources",
    "run_and_print",
    "run_text_backtest",
    "text_layout",
]

log = logging.getLogger(__name__)

BASE_TS_MS = 1_704_067_200_000  # 2024-01-01T00:00:00Z
STEP_MS = 1000
TEXT_SUFFIXES = (".txt", ".tsv", ".pos", ".neg", ".jsonl", ".json")
_SKIP = re.compile(r"^(readme|source|license|licence|copying)|\.readme", re.IGNORECASE)
_LABELLED = re.compile(r"^(.*\S)\s*\t\s*([^\t\s][^\t]{0,31}?)\s*$")
SNIFF_LINES = 50


@dataclass(frozen=True)
class TextBacktestOptions:
    """How to cut, merge and replay text files, and what to host.

    Parameters
    ----------
    chunk
        ``"line"`` or a number of characters per message (one-text files).
    limit_chars
        Read at most this many characters of each one-text file.
    limit_messages
        Read at most this many messages of each source.
    label_delay
        Labels arrive this many messages after their message (0: with it).
    seed
        Seed of the interleaving of sources.
    tasks
        ``("lm",)``, ``("classifier",)`` or both; ``None`` infers: a language model if any
        one-text source, a classifier if any labelled source.
    lm, classifier
        Learner configs (defaults if ``None`` and the task is on).
    batch
        Events per :meth:`TextEngine.process` call.
    baselines
        Also score the online bigram character model (LM) and the prequential majority
        class (classifier) on the same stream.
    known_labels
        Give the classifier the set of labels found in the data up front (the task's
        classes, as a user would configure them; not their order), so its first
        predictions cover every class. Off: classes are learned as labels arrive.
    load_checkpoint, save_checkpoint
        Start from / write a checkpoint (the config then comes from the checkpoint).
    """

    chunk: str | int = "line"
    limit_chars: int | None = None
    limit_messages: int | None = None
    label_delay: int = 0
    seed: int = 0
    tasks: tuple[str, ...] | None = None
    lm: LMConfig | None = None
    classifier: ClassifierConfig | None = None
    batch: int = 256
    baselines: bool = True
    known_labels: bool = True
    load_checkpoint: str | None = None
    save_checkpoint: str | None = None


@dataclass
class TextSource:
    """One stream read from files: ``items`` are ``(text, label or None)`` in order."""

    key: str
    layout: str
    paths: list[Path]
    items: list[tuple[str, str | None]] = field(default_factory=list)
    events: list[TextEvent | LabelEvent] | None = None  # JSONL: recorded events


# -- layout detection ------------------------------------------------------------------
def _skip(p: Path) -> bool:
    return bool(_SKIP.search(p.name))


def expand_text_paths(paths: Iterable[str | Path]) -> list[Path]:
    """Files named, and the text-layout files inside folders named (sorted)."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out.extend(sorted(f for f in p.rglob("*") if f.is_file()
                              and f.suffix.lower() in TEXT_SUFFIXES and not _skip(f)))
        else:
            out.append(p)
    return out


def _read_text(path: Path, encoding: str | None = None) -> str:
    data = path.read_bytes()
    if encoding:
        return data.decode(encoding)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def _head_lines(path: Path, n: int = SNIFF_LINES) -> list[str]:
    with open(path, "rb") as f:
        raw = f.read(64_000)
    text = raw.decode("utf-8", errors="replace")
    return [ln for ln in _lines(text) if ln.strip()][:n]


def text_layout(path: str | Path) -> str | None:
    """``"text"``, ``"labelled"``, ``"polarity"``, ``"jsonl"``, or ``None`` (not text).

    Examples
    --------
    >>> text_layout("reviews.pos"), text_layout("prices.csv")
    ('polarity', None)
    """
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix in (".pos", ".neg"):
        return "polarity"
    if suffix not in TEXT_SUFFIXES or not p.is_file():
        return None
    lines = _head_lines(p)
    if suffix in (".jsonl", ".json"):
        try:
            doc = json.loads(lines[0]) if lines else None
        except ValueError:
            return None
        return "jsonl" if isinstance(doc, dict) and doc.get("kind") in TEXT_KINDS else None
    if lines and sum(bool(_LABELLED.match(ln)) for ln in lines) >= 0.9 * len(lines):
        return "labelled"
    return "text"


def is_text_input(paths: Sequence[str | Path]) -> bool:
    """True if every file named (or found in the folders named) is a text layout, so
    ``streamseq backtest`` should hand the run to :func:`run_text_backtest`.

    Decided by content, not suffix: a ``.txt`` or ``.tsv`` file that is a table of
    readings (:func:`streamseq.io.sniff.content_kind`) is not text.

    Examples
    --------
    >>> is_text_input(["a.csv"]), is_text_input([])
    (False, False)
    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (d / "log.txt").write_text("time,value\\n2024-01-01 00:00,1\\n2024-01-01 00:01,2\\n")
    >>> is_text_input([d / "log.txt"])
    False
    """
    def is_table(f: Path) -> bool:
        return content_kind(f) == "table"

    files = expand_text_paths(paths)
    for p in map(Path, paths):  # a folder that also holds numeric recordings is not text
        if p.is_dir() and any(f.is_file() and f.name.lower().endswith(NUMERIC_SUFFIXES)
                              and (text_layout(f) is None or is_table(f)) for f in p.rglob("*")):
            return False
    return bool(files) and all(text_layout(f) is not None and not is_table(f) for f in files)


# -- reading ---------------------------------------------------------------------------
def read_text_sources(paths: Sequence[str | Path], options: TextBacktestOptions | None = None
                      ) -> list[TextSource]:
    """Read every source named by ``paths`` (see the module docstring)."""
    opt = options or TextBacktestOptions()
    sources: dict[str, TextSource] = {}
    for path in expand_text_paths(paths):
        if not path.exists():
            raise UsageError(f"no such file or folder: {path}")
        layout = text_layout(path)
        if layout is None:
            raise EventError("bad_text", f"{path} is not a text layout this reader knows")
        if layout == "polarity":
            key = path.stem
            src = sources.setdefault(f"polarity:{path.parent}/{key}",
                                     TextSource(key, layout, []))
            src.paths.append(path)
            continue
        src = TextSource(path.stem, layout, [path])
        if layout == "text":
            src.items = [(m, None) for m in _chunk(_read_text(path)[: opt.limit_chars],
                                                   opt.chunk)]
        elif layout == "labelled":
            src.items = _read_labelled(path)
        else:
            src.events = _read_jsonl(path)
        sources[str(path)] = src
    out = list(sources.values())
    for src in out:
        if src.layout == "polarity":
            per_file = [[(ln.strip(), p.suffix[1:].lower())
                         for ln in _lines(_read_text(p, "latin-1")) if ln.strip()]
                        for p in sorted(src.paths)]
            src.items = [per_file[i][j] for i, j in _merge_order([len(f) for f in per_file],
                                                                 opt.seed)]
        if opt.limit_messages is not None:
            src.items = src.items[: opt.limit_messages]
            if src.events is not None:
                src.events = src.events[: opt.limit_messages]
    return out


def _lines(text: str, keepends: bool = False) -> list[str]:
    """Split on ``\n`` only (``str.splitlines`` also splits on U+0085, U+2028, ...)."""
    parts = text.split("\n")
    if keepends:
        out = [p + "\n" for p in parts[:-1]]
        return out + [parts[-1]] if parts[-1] else out
    return [p.rstrip("\r") for p in parts]


def _chunk(text: str, chunk: str | int) -> list[str]:
    if chunk == "line":
        return _lines(text, keepends=True)
    n = int(chunk)
    if n < 1:
        raise UsageError(f"chunk must be 'line' or a positive number of characters, not {chunk}")
    return [text[i:i + n] for i in range(0, len(text), n)]


def _read_labelled(path: Path) -> list[tuple[str, str | None]]:
    items: list[tuple[str, str | None]] = []
    bad = 0
    for ln in _lines(_read_text(path)):
        m = _LABELLED.match(ln)
        if m is None:
            bad += ln.strip() != ""
            continue
        items.append((m.group(1).strip(), m.group(2).strip()))
    if bad:
        log.warning("%s: %d lines are not sentence<TAB>label and were skipped", path, bad)
    return items


def _read_jsonl(path: Path) -> list[TextEvent | LabelEvent]:
    decoder = TextDecoder()
    events: list[TextEvent | LabelEvent] = []
    for n, ln in enumerate(_lines(_read_text(path)), 1):
        if not ln.strip():
            continue
        try:
            events.append(decoder.decode(ln))
        except EventError as exc:
            log.warning("%s:%d: %s", path, n, exc)
    return events


def _merge_order(sizes: Sequence[int], seed: int) -> list[tuple[int, int]]:
    """``(source, index)`` pairs: a seeded draw proportional to what each source has left."""
    rng = random.Random(seed)
    left = list(sizes)
    taken = [0] * len(sizes)
    order: list[tuple[int, int]] = []
    total = sum(left)
    while total:
        r = rng.randrange(total)
        i = 0
        while r >= left[i]:
            r -= left[i]
            i += 1
        order.append((i, taken[i]))
        taken[i] += 1
        left[i] -= 1
        total -= 1
    return order


def read_text_events(paths: Sequence[str | Path], options: TextBacktestOptions | None = None
                     ) -> list[TextEvent | LabelEvent]:
    """The replayed stream: sources read, interleaved, timed, with labels (late if asked).

    Examples
    --------
    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (d / "r.tsv").write_text("good\\t1\\nbad\\t0\\nfine\\t1\\n")
    >>> evs = read_text_events([d], TextBacktestOptions(label_delay=1))
    >>> [(e.kind, e.id, getattr(e, "label", None)) for e in evs]  # doctest: +NORMALIZE_WHITESPACE
    [('text', 'r:0', None), ('text', 'r:1', None), ('label', 'r:0', '1'),
     ('text', 'r:2', None), ('label', 'r:1', '0'), ('label', 'r:2', '1')]
    """
    opt = options or TextBacktestOptions()
    return _events_from_sources(read_text_sources(paths, opt), opt)


def _events_from_sources(sources: list[TextSource], opt: TextBacktestOptions
                         ) -> list[TextEvent | LabelEvent]:
    recorded = [s for s in sources if s.events is not None]
    if recorded:
        if len(recorded) != len(sources):
            raise DataError("JSONL text events cannot be mixed with other text layouts")
        merged = [e for s in recorded for e in s.events or []]
        merged.sort(key=lambda e: e.ts_ms)  # stable: each file's order is kept
        return merged
    out: list[TextEvent | LabelEvent] = []
    due: deque[tuple[int, LabelEvent]] = deque()
    for seq, (i, j) in enumerate(_merge_order([len(s.items) for s in sources], opt.seed)):
        src = sources[i]
        text, label = src.items[j]
        ts = BASE_TS_MS + seq * STEP_MS
        msg_id = f"{src.key}:{j}"
        while due and due[0][0] <= seq:
            out.append(due.popleft()[1])
        if label is not None and opt.label_delay > 0:
            out.append(TextEvent(src.key, ts, text, msg_id))
            due.append((seq + opt.label_delay + 1,
                        LabelEvent(src.key, ts + opt.label_delay * STEP_MS, msg_id, label)))
        else:
            out.append(TextEvent(src.key, ts, text, msg_id, label))
    out.extend(e for _, e in due)
    return out


# -- the run ---------------------------------------------------------------------------
def _tasks(sources: Sequence[TextSource], opt: TextBacktestOptions) -> tuple[str, ...]:
    if opt.tasks is not None:
        return tuple(opt.tasks)
    tasks = []
    labelled = any(s.layout in ("labelled", "polarity") for s in sources) or any(
        isinstance(e, LabelEvent) or getattr(e, "label", None) is not None
        for s in sources for e in (s.events or []))
    if any(s.layout == "text" for s in sources) or any(s.events for s in sources):
        tasks.append("lm")
    if labelled:
        tasks.append("classifier")
    return tuple(tasks)


def run_text_backtest(paths: Sequence[str | Path], options: TextBacktestOptions | None = None
                      ) -> dict[str, Any]:
    """Replay ``paths`` through a :class:`TextEngine`, predict-then-learn, and report.

    Returns a dict with the stream counts, wall time and events/s of the engine, and per
    task the prequential metrics: ``lm`` (bits per character overall and over the last
    tenth of the characters, NLL per token; the online bigram model's bits per character on
    the same stream) and ``classifier`` (accuracy, macro F1, log-loss, overall and over the
    recent window; the prequential majority-class accuracy).
    """
    opt = options or TextBacktestOptions()
    t_read = time.perf_counter()
    sources = read_text_sources(paths, opt)
    events = _events_from_sources(sources, opt)
    read_s = time.perf_counter() - t_read
    if opt.load_checkpoint:
        engine = TextEngine.from_checkpoint(opt.load_checkpoint)
    else:
        tasks = _tasks(sources, opt)
        clf = (opt.classifier or ClassifierConfig()) if "classifier" in tasks else None
        if clf is not None and clf.labels is None and opt.known_labels:
            labels = sorted({e.label for e in events if e.label is not None})
            if 2 <= len(labels) <= clf.max_classes:
                clf = replace(clf, labels=tuple(labels))
        engine = TextEngine(TextEngineConfig(lm=(opt.lm or LMConfig()) if "lm" in tasks
                                             else None, classifier=clf))
    bigram = BigramCharModel() if opt.baselines and engine.lm is not None else None
    lm_rows: list[tuple[float, int, float]] = []  # (nll, chars, bigram nll) per message
    label_rows: list[tuple[str, bool]] = []
    rejected: Counter[str] = Counter()
    rejected_events: set[int] = set()

    def on_error(exc: EventError, event: object) -> None:
        rejected[exc.reason] += 1
        rejected_events.add(id(event))

    engine_s = 0.0
    for a in range(0, len(events), max(1, opt.batch)):
        batch = events[a:a + opt.batch]
        t0 = time.perf_counter()
        outs = engine.process(batch, on_error=on_error)
        engine_s += time.perf_counter() - t0
        accepted = iter([e for e in batch if isinstance(e, TextEvent)
                         and id(e) not in rejected_events])
        for o in outs:
            if o["kind"] == "text":
                ev = next(accepted)  # text records come in the order of accepted texts
                if "tokens" not in o:
                    continue
                chars = o["chars"]
                nll = (o["nll_per_char"] or 0.0) * chars
                b = bigram.learn_text(ev.key, ev.text) if bigram is not None else math.nan
                lm_rows.append((nll, chars, b))
            elif o["kind"] == "label":
                label_rows.append((o["label"], bool(o["correct"])))
    if opt.save_checkpoint:
        engine.save(opt.save_checkpoint)
    n_events = len(events)
    report: dict[str, Any] = {
        "paths": [str(p) for p in paths],
        "sources": [{"key": s.key, "layout": s.layout,
                     "messages": len(s.events) if s.events is not None else len(s.items)}
                    for s in sources],
        "events": n_events,
        "text_events": sum(isinstance(e, TextEvent) for e in events),
        "label_events": sum(isinstance(e, LabelEvent) for e in events),
        "rejected": dict(rejected),
        "read_seconds": read_s,
        "seconds": engine_s,
        "events_per_s": n_events / engine_s if engine_s > 0 else None,
        "label_delay": opt.label_delay,
        "config": engine.config.to_dict(),
    }
    if engine.lm is not None:
        report["lm"] = _lm_report(lm_rows, engine, engine_s)
    if engine.classifier is not None:
        report["classifier"] = _clf_report(label_rows, engine)
    if opt.save_checkpoint:
        report["checkpoint"] = opt.save_checkpoint
    return report


def _bits(nll: float, n: int) -> float | None:
    return nll / n / math.log(2) if n else None


def _lm_report(rows: list[tuple[float, int, float]], engine: TextEngine, seconds: float
               ) -> dict[str, Any]:
    chars = sum(c for _, c, _ in rows)
    cut, acc, tail = 0.9 * chars, 0, len(rows)
    for i, (_, c, _) in enumerate(rows):
        if acc >= cut:
            tail = i
            break
        acc += c
    tail_rows = rows[tail:]
    tail_chars = sum(c for _, c, _ in tail_rows)
    s = engine.stats
    return {
        "messages": len(rows), "chars": chars, "tokens": s.lm_tokens,
        "nll_per_token": s.lm_nll_sum / s.lm_tokens if s.lm_tokens else None,
        "bits_per_char": _bits(sum(n for n, _, _ in rows), chars),
        "bits_per_char_last_tenth": _bits(sum(n for n, _, _ in tail_rows), tail_chars),
        "bigram_bits_per_char": _bits(sum(b for _, _, b in rows), chars),
        "bigram_bits_per_char_last_tenth": _bits(sum(b for _, _, b in tail_rows), tail_chars),
        "chars_per_s": chars / seconds if seconds > 0 else None,
        "updates": s.lm_updates, "updates_skipped": s.lm_updates_skipped,
        "vocab": s.lm_vocab_size, "keys": s.lm_keys,
    }


def _clf_report(rows: list[tuple[str, bool]], engine: TextEngine) -> dict[str, Any]:
    assert engine.classifier is not None
    m = engine.classifier.metrics.get()
    seen: Counter[str] = Counter()
    majority_hits = 0
    for label, _ in rows:  # prequential majority: the most frequent label so far
        if seen and seen.most_common(1)[0][0] == label:
            majority_hits += 1
        seen[label] += 1
    m.update({
        "majority_accuracy": majority_hits / len(rows) if rows else None,
        "class_shares": {k: v / len(rows) for k, v in sorted(seen.items())} if rows else {},
        "labels_expired": engine.stats.clf_labels_expired,
        "pending": engine.stats.clf_pending,
        "classes": list(engine.classifier.classes),
    })
    return m


def _f(x: object, fmt: str = ".3f") -> str:
    return "-" if x is None else format(x, fmt)  # type: ignore[arg-type]


def format_report(report: dict[str, Any]) -> str:
    """The report as a short plain-text table."""
    lines = [f"text backtest: {report['events']} events ({report['text_events']} text, "
             f"{report['label_events']} label) in {report['seconds']:.1f} s = "
             f"{_f(report['events_per_s'], '.0f')} events/s"]
    if report["rejected"]:
        lines.append(f"rejected: {report['rejected']}")
    lm = report.get("lm")
    if lm:
        lines += [
            "",
            f"language model ({lm['chars']} chars, {lm['tokens']} tokens, "
            f"{_f(lm['chars_per_s'], '.0f')} chars/s)",
            f"  {'model':<12} {'bits/char':>10} {'last tenth':>11}",
            f"  {'ours':<12} {_f(lm['bits_per_char']):>10} "
            f"{_f(lm['bits_per_char_last_tenth']):>11}",
            f"  {'bigram (KN)':<12} {_f(lm['bigram_bits_per_char']):>10} "
            f"{_f(lm['bigram_bits_per_char_last_tenth']):>11}",
        ]
    c = report.get("classifier")
    if c:
        w = c["window"]
        lines += [
            "",
            f"classifier ({c['n']} labels scored, classes {c['classes']}, "
            f"{c['labels_expired']} expired, label delay {report['label_delay']})",
            f"  {'':<14} {'accuracy':>9} {'macro F1':>9} {'log-loss':>9}",
            f"  {'overall':<14} {_f(c['accuracy']):>9} {_f(c['macro_f1']):>9} "
            f"{_f(c['log_loss']):>9}",
            f"  {'last ' + str(w['n']):<14} {_f(w['accuracy']):>9} {_f(w['macro_f1']):>9} "
            f"{_f(w['log_loss']):>9}",
            f"  {'majority':<14} {_f(c['majority_accuracy']):>9}",
        ]
    return "\n".join(lines)


def run_and_print(paths: Sequence[str | Path], options: TextBacktestOptions | None = None,
                  out: TextIO | None = None) -> dict[str, Any]:
    """:func:`run_text_backtest`, then print :func:`format_report` (for ``streamseq
    backtest`` when :func:`is_text_input` says the input is text)."""
    report = run_text_backtest(paths, options)
    print(format_report(report), file=out or sys.stdout)
    return report
