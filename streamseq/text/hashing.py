"""Hashed bag-of-features of messages, computed for a whole batch of messages at once.

Words (and word bigrams) and character n-grams are mapped to ``2**bits`` buckets by stable
hashes (CRC-32 of a word's UTF-8 bytes; a polynomial hash of code points for n-grams), never
by Python's per-process salted ``hash``: the buckets of a message are the same in every
process, so a restored shard continues exactly. Each message's buckets are unique (binary
features: a word counts once per message, which suits short texts better than counts).

Examples
--------
>>> f = Featurizer("word", bits=16)
>>> buckets = f.buckets(["Good film, good plot", "bad"])
>>> [len(b) for b in buckets]  # good film , plot + 4 bigrams; bad
[8, 1]
>>> c = Featurizer("char", bits=16, ngrams=(3, 4))
>>> [len(b) for b in c.buckets(["ab", "abc"])]  # " ab", "ab ", " ab "; and 5 for "abc"
[3, 5]
>>> [len(b) for b in c.buckets(["!"])]  # " ! ": shorter than 4
[1]
>>> all(f.buckets(["x y"])[0] == f.buckets(["x y"])[0])
True
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Sequence

import numpy as np

__all__ = ["Featurizer", "FEATURES", "tokenize_words"]

FEATURES = ("word", "char")
_WORD = re.compile(r"\w+(?:'\w+)*|[^\w\s]")
_MIX = np.uint64(0x9E3779B97F4A7C15)
_P = np.uint64(1_000_003)
_MASK64 = (1 << 64) - 1


def tokenize_words(text: str) -> list[str]:
    """Lower-cased words and single punctuation marks (the classifier's tokenizer)."""
    return _WORD.findall(text.lower())


def _finish(h: np.ndarray, bits: int) -> np.ndarray:
    """Mix a 64-bit hash and keep its top ``bits`` bits."""
    h = (h ^ (h >> np.uint64(29))) * _MIX
    return (h >> np.uint64(64 - bits)).astype(np.int64)


class Featurizer:
    """Hashed binary features of messages.

    Parameters
    ----------
    kind
        ``"word"``: lower-cased words and punctuation marks, plus adjacent word pairs when
        ``bigrams``; ``"char"``: character n-grams (``ngrams`` = (shortest, longest)) of the
        lower-cased words joined by single spaces, with a space at each end.
    bits
        Number of buckets is ``2**bits``.
    """

    def __init__(self, kind: str, bits: int = 20, ngrams: tuple[int, int] = (3, 5),
                 bigrams: bool = True) -> None:
        if kind not in FEATURES:
            raise ValueError(f"kind must be one of {FEATURES}, not {kind!r}")
        if not 8 <= bits <= 30:
            raise ValueError("bits must be in [8, 30]")
        if not 1 <= ngrams[0] <= ngrams[1]:
            raise ValueError("ngrams must be 1 <= shortest <= longest")
        self.kind = kind
        self.bits = int(bits)
        self.ngrams = (int(ngrams[0]), int(ngrams[1]))
        self.bigrams = bool(bigrams)

    @property
    def size(self) -> int:
        return 1 << self.bits

    def buckets(self, texts: Sequence[str]) -> list[np.ndarray]:
        """Sorted unique bucket ids (int64) of each message of ``texts``."""
        if not texts:
            return []
        msg, h = self._word_hashes(texts) if self.kind == "word" else self._char_hashes(texts)
        keys = np.sort((msg << self.bits) | _finish(h, self.bits))  # sort-based unique:
        keys = keys[np.concatenate(([True], keys[1:] != keys[:-1]))]  # numpy's hash is slower
        owner = keys >> self.bits
        cuts = np.searchsorted(owner, np.arange(1, len(texts)))
        return [part & (self.size - 1) for part in np.split(keys, cuts)]

    def _word_hashes(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        crc = zlib.crc32
        toks = [[crc(w.encode()) for w in tokenize_words(t)] for t in texts]
        lens = np.fromiter((len(t) for t in toks), dtype=np.int64, count=len(toks))
        flat = np.fromiter((x for t in toks for x in t), dtype=np.uint64, count=int(lens.sum()))
        msg = np.repeat(np.arange(len(texts), dtype=np.int64), lens)
        if not self.bigrams or len(flat) < 2:
            return msg, flat
        same = msg[1:] == msg[:-1]
        pair = (flat[:-1] * _P + flat[1:] + np.uint64(1)) * _MIX
        return (np.concatenate([msg, msg[1:][same]]),
                np.concatenate([flat, pair[same]]))

    def _char_hashes(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        norm = [" " + " ".join(tokenize_words(t)) + " " for t in texts]
        codes = np.frombuffer("".join(norm).encode("utf-32-le"), dtype=np.uint32)
        codes = codes.astype(np.uint64)
        lens = np.fromiter((len(s) for s in norm), dtype=np.int64, count=len(norm))
        msg_of = np.repeat(np.arange(len(texts), dtype=np.int64), lens)
        end_of = np.repeat(np.cumsum(lens), lens)  # one past the message's last position
        pos = np.arange(len(codes), dtype=np.int64)
        msgs, hashes = [], []
        lo, hi = self.ngrams
        h = np.zeros(len(codes), dtype=np.uint64)
        for n in range(1, hi + 1):
            # h[i] = hash of codes[i : i + n]
            shifted = np.zeros(len(codes), dtype=np.uint64)
            m = max(len(codes) - (n - 1), 0)
            shifted[:m] = codes[n - 1:n - 1 + m]
            h = h * _P + shifted + np.uint64(1)
            if n >= lo:
                ok = pos + n <= end_of
                msgs.append(msg_of[ok])
                hashes.append(h[ok] + np.uint64((n * int(_MIX)) & _MASK64))
        return np.concatenate(msgs), np.concatenate(hashes)
