"""Online message classification: predict when a message arrives, learn when its label does.

Several experts predict each message: Naive Bayes over hashed words and word pairs, Naive
Bayes over hashed character n-grams (:mod:`streamseq.text.naive_bayes`, features hashed for a
whole batch of messages at once by :mod:`streamseq.text.hashing`) and, if configured, a
recurrent network (embedding -> (bi)directional GRU/LSTM -> pooling -> dropout -> linear
head). Their class probabilities are combined by a log-linear pool whose weights are learned
from the labels (:mod:`streamseq.text.pooling`). The prediction (class probabilities over
the classes known so far) is made and recorded when the message arrives. Its label comes with the message or later in a ``label`` event matched by id; the
message waits for it a bounded time (``label_wait_messages`` later messages or
``label_wait_ms`` of event time), then is dropped and counted. When the label arrives the
recorded prediction is scored (prequential accuracy, macro F1, log-loss) and only then does
the model learn the message.
"""

from __future__ import annotations

import copy
import logging
from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from streamseq.events.errors import EventError
from streamseq.exceptions import CheckpointError
from streamseq.models.seeding import seeded_init
from streamseq.text.config import ClassifierConfig
from streamseq.text.hashing import Featurizer
from streamseq.text.metrics import PrequentialClassification
from streamseq.text.modules import RecurrentStack, guarded_step, seeded_dropout
from streamseq.text.naive_bayes import HashedNaiveBayes
from streamseq.text.pooling import LogLinearPool
from streamseq.text.stats import TextStats
from streamseq.text.vocab import Vocabulary

__all__ = ["MessageClassifierNet", "OnlineTextClassifier", "RecurrentExpert", "MessageFeatures"]

log = logging.getLogger(__name__)


class MessageClassifierNet(nn.Module):
    """Embedding -> (bi)directional stacked GRU/LSTM -> pooling -> dropout -> linear head.

    Examples
    --------
    >>> net = MessageClassifierNet(100, 3, embed_dim=8, hidden=6, pool="meanmax")
    >>> x = torch.tensor([[4, 5, 6, 0], [7, 8, 0, 0]])
    >>> tuple(net(x, torch.tensor([4, 2])).shape)
    (2, 3)
    """

    def __init__(self, vocab_size: int, n_classes: int, embed_dim: int = 64,
                 hidden: int = 64, layers: int = 1, cell: str = "gru",
                 bidirectional: bool = True, pool: str = "meanmax", dropout: float = 0.2
                 ) -> None:
        super().__init__()
        self.pool = pool
        self.dropout = dropout
        self.embed = nn.Embedding(vocab_size, embed_dim, sparse=True)
        self.rnn = RecurrentStack(cell, embed_dim, hidden, layers, bidirectional, dropout)
        width = self.rnn.output_size * (2 if pool == "meanmax" else 1)
        self.head = nn.Linear(width, n_classes)

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor | None = None,
                generator: torch.Generator | None = None) -> torch.Tensor:
        """Class logits ``[batch, classes]`` of ``tokens [batch, time]`` (left-aligned,
        ``lengths`` per row; ``None`` = all rows full length)."""
        b, t = tokens.shape
        x = seeded_dropout(self.embed(tokens), self.dropout, generator, self.training)
        out, state = self.rnn(x, None, lengths if b > 1 else None, generator)
        if lengths is None or b == 1:
            lengths = torch.full((b,), t, dtype=torch.int64)
        mask = (torch.arange(t)[None, :] < lengths[:, None]).unsqueeze(-1)
        parts = []
        if self.pool == "last":
            d = self.rnn.directions
            h = state[-d:, :, : self.rnn.hidden]  # final h of each direction, top layer
            parts.append(h.transpose(0, 1).reshape(b, -1))
        if self.pool in ("mean", "meanmax"):
            parts.append((out * mask).sum(1) / lengths[:, None].to(out.dtype))
        if self.pool in ("max", "meanmax"):
            parts.append(out.masked_fill(~mask, float("-inf")).amax(1))
        z = torch.cat(parts, dim=-1)
        return self.head(seeded_dropout(z, self.dropout, generator, self.training))


@dataclass
class MessageFeatures:
    """What the experts read of one message: hashed buckets per NB expert, token ids for
    the recurrent network (empty without it)."""

    buckets: list[np.ndarray]
    ids: list[int]


@dataclass
class _Pending:
    key: str
    ts_ms: int
    seq: int  # text-message sequence number in the shard
    features: MessageFeatures
    logp: np.ndarray  # [experts, classes known when predicted]: each expert's log-probs
    probs: list[float]  # pooled, over the classes known when predicted


class RecurrentExpert:
    """The recurrent network as an expert: predicts each message as it arrives (weights
    fixed between update points), learns in one padded batch per ``update_every`` labels
    (plus ``replay`` earlier labelled messages per label)."""

    def __init__(self, c: ClassifierConfig, stats: TextStats) -> None:
        self.config = c
        self.stats = stats
        self.vocab = Vocabulary(c.tokens, c.max_vocab, c.lowercase)
        with seeded_init(c.seed):
            self.model = MessageClassifierNet(c.max_vocab, c.max_classes, c.embed_dim, c.hidden,
                                              c.layers, c.cell, c.bidirectional, c.pool,
                                              c.dropout)
        self.model.eval()
        self.params = list(self.model.parameters())
        dense = [p for n, p in self.model.named_parameters() if not n.startswith("embed.")]
        # AdamW on the dense weights; lazy (sparse) Adam on the embedding rows of the message
        self.optimizer = torch.optim.AdamW(dense, lr=c.lr, weight_decay=c.weight_decay)
        self.sparse_optimizer = torch.optim.SparseAdam(list(self.model.embed.parameters()),
                                                       lr=c.embed_lr)
        self.generator = torch.Generator().manual_seed(c.seed + 1)
        self.replay: deque[tuple[list[int], int]] = deque(maxlen=c.replay_buffer)
        self.batch: list[tuple[list[int], int]] = []  # labelled since the last step

    def encode(self, text: str) -> list[int]:
        return self.vocab.encode(text)[: self.config.max_len] or [0]

    def log_proba(self, ids: list[int], n_classes: int) -> np.ndarray:
        with torch.inference_mode():
            logits = self.model(torch.tensor([ids]))[0, :n_classes]
            return torch.log_softmax(logits.double(), -1).numpy()

    def learn(self, ids: list[int], y: int, n_classes: int) -> None:
        """Queue a labelled message; every ``update_every`` of them (an update point of the
        stream), one optimizer step on them plus ``replay`` earlier ones per message."""
        self.batch.append((ids, y))
        if len(self.batch) >= self.config.update_every:
            self._step(n_classes)

    def _step(self, n_classes: int) -> None:
        batch = list(self.batch)
        r = self.config.replay * len(batch)
        if r and self.replay:
            picks = torch.randint(len(self.replay), (r,), generator=self.generator).tolist()
            batch.extend(self.replay[i] for i in picks)
        self.replay.extend(self.batch)
        self.batch = []
        lengths = torch.tensor([len(x) for x, _ in batch])
        x = torch.zeros(len(batch), int(lengths.max()), dtype=torch.int64)
        for i, (seq, _) in enumerate(batch):
            x[i, : len(seq)] = torch.tensor(seq)
        target = torch.tensor([t for _, t in batch])
        self.model.train()
        try:
            logits = self.model(x, lengths, self.generator)[:, :n_classes]
            loss = F.cross_entropy(logits, target)
            applied, loss_v, norm = guarded_step(
                self.params, [self.optimizer, self.sparse_optimizer], loss, self.config.clip)
        finally:
            self.model.eval()
        s = self.stats
        if not applied:
            s.clf_updates_skipped += 1
            log.warning("classifier step skipped: loss %s, grad norm %s", loss_v, norm)
        s.clf_last_loss, s.clf_last_grad_norm = loss_v, norm

    def state_dict(self) -> dict[str, Any]:
        return {
            "vocab": self.vocab.state_dict(),
            "model": {k: v.detach().clone() for k, v in self.model.state_dict().items()},
            "optimizer": copy.deepcopy(self.optimizer.state_dict()),
            "sparse_optimizer": copy.deepcopy(self.sparse_optimizer.state_dict()),
            "generator": self.generator.get_state(),
            "replay": [[list(x), y] for x, y in self.replay],
            "batch": [[list(x), y] for x, y in self.batch],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        c = self.config
        self.vocab.load_state_dict(state["vocab"])
        try:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.sparse_optimizer.load_state_dict(state["sparse_optimizer"])
        except (RuntimeError, ValueError, KeyError) as exc:
            raise CheckpointError(f"classifier weights do not fit: {exc}") from exc
        for group in self.optimizer.param_groups:
            group["lr"] = c.lr
            group["weight_decay"] = c.weight_decay
        for group in self.sparse_optimizer.param_groups:
            group["lr"] = c.embed_lr
        self.generator.set_state(state["generator"])
        self.replay = deque(((list(x), int(y)) for x, y in state["replay"]),
                            maxlen=c.replay_buffer)
        self.batch = [(list(x), int(y)) for x, y in state["batch"]]


class OnlineTextClassifier:
    """Message classifier learned online from labels that may arrive late.

    Parameters
    ----------
    config
        Experts, architecture, learning and waiting settings.
    stats
        Counters to update (a fresh :class:`TextStats` if omitted).

    Examples
    --------
    >>> clf = OnlineTextClassifier(ClassifierConfig())
    >>> out = clf.predict_message("r", 0, "great film", "m1")
    >>> out["probs"], out["label_pred"]  # no class seen yet
    ({}, None)
    >>> clf.learn_label("r", 5, "m1", "pos")["label"]
    'pos'
    >>> clf.predict_message("r", 9, "bad film", "m2")["probs"]
    {'pos': 1.0}
    >>> clf.learn_label("r", 9, "nope", "pos")
    Traceback (most recent call last):
    ...
    streamseq.events.errors.EventError: bad_label: no message with id 'nope' is waiting for a label
    """

    def __init__(self, config: ClassifierConfig | None = None,
                 stats: TextStats | None = None) -> None:
        self.config = c = config or ClassifierConfig()
        self.stats = stats if stats is not None else TextStats()
        self.featurizers = [Featurizer("word" if name == "word_nb" else "char", c.nb_bits,
                                       c.char_ngrams) for name in c.experts if name != "rnn"]
        self.nb = [HashedNaiveBayes(f.size, c.nb_alpha, c.nb_weight_lr, c.nb_weight_temperature)
                   for f in self.featurizers]
        self.rnn = RecurrentExpert(c, self.stats) if "rnn" in c.experts else None
        # NB experts enter the pool as log-likelihoods per feature (about 0.1 apart between
        # classes): weights summing to 10 start the pooled log-odds on a scale of 1; the
        # recurrent expert (log-probabilities, poor at first) starts at 0 and earns its weight
        n_nb = len(self.nb)
        initial = [10.0 / n_nb if name != "rnn" else 0.0 for name in c.experts] if n_nb else None
        self.pool = LogLinearPool(len(c.experts), c.max_classes, c.pool_lr, scale=1.0,
                                  initial=initial)
        self.classes: list[str] = list(c.labels) if c.labels else []
        self.pending: OrderedDict[str, _Pending] = OrderedDict()
        self.metrics = PrequentialClassification(c.window)
        self.seq = 0

    # -- validation (no state change) -------------------------------------------------
    def check_message(self, msg_id: str | None, label: str | None) -> None:
        """Raise :class:`EventError` if a text message cannot be accepted as it is."""
        if msg_id is not None and msg_id in self.pending:
            raise EventError("duplicate", f"message id {msg_id!r} is already waiting for a label")
        if label is not None:
            self._check_class(label)

    def check_label(self, key: str, msg_id: str, label: str) -> None:
        """Raise ``bad_label`` unless a message ``msg_id`` of ``key`` waits for a label."""
        p = self.pending.get(msg_id)
        if p is None:
            raise EventError("bad_label", f"no message with id {msg_id!r} is waiting for a label")
        if p.key != key:
            raise EventError("bad_label", f"message {msg_id!r} belongs to key {p.key!r}")
        self._check_class(label)

    def _check_class(self, label: str) -> None:
        if label in self.classes:
            return
        if self.config.labels is not None:
            raise EventError("bad_label", f"label {label!r} is not one of {self.config.labels}")
        if len(self.classes) >= self.config.max_classes:
            raise EventError("bad_label", f"label {label!r} would exceed "
                             f"{self.config.max_classes} classes")

    # -- the stream -------------------------------------------------------------------
    def featurize(self, texts: Sequence[str]) -> list[MessageFeatures]:
        """The experts' view of a batch of messages (hashing vectorised over the batch; a
        pure function of each text, so batching changes nothing)."""
        per_expert = [f.buckets(texts) for f in self.featurizers]
        return [MessageFeatures([b[i] for b in per_expert], [])
                for i in range(len(texts))]

    def predict_message(self, key: str, ts_ms: int, text: str, msg_id: str | None = None,
                        features: MessageFeatures | None = None) -> dict[str, Any]:
        """Predict the message's class probabilities and, if it has an id, keep it waiting
        for its label. Returns ``{"kind": "classification", "key", "id", "ts", "probs",
        "label_pred"}``. ``features`` (from :meth:`featurize`) saves hashing it again."""
        self.seq += 1
        feats = features if features is not None else self.featurize([text])[0]
        if self.rnn is not None:
            feats.ids = self.rnn.encode(text)
        n = len(self.classes)
        probs: list[float] = []
        logp = np.zeros((len(self.config.experts), n))
        if n:
            rows = [nb.log_proba(b, n) for nb, b in zip(self.nb, feats.buckets, strict=True)]
            if self.rnn is not None:
                rows.append(self.rnn.log_proba(feats.ids, n))
            logp = self._pool_inputs(np.stack(rows), feats)
            probs = self.pool.proba(logp).tolist()
        s = self.stats
        s.clf_predictions += 1
        s.clf_vocab_size = int(sum(nb.seen for nb in self.nb)) + (
            len(self.rnn.vocab) if self.rnn is not None else 0)
        if msg_id is not None:
            self.pending[msg_id] = _Pending(key, ts_ms, self.seq, feats, logp, probs)
        self._expire(ts_ms)
        named = dict(zip(self.classes, probs, strict=True))
        best = max(range(n), key=probs.__getitem__) if n else None
        return {"kind": "classification", "key": key, "id": msg_id, "ts": ts_ms,
                "probs": named, "label_pred": None if best is None else self.classes[best]}

    def _pool_inputs(self, logp: np.ndarray, feats: MessageFeatures) -> np.ndarray:
        """Each NB expert's log-probabilities per feature of the message (NB sums one term
        per feature, and character n-grams overlap: this puts experts on one scale)."""
        out = logp.copy()
        for e, b in enumerate(feats.buckets):
            out[e] /= max(len(b), 1)
        return out

    def learn_message(self, key: str, ts_ms: int, text: str, msg_id: str | None, label: str,
                      features: MessageFeatures | None = None
                      ) -> tuple[dict[str, Any], dict[str, Any]]:
        """A message that comes with its label: predict, score, then learn."""
        self._check_class(label)
        tmp_id = msg_id if msg_id is not None else f"\x00inline-{self.seq + 1}"
        pred = self.predict_message(key, ts_ms, text, tmp_id, features)
        pred["id"] = msg_id
        score = self.learn_label(key, ts_ms, tmp_id, label)
        score["id"] = msg_id
        return pred, score

    def learn_label(self, key: str, ts_ms: int, msg_id: str, label: str) -> dict[str, Any]:
        """Score the recorded prediction of message ``msg_id`` against ``label``, then learn
        the message. Raises ``bad_label`` (nothing changed) for an unknown id."""
        self.check_label(key, msg_id, label)
        p = self.pending.pop(msg_id)
        known = self.classes[: len(p.probs)]
        pred, loss = self.metrics.update(label, dict(zip(known, p.probs, strict=True)))
        if label not in self.classes:
            self.classes.append(label)
        y = self.classes.index(label)
        self._train(p, y)
        s = self.stats
        s.clf_labels_learned += 1
        s.clf_pending = len(self.pending)
        return {"kind": "label", "key": key, "id": msg_id, "ts": ts_ms, "label": label,
                "label_pred": pred, "correct": pred == label, "log_loss": loss,
                "delay_messages": self.seq - p.seq, "delay_ms": ts_ms - p.ts_ms}

    def _expire(self, now_ms: int) -> None:
        c = self.config
        dropped = 0
        while self.pending:
            first = next(iter(self.pending.values()))
            too_many = self.seq - first.seq > c.label_wait_messages
            too_old = c.label_wait_ms is not None and now_ms - first.ts_ms > c.label_wait_ms
            if not (too_many or too_old):
                break
            self.pending.popitem(last=False)
            dropped += 1
        self.stats.clf_labels_expired += dropped
        self.stats.clf_pending = len(self.pending)

    def _train(self, p: _Pending, y: int) -> None:
        """Learn one labelled message: the pool (on the experts' recorded predictions, when
        they covered the label's class), then every expert."""
        self.stats.clf_updates += 1
        if y < p.logp.shape[1]:
            self.pool.learn(p.logp, y)
        for nb, b in zip(self.nb, p.features.buckets, strict=True):
            nb.learn(b, y)
        if self.rnn is not None:
            self.rnn.learn(p.features.ids, y, len(self.classes))

    # -- persistence ------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Config, classes, every expert, the pool, pending messages and metrics (tensors
        and plain types; an independent copy)."""
        return {
            "config": self.config.to_dict(),
            "classes": list(self.classes),
            "nb": [nb.state_dict() for nb in self.nb],
            "rnn": self.rnn.state_dict() if self.rnn is not None else None,
            "pool": self.pool.state_dict(),
            "seq": self.seq,
            "pending": [[i, p.key, p.ts_ms, p.seq,
                         [torch.from_numpy(b.copy()) for b in p.features.buckets],
                         list(p.features.ids), torch.from_numpy(p.logp.copy()), list(p.probs)]
                        for i, p in self.pending.items()],
            "metrics": self.metrics.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from :meth:`state_dict`; refuses another architecture."""
        self.config.check_arch(state["config"], "classifier")
        state = copy.deepcopy(state)
        for nb, s in zip(self.nb, state["nb"], strict=True):
            nb.load_state_dict(s)
        if self.rnn is not None:
            self.rnn.load_state_dict(state["rnn"])
        try:
            self.pool.load_state_dict(state["pool"])
        except (ValueError, KeyError) as exc:
            raise CheckpointError(f"classifier pool does not fit: {exc}") from exc
        self.classes = [str(x) for x in state["classes"]]
        self.seq = int(state["seq"])
        self.pending = OrderedDict(
            (str(i), _Pending(str(k), int(ts), int(sq),
                              MessageFeatures([b.numpy().copy() for b in buckets],
                                              [int(t) for t in ids]),
                              logp.numpy().copy(), [float(x) for x in probs]))
            for i, k, ts, sq, buckets, ids, logp, probs in state["pending"])
        self.metrics = PrequentialClassification(self.config.window)
        self.metrics.load_state_dict(state["metrics"])
        self.stats.clf_pending = len(self.pending)
