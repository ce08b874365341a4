"""The recipe's loss, fused with the student's output projection and computed in chunks.

For a large vocabulary the student's ``(tokens, V)`` logits, and the float32
log-softmaxes and products every loss term keeps for backward, dominate a distillation
step's memory. `chunked_kd_loss` takes the final hidden states instead of the logits and
never holds more than one chunk of them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from potstill.config import LossTerm
from potstill.losses.divergences import IGNORE_INDEX
from potstill.losses.signal import DenseSignal, SparseSignal, TeacherSignal, as_signal
from potstill.losses.terms import combine_losses


def chunked_kd_loss(
    student_hidden: torch.Tensor,
    lm_head_weight: torch.Tensor,
    teacher: torch.Tensor | TeacherSignal | None,
    terms: Sequence[LossTerm],
    labels: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    num_tokens: int | torch.Tensor | None = None,
    chunk_size: int = 1024,
    lm_head_bias: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """`combine_losses` on ``student_hidden @ lm_head_weight.T``, one chunk at a time.

    Value and gradients (w.r.t. the hidden states, the weight and the bias) equal those
    of ``combine_losses(terms, F.linear(student_hidden, lm_head_weight, lm_head_bias),
    labels, teacher, mask)`` up to float summation order: every chunk is normalised by the
    global valid-token count, so the chunks' contributions add up exactly.

    Only valid tokens (``mask & (labels != -100)``) are projected; padding and prompt
    tokens cost nothing. They are cut into chunks of ``chunk_size``, and each chunk runs
    under non-reentrant `torch.utils.checkpoint`. Peak memory, with ``c = chunk_size``:

    - forward: one chunk's ``(c, V)`` logits and the terms' ``(c, V)`` temporaries. A
      checkpoint keeps only its inputs (a view of the hidden states, the token
      positions), so nothing ``V``-sized outlives its chunk — a dense teacher's rows are
      gathered *inside* the chunk too.
    - backward: autograd reaches the chunks one after another; each is recomputed when
      its backward starts and its intermediates are freed when it ends. Peak: one
      chunk's intermediates plus the gradients themselves (``V × H`` for the weight,
      ``N × H`` for the hidden states).

    The price is one extra forward of each chunk (lm-head FLOPs ``6NHV -> 8NHV``).
    A Liger-style autograd Function that computes the gradients during forward would
    avoid it, but it holds a ``V × H`` gradient buffer from forward to backward, does
    that work even when no backward follows, and needs hand-written gradients of every
    term; the checkpoint reuses autograd's own, exactly.

    A dense teacher's ``(B, T, V)`` logits are the caller's and exist in full anyway
    (a live teacher made them); a `SparseSignal` is small.

    Args:
        student_hidden: ``(B, T, H)`` the student's final hidden states (after the final
            norm: what its lm head consumes), aligned with ``labels``.
        lm_head_weight: ``(V, H)`` the student's output projection.
        teacher: ``(B, T, V)`` teacher logits, a `DenseSignal` or a `SparseSignal`;
            None only when every term is cross_entropy.
        terms: the recipe's loss terms.
        labels: ``(B, T)`` long target ids; ``-100`` marks an ignored token.
        mask: optional ``(B, T)`` bool, True where a token counts.
        num_tokens: divide by this (the global valid-token count across micro-batches)
            instead of the local one.
        chunk_size: tokens per chunk.
        lm_head_bias: optional ``(V,)`` bias of the output projection.

    Returns:
        The weighted total and each term's unweighted value (detached), as
        `combine_losses`.

    >>> hidden, weight = torch.randn(2, 3, 4), torch.randn(8, 4)
    >>> teacher, labels = torch.randn(2, 3, 8), torch.randint(0, 8, (2, 3))
    >>> terms = [LossTerm(loss="forward_kl", weight=0.5, temperature=2.0),
    ...          LossTerm(loss="cross_entropy", weight=0.5)]
    >>> total, parts = chunked_kd_loss(hidden, weight, teacher, terms, labels, chunk_size=4)
    >>> full, _ = combine_losses(terms, hidden @ weight.T, labels, teacher)
    >>> torch.allclose(total, full)
    True
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if student_hidden.dim() != 3:
        raise ValueError(f"student_hidden must be (B, T, H), got {tuple(student_hidden.shape)}")
    batch, seq, hidden_size = student_hidden.shape
    if lm_head_weight.dim() != 2 or lm_head_weight.shape[1] != hidden_size:
        raise ValueError(
            f"lm_head_weight {tuple(lm_head_weight.shape)} must be (V, H) with H = "
            f"{hidden_size}, the hidden states' last dimension"
        )
    if tuple(labels.shape) != (batch, seq):
        raise ValueError(f"labels shape {tuple(labels.shape)} != hidden (B, T) {(batch, seq)}")
    valid = labels != IGNORE_INDEX  # (B, T), the token set every term shares
    if mask is not None:
        if mask.shape != labels.shape:
            raise ValueError(f"mask shape {tuple(mask.shape)} != labels {tuple(labels.shape)}")
        valid = valid & mask.to(torch.bool)
    signal = None if teacher is None else _flat_signal(as_signal(teacher), batch, seq)

    positions = valid.flatten().nonzero().squeeze(-1)  # (N,) flat indices of valid tokens
    count = positions.numel() if num_tokens is None else num_tokens
    hidden = student_hidden.reshape(batch * seq, hidden_size).index_select(0, positions)
    # `split`, not slicing: its backward writes every chunk's gradient into one (N, H).
    hidden_chunks = hidden.split(chunk_size)  # one empty chunk when N = 0
    position_chunks = positions.split(chunk_size)
    flat_labels = labels.flatten()

    total: torch.Tensor | None = None
    parts: dict[str, torch.Tensor] = {}
    for hidden_chunk, position_chunk in zip(hidden_chunks, position_chunks, strict=True):
        args = (hidden_chunk, lm_head_weight, lm_head_bias, signal, position_chunk)
        kwargs = {"labels": flat_labels, "terms": terms, "num_tokens": count}
        if torch.is_grad_enabled():
            # No randomness inside, so no RNG state to save for the recomputation.
            chunk_total, chunk_parts = checkpoint(
                _chunk_loss, *args, **kwargs, use_reentrant=False, preserve_rng_state=False
            )
        else:
            chunk_total, chunk_parts = _chunk_loss(*args, **kwargs)
        total = chunk_total if total is None else total + chunk_total
        for key, value in chunk_parts.items():
            parts[key] = value if key not in parts else parts[key] + value
    assert total is not None  # `split` yields at least one chunk
    return total, parts


def _chunk_loss(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    signal: TeacherSignal | None,
    positions: torch.Tensor,
    *,
    labels: torch.Tensor,
    terms: Sequence[LossTerm],
    num_tokens: int | torch.Tensor,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One chunk as a batch of one sequence: ``(1, c, V)`` logits, ``(1, c)`` labels."""
    logits = F.linear(hidden, weight, bias)[None]  # (1, c, V)
    teacher = None if signal is None else _take(signal, positions)
    return combine_losses(terms, logits, labels[positions][None], teacher, num_tokens=num_tokens)


def _flat_signal(signal: TeacherSignal, batch: int, seq: int) -> TeacherSignal:
    """The signal with ``(B, T)`` flattened to ``B·T`` rows (views, no copies)."""
    if isinstance(signal, DenseSignal):
        logits = signal.logits
        if logits.dim() != 3 or tuple(logits.shape[:2]) != (batch, seq):
            raise ValueError(
                f"teacher logits {tuple(logits.shape)} must be (B, T, V) with (B, T) {(batch, seq)}"
            )
        return DenseSignal(logits.reshape(batch * seq, -1))
    ids, logprobs, tail = signal.ids, signal.logprobs, signal.tail_logprob
    if ids.dim() != 3 or tuple(ids.shape[:2]) != (batch, seq) or logprobs.shape != ids.shape:
        raise ValueError(
            f"sparse teacher ids {tuple(ids.shape)} and logprobs {tuple(logprobs.shape)} "
            f"must both be (B, T, K) with (B, T) {(batch, seq)}"
        )
    if tuple(tail.shape) != (batch, seq):
        raise ValueError(f"sparse teacher tail_logprob {tuple(tail.shape)} must be (B, T)")
    return SparseSignal(
        ids.reshape(batch * seq, -1),
        logprobs.reshape(batch * seq, -1),
        tail.reshape(batch * seq),
        signal.temperature,
    )


def _take(signal: TeacherSignal, positions: torch.Tensor) -> TeacherSignal:
    """The rows at ``positions`` of a flattened signal, as a batch of one sequence."""
    if isinstance(signal, DenseSignal):
        return DenseSignal(signal.logits.index_select(0, positions)[None])  # (1, c, V)
    return SparseSignal(
        signal.ids.index_select(0, positions)[None],  # (1, c, K)
        signal.logprobs.index_select(0, positions)[None],  # (1, c, K)
        signal.tail_logprob.index_select(0, positions)[None],  # (1, c)
        signal.temperature,
    )
