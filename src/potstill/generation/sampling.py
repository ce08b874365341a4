"""Choosing each row's next token, and the log-probabilities a response reports.

Every row of a batch has its own settings: ``sampling_temperature`` 0 is greedy (argmax),
otherwise the logits are divided by it, cut to the top-p nucleus (Holtzman et al., 2020,
"The Curious Case of Neural Text Degeneration") and sampled with the row's own generator,
so a seeded request gives the same text whichever rows share its batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class RowSampling:
    """How one row picks its tokens."""

    sampling_temperature: float  # 0 = greedy
    top_p: float  # in (0, 1]; 1 = the whole distribution
    generator: torch.Generator | None  # None for greedy rows


def nucleus(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Zero all but the smallest set of most likely tokens holding at least ``top_p``.

    Args:
        probs: ``(V,)`` a probability distribution.

    Returns ``(V,)`` the kept probabilities, not renormalised (`torch.multinomial`
    does not need it).

    >>> nucleus(torch.tensor([0.1, 0.5, 0.15, 0.25]), 0.7)
    tensor([0.0000, 0.5000, 0.0000, 0.2500])
    """
    if top_p >= 1.0:
        return probs
    sorted_probs, order = probs.sort(descending=True)
    # A token is kept when the mass of the tokens before it is still short of top_p.
    before = sorted_probs.cumsum(0) - sorted_probs
    keep_sorted = before < top_p
    keep = torch.zeros_like(keep_sorted).scatter(0, order, keep_sorted)
    return probs * keep


def next_tokens(logits: torch.Tensor, rows: list[RowSampling]) -> torch.Tensor:
    """Each row's next token.

    Args:
        logits: ``(B, V)`` the model's raw next-token logits, one row per sequence.
        rows: ``B`` settings, in the same order.

    Returns ``(B,)`` token ids (long), on the logits' device.

    >>> logits = torch.tensor([[0.0, 2.0, 1.0], [5.0, 0.0, 0.0]])
    >>> greedy = RowSampling(0.0, 1.0, None)
    >>> sampled = RowSampling(1.0, 0.01, torch.Generator().manual_seed(0))
    >>> next_tokens(logits, [greedy, sampled]).tolist()
    [1, 0]
    """
    chosen = logits.argmax(dim=-1)  # (B,)
    for i, row in enumerate(rows):
        if row.sampling_temperature > 0:
            probs = torch.softmax(logits[i].float() / row.sampling_temperature, dim=-1)  # (V,)
            kept = nucleus(probs, row.top_p)
            chosen[i] = torch.multinomial(kept, 1, generator=row.generator)[0]
    return chosen


def token_logprobs(
    logits: torch.Tensor, chosen: torch.Tensor, top_k: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The log-probabilities a response reports: of the chosen token and the top k.

    They are ``log_softmax`` of the raw logits, before any sampling temperature or top-p:
    the model's own distribution, comparable across requests whatever their sampling
    settings (vLLM's default too), not the distribution the token was drawn from.

    Args:
        logits: ``(B, V)`` raw next-token logits.
        chosen: ``(B,)`` the tokens picked.
        top_k: how many of the most likely tokens to report (0 = none).

    Returns ``(chosen_logprobs (B,), top_ids (B, top_k), top_logprobs (B, top_k))``, float32;
    the top k sorted from most likely down.

    >>> chosen_lp, ids, lps = token_logprobs(torch.log(torch.tensor([[0.2, 0.5, 0.3]])),
    ...                                      torch.tensor([2]), top_k=2)
    >>> round(chosen_lp.exp().item(), 4), ids.tolist(), [round(p, 4) for p in lps.exp()[0].tolist()]
    (0.3, [[1, 2]], [0.5, 0.3])
    """
    logprobs = torch.log_softmax(logits.float(), dim=-1)  # (B, V)
    chosen_logprobs = logprobs.gather(-1, chosen[:, None])[:, 0]  # (B,)
    top_logprobs, top_ids = logprobs.topk(top_k, dim=-1)  # (B, top_k)
    return chosen_logprobs, top_ids, top_logprobs
