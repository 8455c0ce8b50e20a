"""Counters of a text shard, for Prometheus and the backtest report.

One :class:`TextStats` is shared by the language model, the classifier and the engine that
hosts them. Counters only grow (export them as ``_total``); the fields marked *gauge* are
levels. The object is saved in the checkpoint, so counters continue across restarts.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field, fields

__all__ = ["TextStats"]


@dataclass
class TextStats:
    """Counters of one text shard.

    Examples
    --------
    >>> s = TextStats()
    >>> s.reject("bad_label"); s.lm_tokens += 3
    >>> t = TextStats(); t.load_state_dict(s.state_dict()); (t.rejected["bad_label"], t.lm_tokens)
    (1, 3)
    """

    events: int = 0  #: events applied (text + label)
    text_events: int = 0
    label_events: int = 0
    rejected: Counter[str] = field(default_factory=Counter)  #: by EventError reason
    # language model
    lm_messages: int = 0
    lm_tokens: int = 0  #: tokens scored (predicted before learned)
    lm_chars: int = 0
    lm_unknown_tokens: int = 0
    lm_nll_sum: float = 0.0  #: nats, summed over scored tokens
    lm_updates: int = 0  #: optimizer steps applied
    lm_updates_skipped: int = 0  #: steps skipped on a non-finite loss or gradient
    lm_last_loss: float = 0.0  #: gauge: mean token loss of the last step (nats)
    lm_last_grad_norm: float = 0.0  #: gauge
    lm_keys: int = 0  #: gauge: streams with live hidden state
    lm_keys_evicted: int = 0
    lm_vocab_size: int = 0  #: gauge
    # classifier
    clf_predictions: int = 0
    clf_labels_learned: int = 0  #: labels matched to their message, scored and learned
    clf_labels_expired: int = 0  #: pending messages dropped before their label came
    clf_updates: int = 0  #: labelled messages learned by the experts and the pool
    clf_updates_skipped: int = 0  #: recurrent expert's steps skipped (non-finite)
    clf_last_loss: float = 0.0  #: gauge
    clf_last_grad_norm: float = 0.0  #: gauge
    clf_pending: int = 0  #: gauge: messages waiting for a label
    clf_vocab_size: int = 0  #: gauge

    def reject(self, reason: str) -> None:
        self.rejected[reason] += 1

    def state_dict(self) -> dict[str, object]:
        """Plain types only."""
        out: dict[str, object] = {f.name: getattr(self, f.name) for f in fields(self)}
        out["rejected"] = dict(self.rejected)
        return out

    def load_state_dict(self, state: dict[str, object]) -> None:
        for f in fields(self):
            if f.name in state:
                value = state[f.name]
                if f.name == "rejected":
                    value = Counter(dict(value))  # type: ignore[call-overload]
                setattr(self, f.name, value)

    as_dict = state_dict
