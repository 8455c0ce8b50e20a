"""Multinomial Naive Bayes over hashed binary features, learned one label at a time.

``log p(c | m) = log prior(c) + sum over the message's features f of
log((n(f, c) + alpha) / (n(c) + alpha * V))`` with ``n(f, c)`` the messages of class ``c``
that held ``f``, ``n(c)`` their total feature count and ``V`` the features seen in any
learned message (river's MultinomialNB on binary features, with an add-one class prior so
that a class configured but not yet seen keeps some probability). Counts live in one numpy
array ``[buckets, classes]``; a prediction is one gather and one sum.

Examples
--------
>>> import numpy as np
>>> nb = HashedNaiveBayes(buckets=16)
>>> nb.learn(np.array([1, 2]), 0); nb.learn(np.array([3]), 1)
>>> lp = nb.log_proba(np.array([1]), n_classes=2)
>>> bool(lp[0] > lp[1]), round(float(np.exp(lp).sum()), 6)
(True, 1.0)
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from streamseq.exceptions import CheckpointError

__all__ = ["HashedNaiveBayes"]


class HashedNaiveBayes:
    """Online multinomial NB over ``buckets`` hashed features (see the module docstring).

    Parameters
    ----------
    buckets
        Number of feature buckets (the featurizer's ``2**bits``).
    alpha
        Additive smoothing of the feature counts.
    """

    def __init__(self, buckets: int, alpha: float = 1.0) -> None:
        self.buckets = int(buckets)
        self.alpha = float(alpha)
        self.counts = np.zeros((self.buckets, 0), dtype=np.int32)
        self.log_counts = np.zeros((self.buckets, 0))  # log(counts + alpha), kept in step
        self.row_total = np.zeros(self.buckets, dtype=np.int32)
        self.class_docs = np.zeros(0, dtype=np.int64)
        self.class_feats = np.zeros(0, dtype=np.int64)
        self.seen = 0  # V: buckets held by at least one learned message
        self._terms_for = -1  # n_classes of the cached prior and denominator
        self._prior = self._denominator = np.zeros(0)

    def _grow(self, n_classes: int) -> None:
        k = n_classes - self.counts.shape[1]
        if k > 0:
            self.counts = np.concatenate(
                [self.counts, np.zeros((self.buckets, k), dtype=np.int32)], axis=1)
            self.log_counts = np.concatenate(
                [self.log_counts, np.full((self.buckets, k), np.log(self.alpha))], axis=1)
            self.class_docs = np.concatenate([self.class_docs, np.zeros(k, dtype=np.int64)])
            self.class_feats = np.concatenate([self.class_feats, np.zeros(k, dtype=np.int64)])

    def log_proba(self, feats: np.ndarray, n_classes: int) -> np.ndarray:
        """Normalised log-probabilities ``[n_classes]`` of a message's features."""
        if self._terms_for != n_classes:  # the per-class terms change only when learning
            self._grow(n_classes)
            docs = self.class_docs[:n_classes]
            self._prior = np.log((docs + 1.0) / (docs.sum() + n_classes))
            self._denominator = np.log(self.class_feats[:n_classes]
                                       + self.alpha * max(self.seen, 1))
            self._terms_for = n_classes
        z = self._prior
        if len(feats):
            z = z + self.log_counts[feats].sum(0)[:n_classes] - len(feats) * self._denominator
        z = z - z.max()
        return z - np.log(np.exp(z).sum())

    def learn(self, feats: np.ndarray, y: int) -> None:
        """Count one labelled message (``feats`` unique)."""
        if y >= self.counts.shape[1]:
            self._grow(y + 1)
        self._terms_for = -1
        total = self.row_total[feats]
        self.seen += int(np.count_nonzero(total == 0))
        self.row_total[feats] = total + 1
        c = self.counts[feats, y] + 1
        self.counts[feats, y] = c
        self.log_counts[feats, y] = np.log(c + self.alpha)
        self.class_docs[y] += 1
        self.class_feats[y] += len(feats)

    def state_dict(self) -> dict[str, Any]:
        """Only the buckets in use (tensors)."""
        rows = np.flatnonzero(self.row_total)
        return {"buckets": self.buckets, "rows": torch.from_numpy(rows.astype(np.int64)),
                "counts": torch.from_numpy(self.counts[rows].copy()),
                "class_docs": torch.from_numpy(self.class_docs.copy()),
                "class_feats": torch.from_numpy(self.class_feats.copy())}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if int(state["buckets"]) != self.buckets:
            raise CheckpointError(f"naive Bayes has {state['buckets']} buckets in the "
                                  f"checkpoint, {self.buckets} here")
        rows = state["rows"].numpy()
        counts = state["counts"].numpy().astype(np.int32)
        self.counts = np.zeros((self.buckets, counts.shape[1]), dtype=np.int32)
        self.counts[rows] = counts
        self.row_total = self.counts.sum(1).astype(np.int32)
        self.log_counts = np.log(self.counts + self.alpha)
        self.class_docs = state["class_docs"].numpy().astype(np.int64).copy()
        self.class_feats = state["class_feats"].numpy().astype(np.int64).copy()
        self.seen = int(len(rows))
        self._terms_for = -1
