"""An unbiased sparse teacher signal: the top few ids exactly, the rest by sampling.

A top-k signal drops the mass outside its k ids into one tail bucket whose inside is
unknown, so a student trained on it learns a biased picture of the teacher (on the
default data the top 64 miss ~19% of the mass). Sampling instead (Anshumann et al.,
"Sparse Logit Sampling: Accelerating Knowledge Distillation in LLMs", ACL 2025) keeps
an estimate that is right on average: draw ``samples`` ids with replacement from the
teacher's distribution and give each distinct id its share of the draws. The hybrid
keeps the ``top`` most likely ids with their exact probabilities and samples only the
mass ``r`` left outside them, each drawn id weighing ``r · count / samples``.

Either way, for every id ``v``, ``E[p̂(v)] = p(v)``, and the estimate sums to 1, so the
forward-KL (cross-entropy) gradient on the student's logits, ``softmax(z) − p̂``, is
unbiased too. The signal is a `SparseSignal` of ``top + samples`` slots with an empty
tail (``tail_logprob = −inf``): slots a repeated draw leaves free hold distinct unused
ids (the smallest ones) with probability 0. It is taken at one temperature and is only
an estimate at that temperature: re-tempering a sampled estimate is not unbiased.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from potstill.signals.distributions import SparseSignal


def sampled_signal(
    teacher_logits: torch.Tensor,
    samples: int,
    *,
    top: int = 0,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
) -> SparseSignal:
    """An unbiased sparse estimate of ``softmax(teacher_logits / temperature)``.

    Args:
        teacher_logits: ``(B, T, V)`` raw teacher logits.
        samples: draws per token from the mass outside the ``top`` ids, ``>= 1``.
        top: ids kept exactly (the most likely), ``>= 0``; ``top + samples <= V``.
        temperature: the softmax temperature, ``> 0``.
        generator: the random draws' generator (None: torch's global one).

    Returns:
        A `SparseSignal` of ``K = top + samples`` slots per token: the top ids first, then
        one slot per draw, where each distinct drawn id holds its share and each repeat
        leaves its slot to an unused id with log-probability ``−inf``; the tail is
        ``−inf`` (the slots carry all the mass).

    >>> logits = torch.log(torch.tensor([[[0.7, 0.2, 0.1]]]))
    >>> s = sampled_signal(logits, samples=1, top=2, generator=torch.Generator().manual_seed(0))
    >>> s.ids.tolist(), [round(p, 3) for p in s.logprobs.exp().flatten().tolist()]
    ([[[0, 1, 2]]], [0.7, 0.2, 0.1])
    """
    if teacher_logits.dim() != 3 or not teacher_logits.is_floating_point():
        raise ValueError(
            f"teacher_logits must be (B, T, V) floating point, got "
            f"{tuple(teacher_logits.shape)} {teacher_logits.dtype}"
        )
    batch, length, vocab = teacher_logits.shape
    if samples < 1 or top < 0:
        raise ValueError(f"samples must be >= 1 and top >= 0, got samples={samples}, top={top}")
    if top + samples > vocab:
        raise ValueError(f"top + samples = {top + samples} slots exceed the vocabulary of {vocab}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    dtype = torch.promote_types(teacher_logits.dtype, torch.float32)  # float64 stays
    logprobs = F.log_softmax(teacher_logits.to(dtype) / temperature, dim=-1).reshape(-1, vocab)
    rows = logprobs.shape[0]  # (N, V) from here on

    top_logprobs, top_ids = logprobs.topk(top, dim=-1)  # (N, top)
    rest = logprobs.scatter(-1, top_ids, -torch.inf) if top else logprobs  # (N, V)
    log_rest = rest.logsumexp(dim=-1, keepdim=True)  # (N, 1): log r, the mass sampled
    # Rows whose top ids hold all the mass draw anyway (uniformly); those draws weigh 0.
    weights = torch.where(torch.isfinite(log_rest), (rest - log_rest).exp(), 1.0)
    drawn = torch.multinomial(weights, samples, replacement=True, generator=generator)
    drawn, _ = drawn.sort(dim=-1)  # (N, S): repeats side by side
    same = drawn[:, :, None] == drawn[:, None, :]  # (N, S, S)
    counts = same.sum(dim=-1)  # (N, S): how often each slot's id was drawn
    first = torch.ones_like(drawn, dtype=torch.bool)
    first[:, 1:] = drawn[:, 1:] != drawn[:, :-1]  # (N, S): a distinct id's first slot
    share = log_rest + (counts.to(dtype) / samples).log()  # (N, S): log(r · count / S)
    drawn_logprobs = torch.where(first, share, -torch.inf)

    ids = torch.cat([top_ids, drawn], dim=-1)  # (N, K)
    free = ~torch.cat([torch.ones_like(top_ids, dtype=torch.bool), first], dim=-1)  # (N, K)
    ids = torch.where(free, _unused_ids(ids, free, vocab), ids)
    out_logprobs = torch.cat([top_logprobs, drawn_logprobs], dim=-1)  # (N, K)
    tail = torch.full((rows,), -torch.inf, dtype=dtype, device=logprobs.device)
    k = top + samples
    return SparseSignal(
        ids.reshape(batch, length, k),
        out_logprobs.reshape(batch, length, k),
        tail.reshape(batch, length),
        temperature,
    )


def _unused_ids(ids: torch.Tensor, free: torch.Tensor, vocab: int) -> torch.Tensor:
    """For each row of ``ids`` ``(N, K)``, distinct ids it does not use, in ``free``'s
    slots (the smallest such ids, in order); other slots are left as they are."""
    k = ids.shape[1]
    pool = torch.arange(min(vocab, 2 * k), device=ids.device)  # (P,): >= k unused per row
    taken = ((pool[None, :, None] == ids[:, None, :]) & ~free[:, None, :]).any(-1)  # (N, P)
    # Unused pool ids first, in increasing order (a stable sort on "taken").
    order = torch.sort(taken.to(torch.int8), dim=-1, stable=True).indices  # (N, P)
    unused = pool[order]  # (N, P)
    rank = free.long().cumsum(dim=-1) - 1  # (N, K): the i-th free slot gets the i-th unused
    return unused.gather(-1, rank.clamp_min(0))
