"""An online vocabulary: tokens get ids the first time they are seen, up to a cap.

The ids of the reserved tokens are fixed (``<unk>`` = 0, ``<bos>`` = 1, ``<eom>`` = 2); a
token met after the cap is reached maps to ``<unk>``. Ids are assigned in stream order, so
the vocabulary is a function of the stream, and it is saved in checkpoints as a plain list
of strings.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from streamseq.exceptions import CheckpointError, ConfigError

__all__ = ["Vocabulary", "TOKENIZERS", "UNK", "BOS", "EOM", "RESERVED"]

UNK, BOS, EOM = 0, 1, 2
RESERVED = ("<unk>", "<bos>", "<eom>")
TOKENIZERS = ("char", "word")
_WORD = re.compile(r"\w+(?:'\w+)*|[^\w\s]")


class Vocabulary:
    """Token <-> id mapping that grows online.

    Parameters
    ----------
    tokens
        ``"char"`` (every character is a token, whitespace included) or ``"word"`` (words
        and single punctuation marks; whitespace is dropped).
    max_size
        Cap on the number of ids, reserved tokens included.
    lowercase
        Lower-case text before splitting.

    Examples
    --------
    >>> v = Vocabulary("char", max_size=6)
    >>> v.encode("abba"), len(v)
    ([3, 4, 4, 3], 5)
    >>> v.encode("abc!"), v.full  # 'c' takes the last id, '!' is unknown
    ([3, 4, 5, 0], True)
    >>> v.decode([3, 5, 0])
    'ac<unk>'
    >>> w = Vocabulary("word", lowercase=True)
    >>> w.tokenize("It's GOOD, isn't it?")
    ["it's", 'good', ',', "isn't", 'it', '?']
    """

    def __init__(self, tokens: str = "char", max_size: int = 256, lowercase: bool = False
                 ) -> None:
        if tokens not in TOKENIZERS:
            raise ConfigError(f"tokens must be one of {TOKENIZERS}, not {tokens!r}")
        if max_size <= len(RESERVED):
            raise ConfigError(f"max_size must exceed the {len(RESERVED)} reserved tokens")
        self.mode = tokens
        self.max_size = int(max_size)
        self.lowercase = bool(lowercase)
        self.itos: list[str] = list(RESERVED)
        self.stoi: dict[str, int] = {t: i for i, t in enumerate(self.itos)}

    def __len__(self) -> int:
        return len(self.itos)

    @property
    def full(self) -> bool:
        """True once no new token can get an id."""
        return len(self.itos) >= self.max_size

    def tokenize(self, text: str) -> list[str]:
        """Split ``text`` into tokens (no ids assigned)."""
        if self.lowercase:
            text = text.lower()
        return list(text) if self.mode == "char" else _WORD.findall(text)

    def encode(self, text: str, grow: bool = True) -> list[int]:
        """Ids of the tokens of ``text``; new tokens get ids while ``grow`` and not full."""
        stoi = self.stoi
        out: list[int] = []
        append = out.append
        for tok in self.tokenize(text):
            i = stoi.get(tok)
            if i is None:
                if grow and len(self.itos) < self.max_size:
                    i = len(self.itos)
                    self.itos.append(tok)
                    stoi[tok] = i
                else:
                    i = UNK
            append(i)
        return out

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ``ids``: characters joined, or words joined by single spaces."""
        toks = [self.itos[i] for i in ids]
        return "".join(toks) if self.mode == "char" else " ".join(toks)

    def regular_ids(self) -> range:
        """Ids of the tokens learned from the stream (the reserved ones excluded)."""
        return range(len(RESERVED), len(self.itos))

    # -- persistence ------------------------------------------------------------------
    def state_dict(self) -> dict[str, object]:
        """Plain types only (safe for ``torch.load(weights_only=True)``)."""
        return {"tokens": self.mode, "max_size": self.max_size, "lowercase": self.lowercase,
                "itos": list(self.itos)}

    def load_state_dict(self, state: dict[str, object]) -> None:
        """Restore from :meth:`state_dict`; the tokenizer settings must match."""
        for name, mine in (("tokens", self.mode), ("max_size", self.max_size),
                           ("lowercase", self.lowercase)):
            if state.get(name) != mine:
                raise CheckpointError(
                    f"vocabulary {name} is {state.get(name)!r} in the checkpoint, {mine!r} here")
        itos = state.get("itos")
        if not isinstance(itos, Sequence) or list(itos[: len(RESERVED)]) != list(RESERVED):
            raise CheckpointError("vocabulary in the checkpoint is malformed")
        if len(itos) > self.max_size:
            raise CheckpointError("vocabulary in the checkpoint exceeds its cap")
        self.itos = [str(t) for t in itos]
        self.stoi = {t: i for i, t in enumerate(self.itos)}
