"""Online character n-gram baselines for the language model: predict, then learn.

Both models spread probability over an open alphabet: the characters seen so far plus one
bucket for "a character never seen before", so their log-loss is honest from the first
character on. Each keeps its context per stream key, like the RNN.
"""

from __future__ import annotations

import math
from collections import defaultdict

__all__ = ["UnigramCharModel", "BigramCharModel"]


class UnigramCharModel:
    """Laplace (add-one) unigram over the characters seen so far, plus an unseen bucket.

    Examples
    --------
    >>> m = UnigramCharModel()
    >>> round(m.learn_text("k", "aab"), 3)  # -log(1) - log(2/3) - log(1/4)
    1.792
    """

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.total = 0

    def learn_text(self, key: str, text: str) -> float:
        """Score each character (predict), then count it (learn); returns the summed NLL."""
        nll = 0.0
        counts = self.counts
        for ch in text:
            v = len(counts)
            n = counts.get(ch, 0)
            nll -= math.log((n + 1) / (self.total + v + 1))
            counts[ch] = n + 1
            self.total += 1
        return nll


class BigramCharModel:
    """Character bigram with interpolated absolute discounting and a Kneser-Ney
    continuation unigram (itself add-one smoothed over seen characters + an unseen bucket).

    ``p(c | a) = max(n(a,c) - d, 0) / n(a) + d * T(a) / n(a) * p_cont(c)``, where ``T(a)`` is
    the number of distinct successors of ``a``; ``p_cont(c) = (N1+(., c) + 1) /
    (N1+(., .) + V + 1)``. With ``smoothing="laplace"``: ``(n(a,c) + 1) / (n(a) + V + 1)``.

    Examples
    --------
    >>> m = BigramCharModel()
    >>> first = m.learn_text("k", "abababab")
    >>> later = m.learn_text("k", "abababab")
    >>> later < first / 4
    True
    """

    def __init__(self, discount: float = 0.75, smoothing: str = "kn") -> None:
        if smoothing not in ("kn", "laplace"):
            raise ValueError("smoothing must be 'kn' or 'laplace'")
        self.d = discount
        self.smoothing = smoothing
        self.pair: dict[str, dict[str, int]] = defaultdict(dict)  # a -> c -> n(a, c)
        self.ctx: dict[str, int] = defaultdict(int)  # n(a)
        self.cont: dict[str, int] = defaultdict(int)  # N1+(., c)
        self.types = 0  # N1+(., .)
        self.last: dict[str, str | None] = {}

    def learn_text(self, key: str, text: str) -> float:
        """Score each character given the previous one of the same key, then learn it."""
        nll = 0.0
        prev = self.last.get(key)
        pair, ctx, cont = self.pair, self.ctx, self.cont
        d = self.d
        for ch in text:
            v = len(cont)
            if self.smoothing == "laplace":
                n_a = n_ac = 0
                if prev is not None:
                    n_a, n_ac = ctx[prev], pair[prev].get(ch, 0)
                p = (n_ac + 1) / (n_a + v + 1)
            else:
                p_cont = (cont.get(ch, 0) + 1) / (self.types + v + 1)
                n_a = ctx[prev] if prev is not None else 0
                if prev is not None and n_a:
                    succ = pair[prev]
                    p = (max(succ.get(ch, 0) - d, 0.0) + d * len(succ) * p_cont) / n_a
                else:
                    p = p_cont
            nll -= math.log(p)
            if prev is not None:
                succ = pair[prev]
                n = succ.get(ch, 0)
                if n == 0:
                    cont[ch] += 1
                    self.types += 1
                succ[ch] = n + 1
                ctx[prev] += 1
            elif ch not in cont:
                cont[ch] = 0  # seen (as a first character) but no predecessor yet
            prev = ch
        self.last[key] = prev
        return nll
