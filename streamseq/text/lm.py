"""Online language model: one hidden state per stream, truncated BPTT, predict then learn.

Per message of a stream (key), :meth:`OnlineLanguageModel.learn_message`

1. *predicts*: runs the whole message through the RNN in one call from the stream's hidden
   state, with the weights as they are, and scores every token's log-loss (the message's
   surprise: NLL per token and per character). No weight has seen any of these tokens;
2. *learns*: appends the scored tokens to the stream's TBPTT buffer; each time ``k1`` scored
   tokens of the stream are pending, one optimizer step is taken on them, backpropagating
   through the last ``k2`` tokens from the (detached) state saved at the window's start.

Update points are a function of the stream (every ``k1`` tokens of a key), so outputs,
hidden states and weights do not depend on how messages are batched into polls. The whole
per-stream state (hidden states, TBPTT buffers) is in :meth:`state_dict`.
"""

from __future__ import annotations

import copy
import logging
import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from streamseq.exceptions import CheckpointError
from streamseq.text.config import LMConfig
from streamseq.text.exceptions import TextModelError
from streamseq.text.modules import RecurrentStack, guarded_step, seeded_dropout, seeded_init
from streamseq.text.sampling import sample_next
from streamseq.text.stats import TextStats
from streamseq.text.vocab import BOS, EOM, RESERVED, Vocabulary

__all__ = ["TokenLanguageModel", "OnlineLanguageModel"]

log = logging.getLogger(__name__)

#: Longest piece of a message run through the RNN in one call when scoring.
PREDICT_CHUNK = 4096


class TokenLanguageModel(nn.Module):
    """Embedding -> stacked GRU/LSTM -> dropout -> linear head over the vocabulary.

    Examples
    --------
    >>> m = TokenLanguageModel(50, embed_dim=8, hidden=16, layers=2, cell="lstm")
    >>> logits, state = m(torch.tensor([[1, 5, 7]]), m.init_state(1))
    >>> tuple(logits.shape), tuple(state.shape)
    ((1, 3, 50), (2, 1, 32))
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

    def forward(self, tokens: torch.Tensor, state: torch.Tensor,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits ``[batch, time, vocab]`` of the next token after each of ``tokens
        [batch, time]``, and the state after the last one."""
        x = seeded_dropout(self.embed(tokens), self.dropout, generator, self.training)
        out, state = self.rnn(x, state, generator=generator)
        out = seeded_dropout(out, self.dropout, generator, self.training)
        return self.head(out), state


@dataclass
class _Stream:
    """Per-key state. ``buf[0]`` is the input before the first buffered target; targets are
    ``buf[1:]``, the first ``learned`` of them already learned (kept as BPTT context)."""

    state: torch.Tensor  # [layers, 1, S] after the last scored token
    last: int  # last scored token: the next input
    buf: list[int]
    buf_state: torch.Tensor  # state before consuming buf[0]
    learned: int
    pos: int  # tokens scored so far on this key
    last_ts: int


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
    >>> lm = OnlineLanguageModel(LMConfig(hidden=16, embed_dim=8, k1=4, k2=8))
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
        self.optimizer = torch.optim.Adam(self.params, lr=c.lr)
        self.generator = torch.Generator().manual_seed(c.seed + 1)
        self.streams: OrderedDict[str, _Stream] = OrderedDict()
        #: times each token id was learned as a target (only those may be sampled)
        self.learned_counts = torch.zeros(c.max_vocab, dtype=torch.int64)

    # -- the stream -------------------------------------------------------------------
    def learn_message(self, key: str, ts_ms: int, text: str, msg_id: str | None = None
                      ) -> dict[str, Any]:
        """Score the message's tokens (predict), then learn them (TBPTT). Returns the
        output record: ``{"kind": "lm", "key", "id", "ts", "nll_per_token", "nll_per_char",
        "tokens", "chars", "unknown"}`` (NLL in nats)."""
        ids = self.vocab.encode(text)
        if self.config.boundary_token:
            ids.append(EOM)
        st = self._stream(key, ts_ms)
        nll = self._predict(key, st, ids) if ids else 0.0
        s = self.stats
        s.lm_messages += 1
        s.lm_tokens += len(ids)
        s.lm_chars += len(text)
        unknown = ids.count(0)
        s.lm_unknown_tokens += unknown
        s.lm_nll_sum += nll
        s.lm_vocab_size = len(self.vocab)
        self._learn_due(key, st)
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
            zero = self.model.init_state(1)
            st = _Stream(zero, BOS, [BOS], zero, 0, 0, ts_ms)
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

    def _predict(self, key: str, st: _Stream, ids: list[int]) -> float:
        """Score ``ids`` (the next tokens of ``key``) from the stream's state; returns the
        summed NLL in nats and appends the scored tokens to the stream's buffer."""
        inputs = [st.last, *ids[:-1]]
        total = torch.zeros(())
        state = st.state
        with torch.inference_mode():
            for a in range(0, len(ids), PREDICT_CHUNK):
                x = torch.tensor([inputs[a:a + PREDICT_CHUNK]])
                y = torch.tensor(ids[a:a + PREDICT_CHUNK])
                logits, state = self.model(x, state)
                total += F.cross_entropy(logits[0], y, reduction="sum")
        nll = float(total)
        if not math.isfinite(nll) or not bool(torch.isfinite(state).all()):
            log.warning("non-finite score on stream %r; its hidden state is reset", key)
            state = self.model.init_state(1)
        st.state = state
        st.last = ids[-1]
        st.buf.extend(ids)
        st.pos += len(ids)
        return nll

    def _learn_due(self, key: str, st: _Stream) -> None:
        """One optimizer step per ``k1`` scored tokens of the stream."""
        k1, k2 = self.config.k1, self.config.k2
        while len(st.buf) - 1 - st.learned >= k1:
            end = st.learned + k1  # targets buf[1 : end + 1] are covered by this window
            keep = end - (k2 - k1)  # first target kept as context for the next window
            first_pos = st.pos - (len(st.buf) - 1)  # stream position of target buf[1]
            mid = self._train_window(key, first_pos + st.learned, st.buf[:end],
                                     st.buf[1:end + 1], st.learned, st.buf_state,
                                     max(0, keep) if keep < end else end)
            if keep > 0:
                st.buf_state = mid
                del st.buf[:keep]
                st.learned = end - keep
            else:
                st.learned = end

    def _train_window(self, key: str, learn_pos: int, inputs: list[int], targets: list[int],
                      n_context: int, state0: torch.Tensor, split: int) -> torch.Tensor:
        """One TBPTT step: forward ``inputs`` from ``state0`` with gradients, loss on
        ``targets[n_context:]`` (stream positions from ``learn_pos``, already scored),
        backward through the whole window, clip, step. Returns the detached state after
        ``inputs[:split]`` (the next window's starting state)."""
        model = self.model
        model.train()
        try:
            x = torch.tensor([inputs])
            if 0 < split < len(inputs):
                la, s_mid = model(x[:, :split], state0, self.generator)
                lb, _ = model(x[:, split:], s_mid, self.generator)
                logits = torch.cat([la, lb], dim=1)[0]
            else:
                logits, s_mid = model(x, state0, self.generator)
                logits = logits[0]
                if split == 0:
                    s_mid = state0
            y = torch.tensor(targets[n_context:])
            loss = F.cross_entropy(logits[n_context:], y)
            applied, loss_v, norm = guarded_step(self.params, self.optimizer, loss,
                                                 self.config.clip)
        finally:
            model.eval()
        s = self.stats
        if applied:
            self.learned_counts += torch.bincount(y, minlength=self.config.max_vocab)
            s.lm_updates += 1
        else:
            s.lm_updates_skipped += 1
            log.warning("language model step skipped: loss %s, grad norm %s", loss_v, norm)
        s.lm_last_loss, s.lm_last_grad_norm = loss_v, norm
        return s_mid.detach()

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
            raise ValueError("length must be >= 0")
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
        """Config, vocabulary, weights, optimizer, dropout RNG and every stream's state
        (tensors and plain types; an independent copy)."""
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
                "buf_state": torch.cat([s.buf_state for s in sts], 1) if sts else empty,
                "last": [s.last for s in sts],
                "buf": [list(s.buf) for s in sts],
                "learned": [s.learned for s in sts],
                "pos": [s.pos for s in sts],
                "last_ts": [s.last_ts for s in sts],
            },
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
                s["state"][:, i:i + 1].clone(), int(s["last"][i]), list(s["buf"][i]),
                s["buf_state"][:, i:i + 1].clone(), int(s["learned"][i]), int(s["pos"][i]),
                int(s["last_ts"][i]))
        self.stats.lm_keys = len(self.streams)
        self.stats.lm_vocab_size = len(self.vocab)
