"""The text engine: one text shard (a Kafka partition of a text topic), hosting an online
language model, an online classifier, or both.

Same shape as the numeric engine: :meth:`TextEngine.process` takes one batch of a
partition's events in offset order and returns the output records; results depend only on
the ordered events, the config and the seeds (never on how events are cut into batches or
on a restart in between); :meth:`TextEngine.state_dict` / :meth:`load_state_dict` /
:meth:`save` / :meth:`load` snapshot and restore everything; :attr:`TextEngine.stats` holds
the counters for metrics.

Output records (one ``text`` record per text event, plus one ``label`` record per label
learned, inline or late)::

    {"kind": "text", "key", "id", "ts",
     "nll_per_token", "nll_per_char", "tokens", "chars", "unknown",   # language model
     "probs": {label: p}, "label_pred"}                               # classifier
    {"kind": "label", "key", "id", "ts", "label", "label_pred", "correct", "log_loss",
     "delay_messages", "delay_ms"}
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from streamseq.events.errors import EventError
from streamseq.exceptions import CheckpointError
from streamseq.text.classifier import MessageFeatures, OnlineTextClassifier
from streamseq.text.config import TextEngineConfig
from streamseq.text.events import LabelEvent, TextEvent, check_text
from streamseq.text.lm import OnlineLanguageModel
from streamseq.text.stats import TextStats

__all__ = ["TextEngine", "FORMAT", "FORMAT_VERSION", "LM_FIELDS"]

log = logging.getLogger(__name__)

FORMAT = "streamseq.text"
FORMAT_VERSION = 3
LM_FIELDS = ("nll_per_token", "nll_per_char", "tokens", "chars", "unknown")

ErrorCallback = Callable[[EventError, "TextEvent | LabelEvent"], None]


class TextEngine:
    """One text shard: predict, then learn, for every event, in order.

    Parameters
    ----------
    config
        What to host and how (default: a character LSTM language model only).

    Attributes
    ----------
    lm
        The :class:`OnlineLanguageModel`, or ``None``.
    classifier
        The :class:`OnlineTextClassifier`, or ``None``.
    stats
        :class:`TextStats` counters (shared by both learners).

    Examples
    --------
    >>> from streamseq.text.config import ClassifierConfig, LMConfig
    >>> eng = TextEngine(TextEngineConfig(lm=LMConfig(hidden=16, embed_dim=8),
    ...                                   classifier=ClassifierConfig()))
    >>> outs = eng.process([TextEvent("r", 0, "nice!", id="m1"), LabelEvent("r", 1, "m1", "pos")])
    >>> [o["kind"] for o in outs], outs[0]["tokens"], outs[1]["label"]
    (['text', 'label'], 5, 'pos')
    >>> eng.process([LabelEvent("r", 2, "m9", "pos")])
    Traceback (most recent call last):
    ...
    streamseq.events.errors.EventError: bad_label: no message with id 'm9' is waiting for a label
    >>> eng.stats.rejected["bad_label"], eng.stats.events
    (1, 2)
    """

    def __init__(self, config: TextEngineConfig | None = None) -> None:
        self.config = config or TextEngineConfig()
        self.stats = TextStats()
        self.lm = OnlineLanguageModel(self.config.lm, self.stats) if self.config.lm else None
        self.classifier = (OnlineTextClassifier(self.config.classifier, self.stats)
                           if self.config.classifier else None)

    # -- the stream -------------------------------------------------------------------
    def process(self, events: Sequence[TextEvent | LabelEvent], *,
                on_error: ErrorCallback | None = None) -> list[dict[str, Any]]:
        """Apply ``events`` (one partition's, in offset order); return their output records.

        An event the engine cannot accept (e.g. a label for an unknown message id) raises
        :class:`~streamseq.events.EventError` before changing any state, and is counted in
        ``stats.rejected``. With ``on_error`` the callback gets ``(error, event)`` and the
        batch goes on; without it the error propagates with ``error.index`` (the event's
        position in ``events``) and ``error.outputs`` (the records of the events before it,
        which are applied): publish those, dead-letter the event, and process the rest.
        """
        outputs: list[dict[str, Any]] = []
        for i, result in enumerate(self.process_each(events)):
            if isinstance(result, EventError):
                if on_error is None:
                    result.index = i  # type: ignore[attr-defined]
                    result.outputs = outputs  # type: ignore[attr-defined]
                    raise result
                on_error(result, events[i])
            else:
                outputs.extend(result)
        return outputs

    def process_each(self, events: Sequence[TextEvent | LabelEvent]
                     ) -> Iterator[list[dict[str, Any]] | EventError]:
        """Apply ``events`` in order, yielding for each its output records or the
        :class:`EventError` that refused it (counted, state unchanged). The classifier's
        features are hashed for all the batch's texts at once."""
        clf = self.classifier
        feats: dict[int, MessageFeatures] = {}
        if clf is not None:
            texts = [(i, ev.text) for i, ev in enumerate(events) if isinstance(ev, TextEvent)
                     and isinstance(ev.text, str)]
            feats = dict(zip((i for i, _ in texts), clf.featurize([t for _, t in texts]),
                             strict=True))
        for i, event in enumerate(events):
            try:
                yield self.process_one(event, feats.get(i))
            except EventError as exc:
                yield exc

    def process_one(self, event: TextEvent | LabelEvent,
                    features: MessageFeatures | None = None) -> list[dict[str, Any]]:
        """Apply one event; returns its output records (see the module docstring)."""
        try:
            if isinstance(event, TextEvent):
                return self._text(event, features)
            if isinstance(event, LabelEvent):
                return self._label(event)
        except EventError as exc:
            self.stats.reject(exc.reason)
            raise
        raise TypeError(f"a text engine takes TextEvent or LabelEvent, not {type(event)}")

    def _text(self, ev: TextEvent, features: MessageFeatures | None) -> list[dict[str, Any]]:
        check_text(ev.text)
        clf = self.classifier
        if clf is not None:
            clf.check_message(ev.id, ev.label)
        s = self.stats
        s.events += 1
        s.text_events += 1
        out: dict[str, Any] = {"kind": "text", "key": ev.key, "id": ev.id, "ts": ev.ts_ms}
        if self.lm is not None:
            r = self.lm.learn_message(ev.key, ev.ts_ms, ev.text, ev.id)
            for f in LM_FIELDS:
                out[f] = r[f]
        if clf is None:
            return [out]
        if ev.label is None:
            pred = clf.predict_message(ev.key, ev.ts_ms, ev.text, ev.id, features)
            out["probs"], out["label_pred"] = pred["probs"], pred["label_pred"]
            return [out]
        pred, score = clf.learn_message(ev.key, ev.ts_ms, ev.text, ev.id, ev.label, features)
        out["probs"], out["label_pred"] = pred["probs"], pred["label_pred"]
        return [out, score]

    def _label(self, ev: LabelEvent) -> list[dict[str, Any]]:
        if self.classifier is None:
            raise EventError("bad_label", "this text shard hosts no classifier")
        self.classifier.check_label(ev.key, ev.id, ev.label)
        self.stats.events += 1
        self.stats.label_events += 1
        return [self.classifier.learn_label(ev.key, ev.ts_ms, ev.id, ev.label)]

    # -- summaries --------------------------------------------------------------------
    def summary(self) -> dict[str, Any]:
        """Prequential metrics so far: LM bits per character/token, classifier metrics."""
        s = self.stats
        out: dict[str, Any] = {"events": s.events, "rejected": dict(s.rejected)}
        if self.lm is not None:
            ln2 = math.log(2)
            out["lm"] = {
                "messages": s.lm_messages, "tokens": s.lm_tokens, "chars": s.lm_chars,
                "nll_per_token": s.lm_nll_sum / s.lm_tokens if s.lm_tokens else None,
                "bits_per_char": s.lm_nll_sum / s.lm_chars / ln2 if s.lm_chars else None,
                "updates": s.lm_updates, "keys": s.lm_keys, "vocab": s.lm_vocab_size,
            }
        if self.classifier is not None:
            m = self.classifier.metrics.get()
            m.update({"pending": s.clf_pending, "expired": s.clf_labels_expired,
                      "classes": list(self.classifier.classes)})
            out["classifier"] = m
        return out

    # -- persistence ------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume or to generate: format version, config, and for each
        learner its vocabulary, weights, optimizer, RNG, per-key hidden states / pending
        labels, metrics; plus the counters. Tensors and plain types only."""
        return {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "config": self.config.to_dict(),
            "lm": self.lm.state_dict() if self.lm is not None else None,
            "classifier": (self.classifier.state_dict() if self.classifier is not None
                           else None),
            "stats": self.stats.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from :meth:`state_dict`. Raises :class:`CheckpointError` for another
        format version, another set of learners, or another architecture."""
        if not isinstance(state, dict) or state.get("format") != FORMAT:
            raise CheckpointError("not a streamseq text-engine checkpoint")
        if state.get("version") != FORMAT_VERSION:
            raise CheckpointError(f"text checkpoint format version {state.get('version')!r}; "
                                  f"this build reads version {FORMAT_VERSION}")
        for name, mine in (("lm", self.lm), ("classifier", self.classifier)):
            if (state.get(name) is None) != (mine is None):
                have = "has" if state.get(name) is not None else "has no"
                raise CheckpointError(f"the checkpoint {have} {name} but this engine "
                                      f"{'has' if mine is not None else 'has no'} {name}")
        if self.lm is not None:
            self.lm.load_state_dict(state["lm"])
        if self.classifier is not None:
            self.classifier.load_state_dict(state["classifier"])
        self.stats.load_state_dict(state["stats"])

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write :meth:`state_dict` atomically (temporary file, fsync, rename, fsync dir)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        try:
            with open(tmp, "wb") as f:
                torch.save(self.state_dict(), f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        try:
            fd = os.open(path.parent, os.O_RDONLY)
        except OSError:  # pragma: no cover - platforms without directory fds
            return path
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        log.debug("text checkpoint written to %s", path)
        return path

    @staticmethod
    def read_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
        """Load a checkpoint file with ``weights_only=True``; errors as CheckpointError."""
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise CheckpointError(f"no checkpoint at {path}") from None
        except Exception as exc:  # torn file, not a torch file, unsafe content
            raise CheckpointError(f"cannot read checkpoint {path}: {exc}") from exc
        if not isinstance(state, dict) or state.get("format") != FORMAT:
            raise CheckpointError(f"{path} is not a streamseq text-engine checkpoint")
        return state

    def load(self, path: str | os.PathLike[str]) -> None:
        """Restore from a file written by :meth:`save`."""
        self.load_state_dict(self.read_checkpoint(path))

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike[str]) -> TextEngine:
        """A new engine with the checkpoint's own config and state."""
        state = cls.read_checkpoint(path)
        engine = cls(TextEngineConfig.from_dict(state["config"]))
        engine.load_state_dict(state)
        return engine
