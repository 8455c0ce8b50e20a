"""Online language model: one hidden state per stream, truncated BPTT, predict then learn.

Per message of a stream (key), :meth:`OnlineLanguageModel.learn_message` goes through the
message in pieces that end where a TBPTT window of the stream falls due, and for each piece

1. *predicts*: runs the piece through the RNN from the stream's hidden state, with the
   weights as they are, and scores every token's log-loss (the message's surprise: NLL per
   token and per character). No weight has seen any of these tokens. The distribution
   covers every id of the vocabulary's cap, those not given out before the message sharing
   one logit (so the head is computed for the ids in use, not the cap); a token never seen
   is scored at that shared logit. The run is cut at the stream positions where a TBPTT
   window will start, and the state there is kept;
2. *learns*: each time ``k1`` more tokens of a stream are scored, a TBPTT window falls due:
   its last ``k2`` inputs, from the state kept at its start, loss on its ``k1`` new targets.
   Windows of all streams gather; every ``batch_windows`` of them (an update point) one
   optimizer step is taken on their mean loss, in one batch (:mod:`streamseq.text.bptt`).
   The rest of the message is then scored with the new weights (its tokens are still
   unseen).

The scorer records its steps (:func:`~streamseq.text.scoring.advance`); a window whose
steps were all scored under the weights it is learned with (the usual case: with one
stream and ``k1 == k2``, always) is learned from those records instead of running its
forward pass again. The records are a cache: a window without them (another stream's step
came in between, a restart, dropout) runs its steps again, bit for bit the same.

Update points are a function of the ordered stream (every ``k1`` tokens of a key, every
``batch_windows`` windows of the shard), so outputs, hidden states and weights do not
depend on how messages are batched into polls. The whole per-stream state (hidden states,
token history, the states kept at window starts) and the windows waiting for the next step
are in :meth:`state_dict`.
"""

from __future__ import annotations

import copy
import logging
import math
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from streamseq.exceptions import CheckpointError, UsageError
from streamseq.models.seeding import seeded_init
from streamseq.text.bptt import DropoutMasks, WindowBatch, window_gradients
from streamseq.text.config import LMConfig
from streamseq.text.exceptions import TextModelError
from streamseq.text.modules import RecurrentStack, guarded_apply, seeded_dropout
from streamseq.text.sampling import check_sampling, sample_next
from streamseq.text.scoring import CompiledScorer
from streamseq.text.stats import TextStats
from streamseq.text.vocab import BOS, EOM, RESERVED, Vocabulary

__all__ = ["TokenLanguageModel", "OnlineLanguageModel"]

log = logging.getLogger(__name__)

#: Longest piece of a prompt run through the RNN in one call when generating.
PREDICT_CHUNK = 4096
#: Steps the scorer records for reuse per weights version, in updates' worth of windows.
RECORD_WINDOWS = 8


class TokenLanguageModel(nn.Module):
    """Embedding -> stacked GRU/LSTM -> dropout -> linear head over the vocabulary.

    Examples
    --------
    >>> m = TokenLanguageModel(50, embed_dim=8, hidden=16, layers=2, cell="lstm")
    >>> logits, state = m(torch.tensor([[1, 5, 7]]), m.init_state(1))
    >>> tuple(logits.shape), tuple(state.shape)
    ((1, 3, 50), (2, 1, 32))

    While the vocabulary has given out only ids ``0 .. known - 1``, the ids not given out
    yet share one logit (row ``known``'s) and one class after the known ids (see
    :meth:`known_logits`); the probabilities of all ids still sum to one:

    >>> out, _ = m.features(torch.tensor([[1, 5, 7]]), m.init_state(1))
    >>> logp = m.known_logits(out[0], known=6).log_softmax(-1)
    >>> p = torch.cat([logp[:, :6], (logp[:, 6:] - m.escape_cost(6)).expand(-1, 44)], 1)
    >>> [round(v, 5) for v in p.exp().sum(1).tolist()]
    [1.0, 1.0, 1.0]
    >>> torch.equal(m.known_logits(out[0], known=50), m.head(out[0]))
    True
    """

    def __init__(self, vocab_size: int, embed_dim: int = 64, hidden: int = 256,
                 layers: int = 1, cell: str = "lstm", dropout: float = 0.0) -> None:
        super().__init__()
        self.dropout = dropout
        self.embed = nn.Embedding(vocab_size, embed_dim)
        self.rnn = RecurrentStack(cell, embed_dim, hidden, layers, dropout=dropout)
        self.head = nn.Linear(hidden, vocab_size)

    def init_state(self, batch: int = 1) -> torch.Tensor:
        return self.rnn.init_state(batch)

    def features(self, tokens: torch.Tensor, state: torch.Tensor,
                 generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The head's inputs ``[batch, time, hidden]`` after each of ``tokens [batch,
        time]`` (dropout applied when training), and the state after the last one."""
        x = seeded_dropout(self.embed(tokens), self.dropout, generator, self.training)
        out, state = self.rnn(x, state, generator=generator)
        return seeded_dropout(out, self.dropout, generator, self.training), state

    def forward(self, tokens: torch.Tensor, state: torch.Tensor,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits ``[batch, time, vocab]`` of the next token after each of ``tokens
        [batch, time]``, and the state after the last one."""
        out, state = self.features(tokens, state, generator)
        return self.head(out), state

    def known_logits(self, features: torch.Tensor, known: int) -> torch.Tensor:
        """Logits ``[..., known + 1]`` from the head's inputs ``features [..., hidden]``
        when the vocabulary has given out ids ``0 .. known - 1`` (all logits if it has
        given out every id).

        The last class stands for the ``vocab - known`` ids not given out yet (where a
        token never seen lands): each has the logit of row ``known``, so the class's logit
        is that plus :meth:`escape_cost`, which the log-loss of one such id adds back. The
        head is computed for ``known + 1`` rows instead of the whole cap.
        """
        n = self.head.out_features
        if known >= n:
            return self.head(features)
        logits = F.linear(features, self.head.weight[:known + 1], self.head.bias[:known + 1])
        logits[..., known] += self.escape_cost(known)
        return logits

    def escape_cost(self, known: int) -> float:
        """``log(vocab - known)``: the log-loss of one id not given out yet, beyond that of
        their shared class in :meth:`known_logits` (0 once every id is given out)."""
        n = self.head.out_features
        return math.log(n - known) if known < n else 0.0


@dataclass
class _Stream:
    """Per-key state. The stream's inputs are ``<bos>`` then its tokens; input ``p``
    predicts token ``p + 1``. ``hist`` holds the inputs from position ``hist_start`` on
    (those a window still needs); ``marks`` the states before the inputs at which windows
    start."""

    state: torch.Tensor  # [layers, 1, S] after the last scored token
    last: int  # last scored token: the next input
    hist: list[int]
    hist_start: int
    marks: dict[int, torch.Tensor]
    pos: int  # tokens scored so far on this key
    next_window: int  # the window that falls due when pos reaches next_window * k1
    last_ts: int
    #: the scorer's records of the steps from input ``rec_start`` on, all made under the
    #: weights of update ``rec_version`` (a cache the learner reuses; never saved)
    rec: list[np.ndarray] = field(default_factory=list)
    rec_start: int = 0
    rec_version: int = -1


@dataclass
class _Window:
    """A TBPTT window of stream ``key`` that fell due: inputs, targets, the state before the
    first input, and how many leading targets were already learned (context only); its
    first new target is the stream's token number ``learn_pos`` (from 0)."""

    key: str
    learn_pos: int
    inputs: list[int]
    targets: list[int]
    state0: torch.Tensor
    n_context: int
    rec: list[np.ndarray] | None = None  # the scorer's records of its steps, if current


class OnlineLanguageModel:
    """A token-level RNN language model learned online over keyed text streams.

    Parameters
    ----------
    config
        Architecture and learning settings.
    stats
        Counters to update (a fresh :class:`TextStats` if omitted).

    Examples
    --------
    >>> lm = OnlineLanguageModel(LMConfig(hidden=16, embed_dim=8, k1=4, k2=8, batch_windows=1))
    >>> out = lm.learn_message("s1", 0, "hello world\\n", msg_id="m1")
    >>> out["tokens"], round(out["nll_per_char"], 1) == round(out["nll_per_token"], 1)
    (12, True)
    >>> lm.stats.lm_updates  # 12 scored tokens, one step every 4
    3
    >>> len(lm.generate("he", length=5, seed=1))
    5
    """

    def __init__(self, config: LMConfig | None = None, stats: TextStats | None = None) -> None:
        self.config = c = config or LMConfig()
        self.stats = stats if stats is not None else TextStats()
        self.vocab = Vocabulary(c.tokens, c.max_vocab, c.lowercase)
        with seeded_init(c.seed):
            self.model = TokenLanguageModel(c.max_vocab, c.embed_dim, c.hidden, c.layers,
                                            c.cell, c.dropout)
        self.model.eval()
        self.params = list(self.model.parameters())
        self.optimizer = torch.optim.Adam(self.params, lr=c.lr, fused=True)  # one kernel
        self.scorer = CompiledScorer(self.model)
        #: weights version (applied updates since construction or restore): the scorer's
        #: records are reused by the learner only under the weights that made them
        self.version = 0
        self.rec_rows = 0  # rows recorded under this version, at most rec_budget
        self.recording: list[_Stream] = []  # streams with records of this version
        self.rec_budget = RECORD_WINDOWS * c.batch_windows * c.k2
        self.generator = torch.Generator().manual_seed(c.seed + 1)
        self.streams: OrderedDict[str, _Stream] = OrderedDict()
        self.due: list[_Window] = []  # windows waiting for the next update point
        #: times each token id was learned as a target (only those may be sampled)
        self.learned_counts = torch.zeros(c.max_vocab, dtype=torch.int64)

    # -- the stream -------------------------------------------------------------------
    def learn_message(self, key: str, ts_ms: int, text: str, msg_id: str | None = None
                      ) -> dict[str, Any]:
        """Score the message's tokens (predict), then learn them (TBPTT). Returns the
        output record: ``{"kind": "lm", "key", "id", "ts", "nll_per_token", "nll_per_char",
        "tokens", "chars", "unknown"}`` (NLL in nats)."""
        known = len(self.vocab)  # ids given out before this message
        ids = self.vocab.encode(text)
        if self.config.boundary_token:
            ids.append(EOM)
        st = self._stream(key, ts_ms)
        nll = 0.0
        a = 0
        while a < len(ids):  # in pieces that end where a window of the stream falls due
            b = min(len(ids), a + st.next_window * self.config.k1 - st.pos)
            nll += self._predict(key, st, ids[a:b], known)
            self._learn_due(key, st)
            a = b
        s = self.stats
        s.lm_messages += 1
        s.lm_tokens += len(ids)
        s.lm_chars += len(text)
        unknown = ids.count(0)
        s.lm_unknown_tokens += unknown
        s.lm_nll_sum += nll
        s.lm_vocab_size = len(self.vocab)
        return {"kind": "lm", "key": key, "id": msg_id, "ts": ts_ms,
                "nll_per_token": nll / len(ids) if ids else None,
                "nll_per_char": nll / len(text) if text else None,
                "tokens": len(ids), "chars": len(text), "unknown": unknown}

    def _stream(self, key: str, ts_ms: int) -> _Stream:
        st = self.streams.get(key)
        if st is not None:
            self.streams.move_to_end(key)
            st.last_ts = max(st.last_ts, ts_ms)
        else:
            while len(self.streams) >= self.config.max_keys:
                self._evict(next(iter(self.streams)))
            st = _Stream(self.model.init_state(1), BOS, [BOS], 0, {}, 0, 1, ts_ms)
            self.streams[key] = st
        ttl = self.config.key_ttl_ms
        if ttl is not None:  # least recently seen first: idle streams drift to the front
            while self.streams:
                old, first = next(iter(self.streams.items()))
                if first is st or first.last_ts >= ts_ms - ttl:
                    break
                self._evict(old)
        self.stats.lm_keys = len(self.streams)
        return st

    def _evict(self, key: str) -> None:
        del self.streams[key]
        self.stats.lm_keys_evicted += 1
        self.stats.lm_keys = len(self.streams)

    def _window_start(self, n: int) -> int:
        """Stream position of window ``n``'s first input."""
        return max(0, n * self.config.k1 - self.config.k2)

    def _predict(self, key: str, st: _Stream, ids: list[int], known: int) -> float:
        """Score ``ids`` (the next tokens of ``key``) from the stream's state, ids from
        ``known`` up counting as not given out yet; returns the summed NLL in nats, keeps
        the inputs and the states where windows will start."""
        k1, k2 = self.config.k1, self.config.k2
        n0, n = st.pos, len(ids)
        # positions inside the message where a window starts (= -k2 mod k1, after the
        # stream's first input)
        first = n0 + 1 + ((-k2 - (n0 + 1)) % k1)
        mark_at = [p - n0 for p in range(first, n0 + n, k1)]
        state = st.state  # advanced in place (a mark kept at the end is a copy)
        rec = self._record_buffer(st, n0, n)
        nll, marks = self.scorer.score(state, [st.last, *ids[:-1]], ids, known, mark_at, rec)
        if rec is not None:
            st.rec.append(rec)
        for p, mark in zip(mark_at, marks, strict=True):
            st.marks[n0 + p] = mark
        if not math.isfinite(nll):  # a score or a state not finite
            log.warning("non-finite score on stream %r; its hidden state is reset", key)
            state = self.model.init_state(1)
            st.rec, st.rec_version = [], -1
        st.state = state
        if (n0 + n + k2) % k1 == 0:
            st.marks[n0 + n] = state.clone()
        st.last = ids[-1]
        st.hist.extend(ids)
        st.pos += n
        return nll

    def _record_buffer(self, st: _Stream, n0: int, n: int) -> np.ndarray | None:
        """Where the scorer records its steps over inputs ``n0 .. n0 + n`` of the stream,
        for the learner: continuing the stream's records under the current weights, or
        starting them anew at ``n0``. None (no record) with dropout (the learner's steps
        are not the scorer's) or past the budget of rows per weights version."""
        if self.config.dropout > 0:
            return None
        if st.rec_version != self.version or st.rec_start + sum(map(len, st.rec)) != n0:
            if st.rec_version != self.version:
                self.recording.append(st)
            st.rec, st.rec_start, st.rec_version = [], n0, self.version
        if self.rec_rows + n > self.rec_budget:
            st.rec, st.rec_version = [], -1
            return None
        self.rec_rows += n
        lay = self.scorer.layout
        return np.empty((n, lay.layers, 6 * lay.hidden), np.float32)

    def _new_version(self) -> None:
        """The weights changed: every record made so far is stale (dropped now, so that
        memory stays within the budget of one version however many streams are idle)."""
        for st in self.recording:
            st.rec, st.rec_version = [], -1
        self.recording = []
        self.version += 1
        self.rec_rows = 0

    def _take_record(self, st: _Stream, start: int, end: int, keep: int
                     ) -> list[np.ndarray] | None:
        """The scorer's records of inputs ``start .. end`` (consecutive pieces) if it made
        them all under the current weights; drops those before ``keep``."""
        if st.rec_version != self.version or not st.rec or st.rec_start > start:
            return None
        out, kept = [], []
        at = st.rec_start
        for chunk in st.rec:
            lo, hi = at, at + len(chunk)
            if lo < end and hi > start:
                out.append(chunk[max(start - lo, 0):end - lo])
            if hi > keep:
                kept.append(chunk[max(keep - lo, 0):])
            at = hi
        st.rec, st.rec_start = kept, keep
        return out if sum(map(len, out)) == end - start else None

    def _learn_due(self, key: str, st: _Stream) -> None:
        """Queue the windows of the stream that fell due; step at every update point."""
        k1 = self.config.k1
        while st.pos >= st.next_window * k1:
            n = st.next_window
            start, end = self._window_start(n), n * k1
            lo, hi = start - st.hist_start, end - st.hist_start
            state0 = st.marks.pop(start) if start > 0 else self.model.init_state(1)
            keep = self._window_start(n + 1)  # inputs the next window needs
            self.due.append(_Window(key, (n - 1) * k1, st.hist[lo:hi], st.hist[lo + 1:hi + 1],
                                    state0, (n - 1) * k1 - start,
                                    self._take_record(st, start, end, keep)))
            st.next_window = n + 1
            del st.hist[: keep - st.hist_start]
            st.hist_start = keep
            if len(self.due) >= self.config.batch_windows:
                self._train_due()

    def _train_due(self) -> None:
        """One optimizer step on the mean loss of the windows due, all in one batch: their
        steps recorded by the scorer under these weights or run again
        (:mod:`streamseq.text.bptt`)."""
        windows, self.due = self.due, []
        c = self.config
        lay = self.scorer.layout
        starts = np.zeros(len(windows) + 1, np.int64)
        np.cumsum([len(w.inputs) for w in windows], out=starts[1:])
        rows = int(starts[-1])
        inputs = np.fromiter((t for w in windows for t in w.inputs), np.int64, rows)
        y = np.fromiter((t for w in windows
                         for t in [-100] * w.n_context + w.targets[w.n_context:]), np.int64, rows)
        state0 = np.stack([w.state0[:, 0].numpy() for w in windows])
        masks = DropoutMasks.draw(rows, lay, c.dropout, self.generator) if c.dropout > 0 \
            else None
        rec = np.empty((rows, lay.layers, 6 * lay.hidden), np.float32)
        todo = np.ones(len(windows), np.bool_)
        for i, w in enumerate(windows):
            if w.rec is not None and masks is None:
                np.concatenate(w.rec, out=rec[starts[i]:starts[i + 1]])
                todo[i] = False
        if todo.any():
            self.scorer.record(inputs, starts, todo, state0, masks, rec)
        loss, grads = window_gradients(self.model, lay, self.scorer.theta,
                                       WindowBatch(inputs, y, starts, state0, rec),
                                       len(self.vocab), masks)  # every target is known
        for p, g in zip(self.params, grads, strict=True):
            p.grad = g
        applied, loss_v, norm = guarded_apply(self.params, self.optimizer, loss, c.clip)
        s = self.stats
        if applied:
            self._new_version()
            self.scorer.refresh()
            learned = y[y >= 0]
            self.learned_counts += torch.from_numpy(np.bincount(learned,
                                                                minlength=c.max_vocab))
            s.lm_updates += 1
        else:
            s.lm_updates_skipped += 1
            log.warning("language model step skipped: loss %s, grad norm %s", loss_v, norm)
        s.lm_last_loss, s.lm_last_grad_norm = loss_v, norm

    # -- generation -------------------------------------------------------------------
    def generate(self, prompt: str = "", length: int = 200, temperature: float = 1.0,
                 top_k: int | None = None, seed: int = 0, key: str | None = None,
                 top_p: float | None = None) -> str:
        """Sample ``length`` tokens after ``prompt`` (the continuation only is returned).

        Starts from a fresh state (or from stream ``key``'s state if given), reads the
        prompt, then draws each token with ``temperature`` (0 = greedy; lower = more
        conservative), among the ``top_k`` most likely and within the nucleus of
        probability ``top_p`` (see :func:`~streamseq.text.sampling.next_token_distribution`).
        Only tokens the model has learned as a target at least once can be drawn (never a
        reserved token, an id no text filled, or a token read but not learned yet); before
        any such token :class:`TextModelError` is raised. The same weights, prompt and
        ``seed`` give the same text. Learning state is not touched.
        """
        if length < 0:
            raise UsageError(f"length must be >= 0, not {length}")
        check_sampling(temperature, top_k, top_p)
        allowed = self.learned_counts > 0
        allowed[: len(RESERVED)] = False
        if length and not bool(allowed.any()):
            raise TextModelError("the language model has not learned any token yet")
        g = torch.Generator().manual_seed(int(seed))
        st = self.streams.get(key) if key is not None else None
        state = st.state.clone() if st is not None else self.model.init_state(1)
        inputs = [st.last if st is not None else BOS, *self.vocab.encode(prompt, grow=False)]
        out: list[int] = []
        self.model.eval()
        with torch.inference_mode():
            logits = torch.empty(0)
            for a in range(0, len(inputs), PREDICT_CHUNK):
                logits, state = self.model(torch.tensor([inputs[a:a + PREDICT_CHUNK]]), state)
            last = logits[0, -1]
            for _ in range(length):
                nxt = sample_next(last, allowed, g, temperature, top_k, top_p)
                out.append(nxt)
                logits, state = self.model(torch.tensor([[nxt]]), state)
                last = logits[0, -1]
        return self.vocab.decode(out)

    # -- persistence ------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Config, vocabulary, weights, optimizer, dropout RNG, every stream's state and the
        windows waiting for the next step (tensors and plain types; an independent copy)."""
        names = list(self.streams)
        sts = list(self.streams.values())
        empty = self.model.init_state(0)
        return {
            "config": self.config.to_dict(),
            "vocab": self.vocab.state_dict(),
            "model": {k: v.detach().clone() for k, v in self.model.state_dict().items()},
            "optimizer": copy.deepcopy(self.optimizer.state_dict()),
            "generator": self.generator.get_state(),
            "learned_counts": self.learned_counts.clone(),
            "streams": {
                "keys": names,
                "state": torch.cat([s.state for s in sts], 1) if sts else empty,
                "last": [s.last for s in sts],
                "hist": [list(s.hist) for s in sts],
                "hist_start": [s.hist_start for s in sts],
                "mark_pos": [list(s.marks) for s in sts],
                "mark_state": [[m.clone() for m in s.marks.values()] for s in sts],
                "pos": [s.pos for s in sts],
                "next_window": [s.next_window for s in sts],
                "last_ts": [s.last_ts for s in sts],
            },
            "due": [[w.key, w.learn_pos, list(w.inputs), list(w.targets), w.state0.clone(),
                     w.n_context] for w in self.due],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from :meth:`state_dict`; refuses another architecture."""
        self.config.check_arch(state["config"], "language model")
        state = copy.deepcopy(state)
        self.vocab.load_state_dict(state["vocab"])
        try:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError, KeyError) as exc:
            raise CheckpointError(f"language model weights do not fit: {exc}") from exc
        self.scorer.refresh()
        self._new_version()
        for group in self.optimizer.param_groups:  # learning settings come from this config
            group["lr"] = self.config.lr
        self.generator.set_state(state["generator"])
        counts = state["learned_counts"]
        if not isinstance(counts, torch.Tensor) or counts.shape != self.learned_counts.shape:
            raise CheckpointError("language model checkpoint: malformed learned_counts")
        self.learned_counts = counts.to(torch.int64).clone()
        s = state["streams"]
        self.streams = OrderedDict()
        for i, key in enumerate(s["keys"]):
            self.streams[key] = _Stream(
                s["state"][:, i:i + 1].clone(), int(s["last"][i]), list(s["hist"][i]),
                int(s["hist_start"][i]),
                {int(p): m.clone() for p, m in zip(s["mark_pos"][i], s["mark_state"][i],
                                                   strict=True)},
                int(s["pos"][i]), int(s["next_window"][i]), int(s["last_ts"][i]))
        self.due = [_Window(str(k), int(lp), list(a), list(b), st0.clone(), int(n))
                    for k, lp, a, b, st0, n in state["due"]]
        self.stats.lm_keys = len(self.streams)
        self.stats.lm_vocab_size = len(self.vocab)
