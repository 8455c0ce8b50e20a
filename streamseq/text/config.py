"""Frozen configs of the text learners and of the engine that hosts them.

Each config round-trips through plain dicts (:meth:`to_dict` / ``from_dict``) so it can sit
in a checkpoint. ``ARCH`` names the fields that shape the weights or the vocabulary: a
checkpoint whose values differ there is refused; the other fields (learning rate, TBPTT
lengths, waits) may change between runs.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any, ClassVar

from streamseq.exceptions import CheckpointError, ConfigError
from streamseq.text.modules import CELLS
from streamseq.text.vocab import RESERVED, TOKENIZERS

__all__ = ["LMConfig", "ClassifierConfig", "TextEngineConfig", "POOLS", "EXPERTS"]

POOLS = ("last", "mean", "max", "meanmax")
#: The classifier's experts: Naive Bayes over hashed words and word pairs, over hashed
#: character n-grams, and the recurrent network.
EXPERTS = ("word_nb", "char_nb", "rnn")


class _PlainConfig:
    """to_dict / from_dict / arch checks for the frozen dataclasses below."""

    ARCH: ClassVar[tuple[str, ...]] = ()

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)  # type: ignore[call-overload]
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in out.items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Any:
        names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        unknown = set(d) - names
        if unknown:
            raise ConfigError(f"{cls.__name__}: unknown fields {sorted(unknown)}")
        kw = {k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items()}
        return cls(**kw)

    def arch(self) -> dict[str, Any]:
        d = self.to_dict()
        return {k: d[k] for k in self.ARCH}

    def check_arch(self, saved: dict[str, Any], what: str) -> None:
        """Raise :class:`CheckpointError` if ``saved`` (a ``to_dict``) has another arch."""
        mine = self.arch()
        diff = {k: (saved.get(k), v) for k, v in mine.items() if saved.get(k) != v}
        if diff:
            detail = ", ".join(f"{k}={a!r} in the checkpoint but {b!r} here"
                               for k, (a, b) in sorted(diff.items()))
            raise CheckpointError(f"{what} architecture mismatch: {detail}")


def _check_common(name: str, c: Any) -> None:
    for setting in fields(c):  # NaN passes every "must be > 0" comparison: refuse it first
        value = getattr(c, setting.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{name}.{setting.name} must be a finite number, not {value!r}")
    if c.tokens not in TOKENIZERS:
        raise ConfigError(f"{name}.tokens must be one of {TOKENIZERS}, not {c.tokens!r}")
    if c.cell not in CELLS:
        raise ConfigError(f"{name}.cell must be one of {CELLS}, not {c.cell!r}")
    if c.max_vocab <= len(RESERVED):
        raise ConfigError(f"{name}.max_vocab must exceed {len(RESERVED)}")
    for f in ("embed_dim", "hidden", "layers"):
        if int(getattr(c, f)) < 1:
            raise ConfigError(f"{name}.{f} must be >= 1")
    if not 0.0 <= c.dropout < 1.0:
        raise ConfigError(f"{name}.dropout must be in [0, 1)")
    if c.lr <= 0:
        raise ConfigError(f"{name}.lr must be > 0")


@dataclass(frozen=True)
class LMConfig(_PlainConfig):
    """Online language model.

    Parameters
    ----------
    tokens
        ``"char"`` or ``"word"``.
    max_vocab
        Vocabulary cap (reserved tokens included); the embedding and head have this size.
    lowercase
        Lower-case text before tokenizing.
    cell, embed_dim, hidden, layers, dropout
        Architecture. LSTM is the default (it trained ~4x faster than GRU through torch's
        CPU kernels, which the learner no longer uses; not measured again since).
        The defaults (1x112, 4 windows per step, lr 8e-3) were chosen on the first 80% of
        tiny Shakespeare, on a frontier of bits/char against chars/CPU-s: 1x128 does 0.006
        bits/char better there (0.016 on the last 20%) at 0.88x the speed
        (bench/results/text.md); 1x96, embed 16 or 24, or 5, 6 or 8 windows per step are
        faster and 0.03-0.11 bits/char worse there, k1=k2=96 or 128 0.05-0.11 worse. With
        the learner of issue 16 v3 (messages cut where a window falls due, records reused)
        the defaults give 2.5614 bits/char there (2.5605 before) and 2.3491 on the last 20%
        (2.3449); 8 windows per step with lr 8e-3, 1.2e-2 or 1.6e-2 are 0.09-0.14 worse on
        the first 80%, 6 windows with lr 1e-2 0.11 worse.
    k1, k2
        Truncated BPTT: a window falls due every ``k1`` tokens of a stream, backpropagating
        through its last ``k2`` (``k2 >= k1``).
    batch_windows
        One optimizer step per ``batch_windows`` windows due (of any streams of the shard),
        on their mean loss, in one batch.
    lr, clip
        Adam learning rate; gradient-norm clip (0 disables).
    boundary_token
        Append an end-of-message token to each message (it is predicted and scored too):
        use for streams whose messages do not end in a newline, such as log lines.
    max_keys, key_ttl_ms
        Bound on streams with live state: least recently seen evicted first; a stream idle
        for longer than ``key_ttl_ms`` of event time is evicted.
    seed
        Seeds the initial weights and the dropout masks.

    Examples
    --------
    >>> c = LMConfig(hidden=32)
    >>> LMConfig.from_dict(c.to_dict()) == c
    True
    >>> LMConfig(k1=8, k2=4)
    Traceback (most recent call last):
    ...
    streamseq.exceptions.ConfigError: lm: need 1 <= k1 <= k2, got k1=8 k2=4
    """

    tokens: str = "char"
    max_vocab: int = 256
    lowercase: bool = False
    cell: str = "lstm"
    embed_dim: int = 32
    hidden: int = 112
    layers: int = 1
    dropout: float = 0.0
    k1: int = 64
    k2: int = 64
    batch_windows: int = 4
    lr: float = 8e-3
    clip: float = 1.0
    boundary_token: bool = False
    max_keys: int = 10_000
    key_ttl_ms: int | None = None
    seed: int = 0

    ARCH: ClassVar[tuple[str, ...]] = ("tokens", "max_vocab", "lowercase", "cell", "embed_dim",
                                       "hidden", "layers", "boundary_token")

    def __post_init__(self) -> None:
        _check_common("lm", self)
        if not 1 <= self.k1 <= self.k2:
            raise ConfigError(f"lm: need 1 <= k1 <= k2, got k1={self.k1} k2={self.k2}")
        if self.max_keys < 1:
            raise ConfigError("lm.max_keys must be >= 1")
        if self.batch_windows < 1:
            raise ConfigError("lm.batch_windows must be >= 1")


@dataclass(frozen=True)
class ClassifierConfig(_PlainConfig):
    """Online message classifier: experts pooled by weights learned online.

    Parameters
    ----------
    experts
        Which experts predict (see :data:`EXPERTS`); their class probabilities are combined
        by a log-linear pool whose weights are learned from the labels
        (:mod:`streamseq.text.pooling`). The default, Naive Bayes over words and word pairs
        and over character n-grams, is the fast one; ``"rnn"`` adds the recurrent network
        (the settings below), one optimizer step per label.
    nb_alpha, nb_bits, char_ngrams
        Naive Bayes smoothing; ``2**nb_bits`` hashed feature buckets per NB expert;
        shortest and longest character n-gram.
    nb_weight_lr
        AdaGrad learning rate of the NB experts' feature weights, learned discriminatively
        (:mod:`streamseq.text.naive_bayes`); 0 keeps them at 1 (plain NB).
    nb_weight_temperature
        Temperature of the log-loss those weights learn on (1: the expert's own; above 1
        a message called right by a small margin teaches them too).
    pool_lr
        AdaGrad learning rate of the pool's weights.
    tokens, max_vocab, lowercase
        Tokenizer and vocabulary cap (words by default).
    labels
        The classes, if known in advance; otherwise classes are learned online (up to
        ``max_classes``) and predictions cover the classes seen so far.
    cell, bidirectional, embed_dim, hidden, layers, pool, dropout
        Architecture; ``pool`` turns the per-token outputs into one vector (``last``: final
        states of both directions; ``mean``, ``max``, ``meanmax``).
    max_len
        Tokens read per message (the first ``max_len``).
    lr, clip, weight_decay
        AdamW settings of the dense weights; gradient-norm clip.
    embed_lr
        Learning rate of the (lazy, sparse) Adam on the word embeddings. Higher than ``lr``:
        most words are seen only a few times in a stream, and each sighting must count.
    update_every
        The recurrent expert takes one optimizer step per ``update_every`` labels learned
        (a point of the stream, not of the polls), on those messages in one padded batch.
    replay, replay_buffer
        Each step also replays ``replay`` earlier labelled messages per new one, drawn
        (seeded) from the last ``replay_buffer`` ones: several passes' worth of learning from
        a single pass, still using only labels already seen.
    label_wait_messages, label_wait_ms
        Bounded wait for late labels: a message is dropped (and counted) when this many
        later text messages arrived, or this much event time passed, without its label.
    window
        Recent window of the prequential metrics (scored labels).
    seed
        Seeds the initial weights, the dropout masks and the replay draws.

    Examples
    --------
    >>> ClassifierConfig(labels=("neg", "pos")).to_dict()["labels"]
    ['neg', 'pos']
    """

    experts: tuple[str, ...] = ("word_nb", "char_nb")
    nb_alpha: float = 1.0
    nb_weight_lr: float = 0.3
    nb_weight_temperature: float = 1.5
    nb_bits: int = 20
    char_ngrams: tuple[int, int] = (2, 5)
    pool_lr: float = 0.01
    tokens: str = "word"
    max_vocab: int = 30_000
    lowercase: bool = True
    labels: tuple[str, ...] | None = None
    max_classes: int = 16
    cell: str = "lstm"
    bidirectional: bool = True
    embed_dim: int = 64
    hidden: int = 64
    layers: int = 1
    pool: str = "meanmax"
    dropout: float = 0.2
    max_len: int = 256
    lr: float = 3e-3
    embed_lr: float = 3e-2
    clip: float = 1.0
    weight_decay: float = 0.0
    update_every: int = 8
    replay: int = 4
    replay_buffer: int = 1000
    label_wait_messages: int = 10_000
    label_wait_ms: int | None = None
    window: int = 500
    seed: int = 0

    ARCH: ClassVar[tuple[str, ...]] = ("experts", "nb_bits", "char_ngrams", "tokens",
                                       "max_vocab", "lowercase", "labels", "max_classes",
                                       "cell", "bidirectional", "embed_dim", "hidden",
                                       "layers", "pool")

    def __post_init__(self) -> None:
        _check_common("classifier", self)
        if not self.experts or set(self.experts) - set(EXPERTS) or len(
                set(self.experts)) != len(self.experts):
            raise ConfigError(f"classifier.experts must be distinct names from {EXPERTS}, "
                              f"not {self.experts!r}")
        if not 8 <= self.nb_bits <= 26:
            raise ConfigError("classifier.nb_bits must be in [8, 26]")
        if len(self.char_ngrams) != 2 or not 1 <= self.char_ngrams[0] <= self.char_ngrams[1]:
            raise ConfigError("classifier.char_ngrams must be (shortest, longest), 1 <= both")
        if self.nb_alpha <= 0 or self.pool_lr <= 0:
            raise ConfigError("classifier.nb_alpha and pool_lr must be > 0")
        if self.nb_weight_lr < 0:
            raise ConfigError("classifier.nb_weight_lr must be >= 0")
        if self.nb_weight_temperature <= 0:
            raise ConfigError("classifier.nb_weight_temperature must be > 0")
        if self.pool not in POOLS:
            raise ConfigError(f"classifier.pool must be one of {POOLS}, not {self.pool!r}")
        if self.labels is not None:
            if len(set(self.labels)) != len(self.labels) or len(self.labels) < 2:
                raise ConfigError("classifier.labels must be >= 2 distinct labels")
            if len(self.labels) > self.max_classes:
                object.__setattr__(self, "max_classes", len(self.labels))
        if self.max_classes < 2:
            raise ConfigError("classifier.max_classes must be >= 2")
        if self.max_len < 1 or self.window < 1 or self.label_wait_messages < 0:
            raise ConfigError("classifier: max_len, window >= 1 and label_wait_messages >= 0")
        if self.update_every < 1:
            raise ConfigError("classifier.update_every must be >= 1")
        if self.replay < 0 or self.replay_buffer < 1:
            raise ConfigError("classifier: replay >= 0 and replay_buffer >= 1")


@dataclass(frozen=True)
class TextEngineConfig:
    """What a text shard hosts: a language model, a classifier, or both (``None`` = off).

    Examples
    --------
    >>> c = TextEngineConfig(lm=LMConfig(hidden=16), classifier=ClassifierConfig())
    >>> TextEngineConfig.from_dict(c.to_dict()) == c
    True
    """

    lm: LMConfig | None = field(default_factory=LMConfig)
    classifier: ClassifierConfig | None = None

    def __post_init__(self) -> None:
        if self.lm is None and self.classifier is None:
            raise ConfigError("a text engine needs a language model, a classifier or both")

    def to_dict(self) -> dict[str, Any]:
        return {"lm": None if self.lm is None else self.lm.to_dict(),
                "classifier": None if self.classifier is None else self.classifier.to_dict()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TextEngineConfig:
        lm = d.get("lm")
        clf = d.get("classifier")
        return cls(lm=None if lm is None else LMConfig.from_dict(lm),
                   classifier=None if clf is None else ClassifierConfig.from_dict(clf))
