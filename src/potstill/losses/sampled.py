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

CHUNK_BYTES = 1 << 25  # glibc's mmap threshold: a (c, V) chunk below it reuses heap memory


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
    scaled = teacher_logits.to(dtype).reshape(-1, vocab)  # (N, V)
    rows = scaled.shape[0]  # (N, ·) from here on
    # A few thousand rows a batch: drawn a chunk at a time, so each chunk's (c, V)
    # probabilities stay under glibc's 32 MB mmap threshold and reuse the same memory;
    # as one (N, V) tensor, fresh pages cost the teacher pass as much as its LM head did
    # (bench/profile_step.py).
    chunk = max(1, CHUNK_BYTES // (vocab * scaled.element_size()) - 1)
    parts = [
        _draw(scaled[start : start + chunk], samples, top, temperature, generator)
        for start in range(0, rows, chunk)
    ]
    top_ids, top_logprobs, log_rest, drawn = (torch.cat(p) for p in zip(*parts, strict=True))
    drawn, _ = drawn.sort(dim=-1)  # (N, S): repeats side by side
    first = torch.ones_like(drawn, dtype=torch.bool)
    first[:, 1:] = drawn[:, 1:] != drawn[:, :-1]  # (N, S): a distinct id's first slot
    run = first.long().cumsum(dim=-1) - 1  # (N, S): which distinct id each slot holds
    counts = torch.zeros_like(run).scatter_add_(-1, run, torch.ones_like(run)).gather(-1, run)
    share = log_rest + (counts.to(dtype) / samples).log()  # (N, S): log(r · count / S)
    drawn_logprobs = torch.where(first, share, -torch.inf)

    ids = torch.cat([top_ids, drawn], dim=-1)  # (N, K)
    free = ~torch.cat([torch.ones_like(top_ids, dtype=torch.bool), first], dim=-1)  # (N, K)
    ids = torch.where(free, _unused_ids(ids, free, vocab), ids)
    out_logprobs = torch.cat([top_logprobs, drawn_logprobs], dim=-1)  # (N, K)
    tail = torch.full((rows,), -torch.inf, dtype=dtype, device=drawn.device)
    k = top + samples
    return SparseSignal(
        ids.reshape(batch, length, k),
        out_logprobs.reshape(batch, length, k),
        tail.reshape(batch, length),
        temperature,
    )


def _draw(
    logits: torch.Tensor,
    samples: int,
    top: int,
    temperature: float,
    generator: torch.Generator | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """For ``(c, V)`` logits: the top ids ``(c, top)``, their log-probabilities, the log of
    the mass left to sample ``(c, 1)``, and ``samples`` draws from it ``(c, S)``.

    Probabilities, not log-probabilities: one ``(c, V)`` tensor, and the top ids'
    log-probabilities and the sampled mass are read off the few ids that need them.
    """
    scaled = logits / temperature if temperature != 1.0 else logits
    probs = F.softmax(scaled, dim=-1)  # (c, V)
    top_ids = probs.topk(top, dim=-1).indices  # (c, top)
    top_logprobs = _log_probs(scaled, top_ids)  # (c, top)
    if top:
        probs.scatter_(-1, top_ids, 0.0)  # (c, V): the mass left to sample
        log_rest = probs.sum(dim=-1, keepdim=True).log()  # (c, 1): log r
        # Rows whose top ids hold all the mass draw anyway (uniformly); those draws weigh 0.
        spent = ~torch.isfinite(log_rest)
        if spent.any():
            probs[spent.squeeze(-1)] = 1.0
    else:
        log_rest = probs.new_zeros(probs.shape[0], 1)  # every id is sampled: r = 1
    drawn = torch.multinomial(probs, samples, replacement=True, generator=generator)
    return top_ids, top_logprobs, log_rest, drawn


def _log_probs(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """``log_softmax(logits)`` at ``ids`` (``(N, V)`` and ``(N, k)``), without the
    ``(N, V)`` log-probabilities: ``logits[ids] − logsumexp(logits)``; no pass at all for
    no ids."""
    if ids.shape[-1] == 0:
        return logits.new_zeros(ids.shape)
    return logits.gather(-1, ids) - logits.logsumexp(dim=-1, keepdim=True)


def _unused_ids(ids: torch.Tensor, free: torch.Tensor, vocab: int) -> torch.Tensor:
    """For each row of ``ids`` ``(N, K)``, distinct ids it does not use, in ``free``'s
    slots (the smallest such ids, in order); other slots are left as they are."""
    rows, k = ids.shape
    size = min(vocab, 2 * k)
    pool = torch.arange(size, device=ids.device)  # (P,): >= k unused per row
    # Mark the pool ids a row uses (O(N·K)); other ids land in a spare last column.
    used = torch.where(~free & (ids < size), ids, size)  # (N, K)
    taken = torch.zeros(rows, size + 1, dtype=torch.bool, device=ids.device)
    taken = taken.scatter_(-1, used, True)[:, :size]  # (N, P)
    # Unused pool ids first, in increasing order (a stable sort on "taken").
    order = torch.sort(taken.to(torch.int8), dim=-1, stable=True).indices  # (N, P)
    unused = pool[order]  # (N, P)
    rank = free.long().cumsum(dim=-1) - 1  # (N, K): the i-th free slot gets the i-th unused
    return unused.gather(-1, rank.clamp_min(0))
