"""Drawing the next token from a language model's logits: temperature, top-k, top-p, and a
mask of the tokens the model may emit at all.

The mask is what keeps samples honest: a language model that has seen little text has
output rows for tokens it never learned (ids of its vocabulary cap that no text filled, and
ids whose tokens were read but not yet learned as a target); their logits are whatever the
initial weights say. :class:`~streamseq.text.lm.OnlineLanguageModel` passes the tokens it
has learned as targets at least once, so such tokens are never drawn.
"""

from __future__ import annotations

import torch

from streamseq.exceptions import UsageError

__all__ = ["check_sampling", "next_token_distribution", "sample_next"]


def check_sampling(temperature: float, top_k: int | None, top_p: float | None) -> None:
    """Refuse sampling options that mean nothing (:class:`UsageError`, a ``ValueError``).

    >>> check_sampling(0.8, 20, 0.95)
    >>> check_sampling(1.0, None, 1.5)
    Traceback (most recent call last):
    ...
    streamseq.exceptions.UsageError: top_p must be in (0, 1], not 1.5
    """
    if not temperature >= 0:
        raise UsageError(f"temperature must be >= 0 (0: the most likely token), not {temperature}")
    if top_k is not None and top_k < 1:
        raise UsageError(f"top_k must be >= 1, not {top_k}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise UsageError(f"top_p must be in (0, 1], not {top_p}")


def next_token_distribution(logits: torch.Tensor, allowed: torch.Tensor,
                            temperature: float = 1.0, top_k: int | None = None,
                            top_p: float | None = None) -> torch.Tensor:
    """Probabilities ``[vocab]`` (float64) of the next token, zero outside ``allowed``.

    ``temperature`` divides the logits (lower: more conservative; must be > 0 here, greedy
    decoding is the caller's argmax); ``top_k`` keeps the ``k`` most likely allowed tokens;
    ``top_p`` keeps the smallest set of most likely tokens whose probability reaches ``p``
    (nucleus sampling). Both filters apply after the temperature, top-k first.

    Examples
    --------
    >>> z = torch.tensor([5.0, 2.0, 1.0, 0.0, 3.0])
    >>> ok = torch.tensor([False, True, True, True, True])  # id 0 was never learned
    >>> p = next_token_distribution(z, ok)
    >>> float(p[0]), round(float(p.sum()), 6)
    (0.0, 1.0)
    >>> (next_token_distribution(z, ok, top_k=2) > 0).nonzero().flatten().tolist()
    [1, 4]
    >>> (next_token_distribution(z, ok, top_p=0.5) > 0).nonzero().flatten().tolist()
    [4]
    >>> (next_token_distribution(z, ok, temperature=100.0) > 0).sum().item()
    4
    """
    check_sampling(temperature, top_k, top_p)
    if temperature == 0:
        raise UsageError("temperature 0 is greedy decoding: the caller's argmax")
    z = logits.detach().to(torch.float64) / float(temperature)
    z = z.masked_fill(~allowed, float("-inf"))
    n_allowed = int(allowed.sum())
    if n_allowed == 0:
        raise ValueError("no token is allowed")
    if top_k is not None and 0 < top_k < n_allowed:
        kth = torch.topk(z, top_k).values[-1]
        z = z.masked_fill(z < kth, float("-inf"))
    probs = torch.softmax(z, -1)
    if top_p is not None and top_p < 1.0:
        sorted_p, order = torch.sort(probs, descending=True)
        before = torch.cumsum(sorted_p, 0) - sorted_p  # mass of the more likely tokens
        drop = before >= top_p
        probs = probs.clone()
        probs[order[drop]] = 0.0
        probs = probs / probs.sum()
    return probs


def sample_next(logits: torch.Tensor, allowed: torch.Tensor, generator: torch.Generator,
                temperature: float = 1.0, top_k: int | None = None,
                top_p: float | None = None) -> int:
    """One token id drawn from :func:`next_token_distribution` (``temperature <= 0``:
    the most likely allowed token).

    Examples
    --------
    >>> z = torch.tensor([9.0, 1.0, 2.0])
    >>> ok = torch.tensor([False, True, True])
    >>> sample_next(z, ok, torch.Generator().manual_seed(0), temperature=0)
    2
    >>> g = torch.Generator().manual_seed(0)
    >>> sorted({sample_next(z, ok, g) for _ in range(50)})
    [1, 2]
    """
    if temperature <= 0:
        return int(logits.masked_fill(~allowed, float("-inf")).argmax())
    probs = next_token_distribution(logits, allowed, temperature, top_k, top_p)
    return int(torch.multinomial(probs, 1, generator=generator))
