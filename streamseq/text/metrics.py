"""Prequential classification metrics: accuracy, macro F1 and log-loss, since the start and
over a recent window, from predictions recorded before their labels were learned.

The state is plain lists and dicts (it is part of the checkpoint).
"""

from __future__ import annotations

import math
from collections import Counter, deque
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["PrequentialClassification", "macro_f1", "macro_f1_counts", "argmax_label",
           "LOG_LOSS_EPS"]

#: Probabilities are clipped to [eps, 1 - eps] for the log-loss (as river does).
LOG_LOSS_EPS = 1e-15


def macro_f1(pairs: Iterable[tuple[str, str | None]]) -> float:
    """Unweighted mean over classes (true or predicted) of F1 = 2TP / (2TP + FP + FN).

    Examples
    --------
    >>> macro_f1([("a", "a"), ("a", "b"), ("b", "b"), ("b", "b")])
    0.7333333333333334
    >>> macro_f1([])
    0.0
    """
    return macro_f1_counts(Counter(pairs))


def macro_f1_counts(confusion: Mapping[tuple[str, str | None], int]) -> float:
    """:func:`macro_f1` from ``(true, predicted) -> count``."""
    tp: Counter[str] = Counter()
    fp: Counter[str] = Counter()
    fn: Counter[str] = Counter()
    for (y, p), c in confusion.items():
        if p == y:
            tp[y] += c
        else:
            fn[y] += c
            if p is not None:
                fp[p] += c
    classes = set(tp) | set(fp) | set(fn)
    if not classes:
        return 0.0
    return sum(2 * tp[c] / (2 * tp[c] + fp[c] + fn[c]) for c in classes) / len(classes)


def argmax_label(probs: Mapping[str, float]) -> str | None:
    """The most probable label (the first one on ties), ``None`` if there is none."""
    best, best_p = None, -1.0
    for label, p in probs.items():
        if p > best_p:
            best, best_p = label, p
    return best


class PrequentialClassification:
    """Running classification metrics, overall and over the last ``window`` labels.

    Examples
    --------
    >>> m = PrequentialClassification(window=2)
    >>> for y, probs in [("a", {"a": .9, "b": .1}), ("b", {"a": .6, "b": .4}),
    ...                  ("b", {"a": .2, "b": .8})]:
    ...     _ = m.update(y, probs)
    >>> r = m.get()
    >>> r["n"], round(r["accuracy"], 3), r["window"]["n"], r["window"]["accuracy"]
    (3, 0.667, 2, 0.5)
    """

    def __init__(self, window: int = 500) -> None:
        self.window = int(window)
        self.n = 0
        self.correct = 0
        self.loss_sum = 0.0
        self.confusion: Counter[tuple[str, str | None]] = Counter()
        self.recent: deque[tuple[str, str | None, float]] = deque(maxlen=self.window)

    def update(self, y_true: str, probs: Mapping[str, float]) -> tuple[str | None, float]:
        """Score one prediction against its label; returns ``(predicted, log_loss)``."""
        pred = argmax_label(probs)
        p = min(max(float(probs.get(y_true, 0.0)), LOG_LOSS_EPS), 1.0 - LOG_LOSS_EPS)
        loss = -math.log(p)
        self.n += 1
        self.correct += pred == y_true
        self.loss_sum += loss
        self.confusion[(y_true, pred)] += 1
        self.recent.append((y_true, pred, loss))
        return pred, loss

    def get(self) -> dict[str, Any]:
        """``{"n", "accuracy", "macro_f1", "log_loss", "window": {same over the window}}``."""
        n, w = self.n, len(self.recent)
        return {
            "n": n,
            "accuracy": self.correct / n if n else 0.0,
            "macro_f1": macro_f1_counts(self.confusion),
            "log_loss": self.loss_sum / n if n else 0.0,
            "window": {
                "n": w,
                "accuracy": sum(y == p for y, p, _ in self.recent) / w if w else 0.0,
                "macro_f1": macro_f1((y, p) for y, p, _ in self.recent),
                "log_loss": sum(x for _, _, x in self.recent) / w if w else 0.0,
            },
        }

    def state_dict(self) -> dict[str, Any]:
        return {
            "window": self.window, "n": self.n, "correct": self.correct,
            "loss_sum": self.loss_sum,
            "confusion": [[y, p, c] for (y, p), c in self.confusion.items()],
            "recent": [[y, p, x] for y, p, x in self.recent],
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.n = int(state["n"])
        self.correct = int(state["correct"])
        self.loss_sum = float(state["loss_sum"])
        self.confusion = Counter({(y, p): int(c) for y, p, c in state["confusion"]})
        self.recent = deque(((y, p, float(x)) for y, p, x in state["recent"]),
                            maxlen=self.window)
