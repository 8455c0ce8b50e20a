"""Multinomial Naive Bayes over hashed binary features, learned one label at a time.

``log p(c | m) = log prior(c) + sum over the message's features f of
w(f) * log((n(f, c) + alpha) / (n(c) + alpha * V))`` with ``n(f, c)`` the messages of class
``c`` that held ``f``, ``n(c)`` their total feature count and ``V`` the features seen in any
learned message (river's MultinomialNB on binary features, with an add-one class prior so
that a class configured but not yet seen keeps some probability). Counts live in one numpy
array ``[buckets, classes]``; a prediction is one gather and one weighted sum.

The feature weights ``w(f) >= 0`` (all 1: plain NB) are learned discriminatively, as in
WANBIA (Zaidi et al., "Alleviating naive Bayes attribute independence assumption by
attribute weighting", JMLR 2013), online and in the spirit of NBSVM (Wang and Manning,
"Baselines and bigrams", ACL 2012): before a labelled message is counted, one AdaGrad step on
the expert's own log-loss of that message (as predicted from the counts so far) moves the
weights of the message's features. Evidence that NB counts several times over (overlapping
n-grams, words that always come together) loses weight against evidence it counts once; the
counts themselves stay generative. The loss is taken at a temperature ``T`` (the
log-probability of ``z / T``, ``z`` the NB log-odds): NB summing hundreds of features is so
sure of itself that at ``T = 1`` a message called right teaches the weights next to nothing
and they learn from errors alone; at ``T > 1`` a right call made by a small margin teaches
them too.

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

_G2_START = 1e-8


class HashedNaiveBayes:
    """Online multinomial NB over ``buckets`` hashed features (see the module docstring).

    Parameters
    ----------
    buckets
        Number of feature buckets (the featurizer's ``2**bits``).
    alpha
        Additive smoothing of the feature counts.
    weight_lr
        AdaGrad learning rate of the feature weights (0: they stay 1, plain NB).
    weight_temperature
        Temperature ``T`` of the log-loss the weights learn on (1: the expert's own).
    """

    def __init__(self, buckets: int, alpha: float = 1.0, weight_lr: float = 0.0,
                 weight_temperature: float = 1.0) -> None:
        self.buckets = int(buckets)
        self.alpha = float(alpha)
        self.weight_lr = float(weight_lr)
        self.weight_temperature = float(weight_temperature)
        self.weights = np.ones(self.buckets)
        self.weight_g2 = np.full(self.buckets, _G2_START)  # AdaGrad's sum of squared grads
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

    def _terms(self, n_classes: int) -> None:
        """Cache the class prior and denominator (they change only when learning)."""
        if self._terms_for != n_classes:
            self._grow(n_classes)
            docs = self.class_docs[:n_classes]
            self._prior = np.log((docs + 1.0) / (docs.sum() + n_classes))
            self._denominator = np.log(self.class_feats[:n_classes]
                                       + self.alpha * max(self.seen, 1))
            self._terms_for = n_classes

    def _scores(self, feats: np.ndarray, n_classes: int, temperature: float = 1.0
                ) -> tuple[np.ndarray, np.ndarray]:
        """Normalised log-probabilities ``[n_classes]`` (of the log-odds divided by
        ``temperature``) and the unweighted log-likelihood terms ``[len(feats), n_classes]``
        they sum."""
        self._terms(n_classes)
        terms = self.log_counts[feats, :n_classes] - self._denominator
        z = (self._prior + self.weights[feats] @ terms) / temperature
        z = z - z.max()
        return z - np.log(np.exp(z).sum()), terms

    def log_proba(self, feats: np.ndarray, n_classes: int) -> np.ndarray:
        """Normalised log-probabilities ``[n_classes]`` of a message's features."""
        return self._scores(feats, n_classes)[0]

    def learn(self, feats: np.ndarray, y: int) -> None:
        """Learn one labelled message (``feats`` unique): a step on the weights of its
        features (once a class has been learned), then its counts."""
        if y >= self.counts.shape[1]:
            self._grow(y + 1)
        if self.weight_lr > 0 and len(feats) and self.class_docs.sum() > 0:
            self._learn_weights(feats, y)
        self._terms_for = -1
        total = self.row_total[feats]
        self.seen += int(np.count_nonzero(total == 0))
        self.row_total[feats] = total + 1
        c = self.counts[feats, y] + 1
        self.counts[feats, y] = c
        self.log_counts[feats, y] = np.log(c + self.alpha)
        self.class_docs[y] += 1
        self.class_feats[y] += len(feats)

    def _learn_weights(self, feats: np.ndarray, y: int) -> None:
        """One AdaGrad step on the expert's own log-loss ``-log p_T(y | m)`` at the
        temperature ``T`` over the weights of the message's features, projected onto
        ``w >= 0``."""
        t = self.weight_temperature
        logp, terms = self._scores(feats, self.counts.shape[1], t)
        g = np.exp(logp)
        g[y] -= 1.0
        g = terms @ g / t  # d(-log p_T(y | m)) / d w(feats)
        g2 = self.weight_g2[feats] + g * g
        self.weight_g2[feats] = g2
        self.weights[feats] = np.maximum(self.weights[feats] - self.weight_lr * g / np.sqrt(g2),
                                         0.0)

    def state_dict(self) -> dict[str, Any]:
        """Only the buckets in use (tensors)."""
        rows = np.flatnonzero(self.row_total)
        return {"buckets": self.buckets, "rows": torch.from_numpy(rows.astype(np.int64)),
                "counts": torch.from_numpy(self.counts[rows].copy()),
                "class_docs": torch.from_numpy(self.class_docs.copy()),
                "class_feats": torch.from_numpy(self.class_feats.copy()),
                "weights": torch.from_numpy(self.weights[rows].copy()),
                "weight_g2": torch.from_numpy(self.weight_g2[rows].copy())}

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
        self.weights = np.ones(self.buckets)
        self.weights[rows] = state["weights"].numpy()
        self.weight_g2 = np.full(self.buckets, _G2_START)
        self.weight_g2[rows] = state["weight_g2"].numpy()
        self.seen = int(len(rows))
        self._terms_for = -1
