"""The recipe's loss, fused with the student's output projection and computed in chunks.

For a large vocabulary the student's ``(tokens, V)`` logits, and the float32
log-softmaxes and products every loss term keeps for backward, dominate a distillation
step's memory. `chunked_kd_loss` takes the final hidden states instead of the logits and
never holds more than one chunk of them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from potstill.losses.divergences import IGNORE_INDEX
from potstill.losses.terms import LossTerm, combine_losses
from potstill.signals.distributions import DenseSignal, SparseSignal, TeacherSignal, as_signal


def chunked_kd_loss(
    student_hidden: torch.Tensor,
    lm_head_weight: torch.Tensor,
    teacher: torch.Tensor | TeacherSignal | None,
    terms: Sequence[LossTerm],
    labels: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    num_tokens: int | torch.Tensor | None = None,
    chunk_size: int = 128,
    lm_head_bias: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """`combine_losses` on ``student_hidden @ lm_head_weight.T``, one chunk at a time.

    Value and gradients (w.r.t. the hidden states, the weight and the bias) equal those
    of ``combine_losses(terms, F.linear(student_hidden, lm_head_weight, lm_head_bias),
    labels, teacher, mask)`` up to float summation order: every chunk is normalised by the
    global valid-token count, so the chunks' contributions add up exactly.

    Only valid tokens (``mask & (labels != -100)``) are projected; padding and prompt
    tokens cost nothing. They are cut into chunks of ``chunk_size``. When a gradient is
    wanted, each chunk's backward runs *during the forward pass* (`_FusedHeadLoss`):
    autograd differentiates the chunk's terms w.r.t. its ``(c, V)`` logits, the two small
    matmuls of the linear layer's backward turn that into the chunk's share of the
    hidden-state and weight gradients, and the chunk's logits are freed before the next
    chunk starts. Peak memory, with ``c = chunk_size``: one chunk's logits, the terms'
    ``(c, V)`` temporaries and their gradient, plus the gradients kept for backward
    (``V × H`` for the weight, ``N × H`` for the hidden states). The lm head costs the
    same FLOPs as unchunked (``6NHV``), nothing is recomputed. The price: the weight
    gradient buffer lives from forward to backward, and the backward work is done even
    if no backward follows (it is skipped when no input needs a gradient).

    A dense teacher's ``(B, T, V)`` logits are the caller's and exist in full anyway
    (a live teacher made them); their rows are gathered one chunk at a time. A
    `SparseSignal` is small.

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

    flat_valid = valid.flatten()
    hidden = student_hidden.reshape(batch * seq, hidden_size)
    if bool(flat_valid.all()):
        positions = torch.arange(batch * seq, device=hidden.device)  # no gather: every token counts
    else:
        positions = flat_valid.nonzero().squeeze(-1)  # (N,) flat indices of valid tokens
        hidden = hidden.index_select(0, positions)
    count = positions.numel() if num_tokens is None else num_tokens
    flat_labels = labels.flatten()
    parts: dict[str, torch.Tensor] = {}

    def chunk_loss(logits: torch.Tensor, start: int, end: int) -> torch.Tensor:
        """One chunk's ``(c, V)`` logits as a batch of one sequence; adds to ``parts``."""
        rows = positions[start:end]
        teacher_rows = None if signal is None else _take(signal, rows)
        loss, chunk_parts = combine_losses(
            terms, logits[None], flat_labels[rows][None], teacher_rows, num_tokens=count
        )
        for key, value in chunk_parts.items():
            parts[key] = value if key not in parts else parts[key] + value
        return loss

    inputs = (hidden, lm_head_weight, lm_head_bias)
    wants_grad = any(t is not None and t.requires_grad for t in inputs)
    if torch.is_grad_enabled() and wants_grad:
        total = _FusedHeadLoss.apply(hidden, lm_head_weight, lm_head_bias, chunk_loss, chunk_size)
    else:
        total = _chunks_no_grad(hidden, lm_head_weight, lm_head_bias, chunk_loss, chunk_size)
    return total, parts


ChunkLoss = Callable[[torch.Tensor, int, int], torch.Tensor]


def _spans(n: int, chunk_size: int) -> list[tuple[int, int]]:
    """``[start, end)`` of each chunk; one empty chunk when ``n = 0``."""
    return [(s, min(s + chunk_size, n)) for s in range(0, n, chunk_size)] or [(0, 0)]


def _chunks_no_grad(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    chunk_loss: ChunkLoss,
    chunk_size: int,
) -> torch.Tensor:
    with torch.no_grad():
        losses = [
            chunk_loss(F.linear(hidden[start:end], weight, bias), start, end)
            for start, end in _spans(hidden.shape[0], chunk_size)
        ]
    return torch.stack(losses).sum()


class _FusedHeadLoss(torch.autograd.Function):
    """``Σ_chunks chunk_loss(F.linear(hidden_chunk, weight, bias))`` whose gradients are
    computed chunk by chunk in forward and only scaled by ``grad_output`` in backward."""

    @staticmethod
    def forward(
        ctx: Any,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        chunk_loss: ChunkLoss,
        chunk_size: int,
    ) -> torch.Tensor:
        needs_hidden, needs_weight, needs_bias = ctx.needs_input_grad[:3]
        grad_hidden = torch.zeros_like(hidden) if needs_hidden else None
        grad_weight = torch.zeros_like(weight) if needs_weight else None
        grad_bias = torch.zeros_like(bias) if needs_bias else None
        total = hidden.new_zeros((), dtype=torch.promote_types(hidden.dtype, torch.float32))
        for start, end in _spans(hidden.shape[0], chunk_size):
            chunk = hidden[start:end]
            logits = F.linear(chunk, weight, bias).requires_grad_()  # (c, V), a leaf
            with torch.enable_grad():
                loss = chunk_loss(logits, start, end)
                (grad_logits,) = torch.autograd.grad(loss, logits)
            del logits
            if grad_hidden is not None:
                grad_hidden[start:end] = grad_logits @ weight
            if grad_weight is not None:
                if grad_logits.dtype == grad_weight.dtype == chunk.dtype:
                    grad_weight.addmm_(grad_logits.T, chunk)
                else:  # under autocast the chunk's logits (and gradient) are bf16/fp16
                    grad_weight += grad_logits.T @ chunk
            if grad_bias is not None:
                grad_bias += grad_logits.sum(0)
            total = total + loss.detach()
        ctx.save_for_backward(grad_hidden, grad_weight, grad_bias)
        return total

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        scaled = [None if g is None else g * grad_output for g in ctx.saved_tensors]
        return (*scaled, None, None)


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
