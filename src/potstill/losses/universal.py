"""Universal Logit Distillation: a logit loss that needs no shared vocabulary.

Boizard et al. 2024, "Towards Cross-Tokenizer Distillation: the Universal Logit
Distillation Loss for LLMs". Per token, the student's probabilities sorted in decreasing
order are compared with the teacher's sorted in decreasing order by their L1 distance,
which is the Wasserstein-1 distance between the two distributions under the cost that
moves mass between ranks at a price of one. Sorting forgets which id holds which
probability, so the two models may have different vocabularies (of different sizes: the
shorter one is padded with zeros). What the student learns is the *shape* of the
teacher's distribution (how sure it is, how the mass spreads), not which token; the hard
label's cross-entropy, beside it in the recipe, says which.

With a cached teacher (`SparseSignal`: its top k log-probabilities and the mass left
outside them) the ranks past k are unknown. They are compared as one tail bucket: the
teacher's stored tail mass against the student's mass outside its own k likeliest ids,
``Σ_{r ≤ k} |s_r − t_r| + |Σ_{r > k} s_r − tail|``. That is never more than the full
distance (the triangle inequality over the ranks past k), equal to it when the tail is
empty, and zero exactly when the two agree on the k ranks and the tail.

A cache taught across tokenizers (`potstill.cache.cross_teach`) marks the positions where
no teacher position predicts the same text by giving them no kept mass: every
log-probability at the codec's floor (``≤ NO_SIGNAL``, which a real top-1 log-probability,
at least ``−log V``, never is). Those positions count in nothing but the token count the
loss is divided by, so the loss per training token is comparable with cross-entropy's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from potstill.losses.sparse import retemper_buckets
from potstill.losses.tokens import checked_tokens, compute_dtype, mean_over_tokens, select_tokens
from potstill.signals.distributions import DenseSignal, SparseSignal, TeacherSignal, as_signal

# A kept log-probability at or below this is no signal (the codec's floor is −32; a real
# top-1 log-probability is at least −log V, −12 for V = 151,936).
NO_SIGNAL = -30.0


def sorted_l1(student_probs: torch.Tensor, teacher_probs: torch.Tensor) -> torch.Tensor:
    """``Σ_r |sort↓(student)_r − sort↓(teacher)_r|`` per row, the shorter row padded with
    zeros.

    Args:
        student_probs: ``(N, V_s)`` probabilities.
        teacher_probs: ``(N, V_t)`` probabilities.

    Returns:
        ``(N,)``.

    >>> value = sorted_l1(torch.tensor([[0.2, 0.8]]), torch.tensor([[0.8, 0.1, 0.1]]))
    >>> round(value.item(), 6)  # |0.8 − 0.8| + |0.2 − 0.1| + |0 − 0.1|
    0.2
    """
    width = max(student_probs.shape[-1], teacher_probs.shape[-1])
    student = F.pad(
        student_probs.sort(dim=-1, descending=True).values, (0, width - student_probs.shape[-1])
    )
    teacher = F.pad(
        teacher_probs.sort(dim=-1, descending=True).values, (0, width - teacher_probs.shape[-1])
    )
    return (student - teacher).abs().sum(-1)


def uld(
    student_logits: torch.Tensor,
    teacher: torch.Tensor | TeacherSignal,
    mask: torch.Tensor | None = None,
    temperature: float = 1.0,
    *,
    num_tokens: int | torch.Tensor | None = None,
) -> torch.Tensor:
    """The ULD distance between the student's and the teacher's sorted next-token
    distributions, summed over the valid positions that have a teacher signal and divided
    by the number of valid positions (or ``num_tokens``, the global count).

    No ``T²`` factor: both sides are softened by ``temperature`` (1 in recipes: the
    registry gives ULD no temperature), and the distance stays in ``[0, 2]`` per token.

    Args:
        student_logits: ``(B, T, V_s)`` float logits.
        teacher: ``(B, T, V_t)`` teacher logits (any ``V_t``), a `DenseSignal`, or a
            `SparseSignal` of ``(B, T, K)`` ids (unused: only the probabilities count),
            log-probabilities and a ``(B, T)`` tail.
        mask: optional ``(B, T)`` bool, True where a token counts.
        temperature: softens both sides, ``softmax(logits / T)``.
        num_tokens: divide by this instead of the local count of valid positions.

    >>> logits = torch.log(torch.tensor([[[0.7, 0.2, 0.1]]]))
    >>> uld(logits, torch.log(torch.tensor([[[0.1, 0.2, 0.3, 0.4]]]))).item() > 0
    True
    >>> round(uld(logits, logits[..., [2, 0, 1]]).item(), 6)  # the same, other ids
    0.0
    """
    valid = checked_tokens(student_logits, mask, temperature)
    signal = as_signal(teacher)
    bt = tuple(student_logits.shape[:2])
    if isinstance(signal, SparseSignal):
        check_sparse(signal, bt)
        dtype = compute_dtype(student_logits, signal.logprobs)
        has_signal = signal.logprobs.amax(dim=-1) > NO_SIGNAL  # (B, T)
        rows = valid & has_signal
        student = _probs(student_logits, rows, temperature, dtype)  # (N, V_s)
        teacher_buckets = retemper_buckets(
            select_tokens(signal.logprobs, rows).to(dtype),
            select_tokens(signal.tail_logprob[..., None], rows)[:, 0].to(dtype),
            from_temperature=signal.temperature,
            to_temperature=temperature,
        ).exp()  # (N, K + 1), the tail last
        per_token = _bucketed_l1(student, teacher_buckets)
    else:
        _check_dense(signal, bt)
        dtype = compute_dtype(student_logits, signal.logits)
        student = _probs(student_logits, valid, temperature, dtype)
        teacher_probs = _probs(signal.logits, valid, temperature, dtype)
        per_token = sorted_l1(student, teacher_probs)
    return mean_over_tokens(per_token, valid, num_tokens)


def _bucketed_l1(student: torch.Tensor, teacher_buckets: torch.Tensor) -> torch.Tensor:
    """Sorted L1 over the teacher's ``k`` ranks plus one tail bucket each side.

    Args:
        student: ``(N, V_s)`` probabilities.
        teacher_buckets: ``(N, K + 1)`` probabilities, the k kept ids (any order), then the
            tail.
    """
    k = teacher_buckets.shape[-1] - 1
    teacher_top = teacher_buckets[:, :k].sort(dim=-1, descending=True).values  # (N, K)
    kept = min(k, student.shape[-1])
    student_top = F.pad(student.topk(kept, dim=-1).values, (0, k - kept))  # (N, K), sorted
    student_tail = (1.0 - student_top.sum(-1)).clamp_min(0.0)  # (N,)
    return (student_top - teacher_top).abs().sum(-1) + (student_tail - teacher_buckets[:, k]).abs()


def _probs(
    logits: torch.Tensor, rows: torch.Tensor, temperature: float, dtype: torch.dtype
) -> torch.Tensor:
    selected = select_tokens(logits, rows).to(dtype)
    if temperature != 1.0:
        selected = selected / temperature
    return selected.softmax(dim=-1)


def check_sparse(signal: SparseSignal, bt: tuple[int, ...]) -> None:
    """Refuse a sparse signal of the wrong shapes or dtypes for ``(B, T)`` ``bt``."""
    ids, logprobs, tail = signal.ids, signal.logprobs, signal.tail_logprob
    if ids.dim() != 3 or tuple(ids.shape[:2]) != bt or logprobs.shape != ids.shape:
        raise ValueError(
            f"sparse teacher ids {tuple(ids.shape)} and logprobs {tuple(logprobs.shape)} must "
            f"both be (B, T, K) with (B, T) {bt}"
        )
    if tuple(tail.shape) != bt:
        raise ValueError(f"sparse teacher tail_logprob {tuple(tail.shape)} must be (B, T) {bt}")
    if ids.is_floating_point() or ids.is_complex():
        raise ValueError(f"sparse teacher ids must be integer, got {ids.dtype}")
    if not (logprobs.is_floating_point() and tail.is_floating_point()):
        raise ValueError(
            f"sparse teacher logprobs ({logprobs.dtype}) and tail ({tail.dtype}) must be float"
        )
    if signal.temperature <= 0:
        raise ValueError(f"sparse teacher temperature must be > 0, got {signal.temperature}")


def _check_dense(signal: DenseSignal, bt: tuple[int, ...]) -> None:
    logits = signal.logits
    if not logits.is_floating_point() or logits.dim() != 3 or tuple(logits.shape[:2]) != bt:
        raise ValueError(
            f"teacher logits must be float (B, T, V) with (B, T) {bt}, got {logits.dtype} "
            f"{tuple(logits.shape)}"
        )
