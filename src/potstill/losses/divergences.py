"""Distillation losses: cross-entropy and five teacher-student divergences.

Every loss is a pure function of aligned logits (``student_logits[:, t]`` predicts
``labels[:, t]``; the caller does the causal shift) and returns a scalar: the per-token
value summed over the valid tokens and divided by their number (or by ``num_tokens``, the
global count, when gradient accumulation splits a batch into micro-batches).

The KD losses share one wrapper, `_kd_loss`, that selects the valid tokens, upcasts to
float32, softens both sides with ``softmax(logits / T)`` and multiplies by ``T²`` (Hinton
et al. 2015, "Distilling the Knowledge in a Neural Network": it keeps the gradient
magnitude of the soft targets comparable across temperatures). The maths of each
divergence lives in a small per-token function that takes the two distributions as
log-probabilities over the same support, ``(N, S) -> (N,)``: the full vocabulary for a
dense teacher, or, for a cached top-k teacher (`SparseSignal`), the ``k + 1`` buckets
"the teacher's top k ids + one tail bucket" built in `potstill.losses.sparse`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F

from potstill.losses.sparse import sparse_bucket_logprobs
from potstill.losses.tokens import (
    compute_dtype,
    mean_over_tokens,
    select_tokens,
    tempered_logprobs,
)
from potstill.signals.distributions import SparseSignal, TeacherSignal, as_signal
from potstill.util.tokens import IGNORE_INDEX

PerToken = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


# --- per-token divergences: (N, S) log-probabilities -> (N,) -------------------------------


def _kl(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """KL(p ‖ q) per row, from log-probabilities ``(N, S)``; ``0 · log(0 / q) = 0``.

    The guard matters for the sparse tail bucket, which is ``−inf`` on both sides when
    the top k cover the vocabulary. It sits *before* the product, so those entries get a
    zero gradient rather than ``0 · NaN``; elsewhere the value is bit-for-bit unchanged.
    """
    p = log_p.exp()
    return (p * torch.where(p > 0, log_p - log_q, 0.0)).sum(-1)


def _log_mixture(log_p: torch.Tensor, log_q: torch.Tensor, weight_p: float) -> torch.Tensor:
    """``log(weight_p · p + (1 − weight_p) · q)`` computed in log space."""
    return torch.logaddexp(log_p + _log_weight(weight_p), log_q + _log_weight(1.0 - weight_p))


def _log_weight(w: float) -> float:
    return math.log(w) if w > 0 else -math.inf


def _forward_kl_per_token(
    student_logprobs: torch.Tensor, teacher_logprobs: torch.Tensor
) -> torch.Tensor:
    return _kl(teacher_logprobs, student_logprobs)


def _reverse_kl_per_token(
    student_logprobs: torch.Tensor, teacher_logprobs: torch.Tensor
) -> torch.Tensor:
    return _kl(student_logprobs, teacher_logprobs)


def _jsd_per_token(
    student_logprobs: torch.Tensor, teacher_logprobs: torch.Tensor, beta: float
) -> torch.Tensor:
    log_m = _log_mixture(teacher_logprobs, student_logprobs, beta)  # M = β·p + (1−β)·q
    return beta * _kl(teacher_logprobs, log_m) + (1.0 - beta) * _kl(student_logprobs, log_m)


def _tvd_per_token(student_logprobs: torch.Tensor, teacher_logprobs: torch.Tensor) -> torch.Tensor:
    return 0.5 * (teacher_logprobs.exp() - student_logprobs.exp()).abs().sum(-1)


def _skew_kl_per_token(
    student_logprobs: torch.Tensor, teacher_logprobs: torch.Tensor, alpha: float
) -> torch.Tensor:
    log_m = _log_mixture(teacher_logprobs, student_logprobs, alpha)  # α·p + (1−α)·q
    return _kl(teacher_logprobs, log_m)


# --- shared plumbing -------------------------------------------------------------------------


def _valid_tokens(mask: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    """``(B, T)`` bool: the caller's mask, or every token when there is none."""
    if mask is None:
        return torch.ones(like.shape[:2], dtype=torch.bool, device=like.device)
    if mask.shape != like.shape[:2]:
        raise ValueError(f"mask shape {tuple(mask.shape)} != logits (B, T) {tuple(like.shape[:2])}")
    return mask.to(torch.bool)


def _check_unit_interval(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value}")


def _kd_loss(
    per_token: PerToken,
    student_logits: torch.Tensor,
    teacher: torch.Tensor | TeacherSignal,
    mask: torch.Tensor | None,
    temperature: float,
    num_tokens: int | torch.Tensor | None,
) -> torch.Tensor:
    """Mask, temper, upcast and normalise around a per-token divergence; scale by T²."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    signal = as_signal(teacher)
    valid = _valid_tokens(mask, student_logits)  # (B, T)
    # Select before computing, so masked positions (whatever they hold) never enter the
    # value or the gradient: index backward scatters exact zeros there.
    if isinstance(signal, SparseSignal):
        dtype = compute_dtype(student_logits, signal.logprobs, signal.tail_logprob)
        student_logprobs, teacher_logprobs = sparse_bucket_logprobs(
            student_logits, signal, valid, temperature, dtype
        )  # (N, K + 1) each
    else:
        teacher_logits = signal.logits
        if teacher_logits.shape != student_logits.shape:
            raise ValueError(
                f"teacher logits {tuple(teacher_logits.shape)} and student logits "
                f"{tuple(student_logits.shape)} must have the same (B, T, V) shape"
            )
        dtype = compute_dtype(student_logits, teacher_logits)
        student_logprobs = tempered_logprobs(student_logits, valid, temperature, dtype)
        teacher_logprobs = tempered_logprobs(teacher_logits, valid, temperature, dtype)
    divergence = per_token(student_logprobs, teacher_logprobs)  # (N,)
    return temperature**2 * mean_over_tokens(divergence, valid, num_tokens)


# --- public losses ---------------------------------------------------------------------------


def cross_entropy(
    student_logits: torch.Tensor,
    labels: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    num_tokens: int | torch.Tensor | None = None,
) -> torch.Tensor:
    """Next-token cross-entropy, mean over valid tokens (no temperature).

    Args:
        student_logits: ``(B, T, V)`` float logits; ``student_logits[:, t]`` predicts
            ``labels[:, t]`` (already shifted).
        labels: ``(B, T)`` long target ids; ``-100`` marks an ignored token.
        mask: optional ``(B, T)`` bool, True where a token counts; the valid set is
            ``mask & (labels != -100)``.
        num_tokens: divide by this (the global valid-token count) instead of the local one.

    >>> logits = torch.zeros(1, 2, 4)
    >>> labels = torch.tensor([[1, -100]])
    >>> round(cross_entropy(logits, labels).item(), 4)  # log(4)
    1.3863
    """
    if labels.shape != student_logits.shape[:2]:
        raise ValueError(
            f"labels shape {tuple(labels.shape)} != logits (B, T) {tuple(student_logits.shape[:2])}"
        )
    valid = _valid_tokens(mask, student_logits) & (labels != IGNORE_INDEX)  # (B, T)
    logits = select_tokens(student_logits, valid).to(compute_dtype(student_logits))  # (N, V)
    per_token = F.cross_entropy(logits, labels[valid], reduction="none")  # (N,)
    return mean_over_tokens(per_token, valid, num_tokens)


def forward_kl(
    student_logits: torch.Tensor,
    teacher: torch.Tensor | TeacherSignal,
    mask: torch.Tensor | None = None,
    temperature: float = 1.0,
    *,
    num_tokens: int | torch.Tensor | None = None,
) -> torch.Tensor:
    """Forward KL, ``T² · KL(p_teacher ‖ q_student)``: the classic KD loss (Hinton et al.
    2015). Mode-covering: the student is pushed to put mass wherever the teacher does.

    Args:
        student_logits: ``(B, T, V)`` float logits.
        teacher: ``(B, T, V)`` raw teacher logits, or a `TeacherSignal`.
        mask: optional ``(B, T)`` bool, True where a token counts (None = all).
        temperature: both sides are softened as ``softmax(logits / T)``.
        num_tokens: divide by this (the global valid-token count) instead of the local one.

    >>> student = torch.zeros(1, 2, 3)
    >>> teacher = torch.tensor([[[2.0, 0.0, 0.0], [0.0, 0.0, 0.0]]])
    >>> forward_kl(teacher, teacher).item()
    0.0
    >>> round(forward_kl(student, teacher).item(), 4)  # only the first token differs
    0.2165
    >>> mask = torch.tensor([[False, True]])
    >>> forward_kl(student, teacher, mask).item()
    0.0
    """
    return _kd_loss(_forward_kl_per_token, student_logits, teacher, mask, temperature, num_tokens)


def reverse_kl(
    student_logits: torch.Tensor,
    teacher: torch.Tensor | TeacherSignal,
    mask: torch.Tensor | None = None,
    temperature: float = 1.0,
    *,
    num_tokens: int | torch.Tensor | None = None,
) -> torch.Tensor:
    """Reverse KL, ``T² · KL(q_student ‖ p_teacher)``: mode-seeking, as in MiniLLM (Gu et
    al. 2024) — the student concentrates on the teacher's main modes.

    Args:
        student_logits: ``(B, T, V)`` float logits.
        teacher: ``(B, T, V)`` raw teacher logits, or a `TeacherSignal`.
        mask: optional ``(B, T)`` bool, True where a token counts (None = all).
        temperature: both sides are softened as ``softmax(logits / T)``.
        num_tokens: divide by this (the global valid-token count) instead of the local one.
    """
    return _kd_loss(_reverse_kl_per_token, student_logits, teacher, mask, temperature, num_tokens)


def jsd(
    student_logits: torch.Tensor,
    teacher: torch.Tensor | TeacherSignal,
    mask: torch.Tensor | None = None,
    temperature: float = 1.0,
    beta: float = 0.5,
    *,
    num_tokens: int | torch.Tensor | None = None,
) -> torch.Tensor:
    """Generalized Jensen-Shannon divergence from GKD (Agarwal et al. 2024, "On-Policy
    Distillation of Language Models"), times ``T²``:

    ``JSD_β = β·KL(p ‖ M) + (1−β)·KL(q ‖ M)`` with ``M = β·p_teacher + (1−β)·q_student``.

    ``beta=0.5`` is the symmetric JSD, bounded by ``log 2`` (so the loss by ``T²·log 2``).
    At ``beta`` 0 or 1 the mixture equals one side and the divergence is 0.

    Args:
        student_logits: ``(B, T, V)`` float logits.
        teacher: ``(B, T, V)`` raw teacher logits, or a `TeacherSignal`.
        mask: optional ``(B, T)`` bool, True where a token counts (None = all).
        temperature: both sides are softened as ``softmax(logits / T)``.
        beta: the teacher's weight in the mixture ``M``, in ``[0, 1]``.
        num_tokens: divide by this (the global valid-token count) instead of the local one.
    """
    _check_unit_interval("jsd beta", beta)
    per_token = partial(_jsd_per_token, beta=beta)
    return _kd_loss(per_token, student_logits, teacher, mask, temperature, num_tokens)


def tvd(
    student_logits: torch.Tensor,
    teacher: torch.Tensor | TeacherSignal,
    mask: torch.Tensor | None = None,
    temperature: float = 1.0,
    *,
    num_tokens: int | torch.Tensor | None = None,
) -> torch.Tensor:
    """Total variation distance, ``T² · ½·Σ|p_teacher − q_student|`` per token, in
    ``[0, T²]``; one of the f-divergences studied for distillation by Wen et al. 2023,
    "f-Divergence Minimization for Sequence-Level Knowledge Distillation".

    Args:
        student_logits: ``(B, T, V)`` float logits.
        teacher: ``(B, T, V)`` raw teacher logits, or a `TeacherSignal`.
        mask: optional ``(B, T)`` bool, True where a token counts (None = all).
        temperature: both sides are softened as ``softmax(logits / T)``.
        num_tokens: divide by this (the global valid-token count) instead of the local one.
    """
    return _kd_loss(_tvd_per_token, student_logits, teacher, mask, temperature, num_tokens)


def skew_kl(
    student_logits: torch.Tensor,
    teacher: torch.Tensor | TeacherSignal,
    mask: torch.Tensor | None = None,
    temperature: float = 1.0,
    alpha: float = 0.1,
    *,
    num_tokens: int | torch.Tensor | None = None,
) -> torch.Tensor:
    """Skew forward KL from DistiLLM (Ko et al. 2024, "DistiLLM: Towards Streamlined
    Distillation for Large Language Models"), times ``T²``:

    ``KL(p_teacher ‖ α·p_teacher + (1−α)·q_student)``.

    Mixing a little teacher into the student keeps the log-ratio bounded (by ``−log α``)
    where the student puts near-zero mass. ``alpha=0`` is `forward_kl`; ``alpha=1`` is 0.

    Args:
        student_logits: ``(B, T, V)`` float logits.
        teacher: ``(B, T, V)`` raw teacher logits, or a `TeacherSignal`.
        mask: optional ``(B, T)`` bool, True where a token counts (None = all).
        temperature: both sides are softened as ``softmax(logits / T)``.
        alpha: the teacher's weight in the skewed student, in ``[0, 1]``.
        num_tokens: divide by this (the global valid-token count) instead of the local one.
    """
    _check_unit_interval("skew_kl alpha", alpha)
    per_token = partial(_skew_kl_per_token, alpha=alpha)
    return _kd_loss(per_token, student_logits, teacher, mask, temperature, num_tokens)
