"""The sparse top-k teacher signal as a distribution over ``k + 1`` buckets.

A cached teacher keeps, per token, its ``k`` most likely ids with their log-probabilities
and the log of the mass left outside them (`SparseSignal`). The KD losses then compare
teacher and student on the support "the k ids + one tail bucket": the teacher's tail is
its stored tail mass, the student's is ``1 − Σ`` of its own probabilities on the k ids,
taken from the student's full softmax. With ``k = V`` the tail is empty on both sides
(``tail_logprob = −inf``) and every divergence equals the dense one exactly.

The student's tail is a log-sum-exp over the ids *outside* the top k, not
``log1p(−Σ top-k probs)``: the latter cancels catastrophically when the top k hold nearly
all the mass (in float32, any tail below ~6e-8 rounds to ``log 0``). A cache should store
its tail the same way (as `top_k_signal` does): a teacher tail of ``−inf`` means exactly
zero mass, which forward KL, JSD, TVD and skew KL take in their stride (``0 · log 0 = 0``)
but which makes reverse KL infinite as soon as the student puts mass there.

The ids of a token must be distinct and below the student's vocabulary size; that is not
checked here, on the hot path: a cache loader validates it once.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from potstill.losses.tokens import select_tokens, tempered_logprobs
from potstill.signals.distributions import SparseSignal


def top_k_signal(teacher_logits: torch.Tensor, k: int, temperature: float = 1.0) -> SparseSignal:
    """The `SparseSignal` that keeps the ``k`` most likely ids of ``softmax(logits / T)``.

    Args:
        teacher_logits: ``(B, T, V)`` raw teacher logits.
        k: how many ids to keep per token, ``1 <= k <= V``.
        temperature: the softmax temperature the log-probabilities are taken at.

    >>> signal = top_k_signal(torch.log(torch.tensor([[[0.5, 0.3, 0.2]]])), k=2)
    >>> signal.ids.tolist(), [round(p, 4) for p in signal.logprobs.exp().flatten().tolist()]
    ([[[0, 1]]], [0.5, 0.3])
    >>> round(signal.tail_logprob.exp().item(), 4)
    0.2
    """
    vocab = teacher_logits.shape[-1]
    if not 1 <= k <= vocab:
        raise ValueError(f"k must be in [1, {vocab}] (the vocabulary size), got {k}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    dtype = torch.promote_types(teacher_logits.dtype, torch.float32)  # float64 stays
    scores = teacher_logits.to(dtype)
    if temperature != 1.0:
        scores = scores / temperature
    # No (B, T, V) log-softmax: the normaliser, the top k and the log-sum-exp of the rest.
    log_total = scores.logsumexp(dim=-1)  # (B, T)
    top_scores, ids = scores.topk(k, dim=-1)  # (B, T, K)
    if k < vocab:
        tail_logprob = scores.scatter(-1, ids, -torch.inf).logsumexp(dim=-1) - log_total
    else:
        tail_logprob = torch.full_like(log_total, -torch.inf)
    return SparseSignal(ids, top_scores - log_total[..., None], tail_logprob, temperature)


def sparse_bucket_logprobs(
    student_logits: torch.Tensor,
    signal: SparseSignal,
    valid: torch.Tensor,
    temperature: float,
    dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Student and teacher log-probabilities over the ``k + 1`` buckets, valid tokens only.

    Args:
        student_logits: ``(B, T, V)`` raw student logits.
        signal: the teacher's top-k ids ``(B, T, K)``, their log-probabilities ``(B, T, K)``
            and tail ``(B, T)``, taken at ``signal.temperature``.
        valid: ``(B, T)`` bool, the tokens that count.
        temperature: the loss temperature ``T``.
        dtype: the compute dtype (float32, or float64).

    Returns:
        ``(student, teacher)``, each ``(N, K + 1)``: the k ids, then the tail bucket.
    """
    _check_shapes(student_logits, signal)
    ids = select_tokens(signal.ids, valid).long()  # (N, K)
    if ids.shape[-1] < student_logits.shape[-1]:  # every row has a tail: the fast path
        scores = select_tokens(student_logits, valid).to(dtype)  # (N, V)
        if temperature != 1.0:
            scores = scores / temperature
        student = _StudentBuckets.apply(scores, ids)
    else:
        student_logprobs = tempered_logprobs(student_logits, valid, temperature, dtype)
        student = torch.cat(
            [student_logprobs.gather(-1, ids), _log_mass_outside(student_logprobs, ids)[:, None]],
            dim=-1,
        )  # (N, K + 1)
    teacher = retemper_buckets(
        select_tokens(signal.logprobs, valid).to(dtype),
        select_tokens(signal.tail_logprob[..., None], valid)[:, 0].to(dtype),
        from_temperature=signal.temperature,
        to_temperature=temperature,
    )
    return student, teacher


def retemper_buckets(
    top_logprobs: torch.Tensor,
    tail_logprob: torch.Tensor,
    *,
    from_temperature: float,
    to_temperature: float,
) -> torch.Tensor:
    """The teacher's ``k + 1`` buckets, stored at ``T0``, as log-probabilities at ``T``.

    For the k ids this is exact: a log-probability at ``T0`` is ``z / T0`` minus a
    constant, so ``(T0 / T) · logprob`` is ``z / T`` minus a constant, and a softmax over
    the buckets removes the constant. The tail's internal shape is unknown, so it is
    treated the same way, as one pseudo-token whose log-mass is scaled by ``T0 / T``.
    That is exact when the tail is a single id (or empty, or ``T == T0``). Otherwise,
    with ``a = T0 / T``, its true unnormalised tempered mass is ``Σ_tail p_j^a``, which is
    ``≥ (Σ_tail p_j)^a`` for ``a < 1`` and ``≤`` for ``a > 1``: softening (``T > T0``)
    *under*-states the tail and sharpening (``T < T0``) *over*-states it — a one-sided
    bound, where keeping the tail mass fixed is wrong in a direction that depends on k.
    The ratios among the k ids are exact either way. Caching at the temperature the
    recipe trains at avoids the question.

    The buckets are renormalised even when ``T == T0``: the result is then the input up
    to rounding, and a cache stored in half precision still yields a proper distribution.

    Args:
        top_logprobs: ``(N, K)`` log-probabilities of the k ids at ``from_temperature``.
        tail_logprob: ``(N,)`` log of the mass outside them; ``−inf`` for an empty tail.

    Returns:
        ``(N, K + 1)`` log-probabilities at ``to_temperature``, the tail last.

    >>> top, tail = torch.log(torch.tensor([[0.6, 0.3]])), torch.log(torch.tensor([0.1]))
    >>> buckets = retemper_buckets(top, tail, from_temperature=1.0, to_temperature=2.0)
    >>> [round(p, 4) for p in buckets.exp().flatten().tolist()]  # ∝ √0.6, √0.3, √0.1
    [0.4727, 0.3343, 0.193]
    """
    buckets = torch.cat([top_logprobs, tail_logprob[:, None]], dim=-1)  # (N, K + 1)
    return F.log_softmax(buckets * (from_temperature / to_temperature), dim=-1)


class _StudentBuckets(torch.autograd.Function):
    """``log_softmax(z)`` summed into ``k + 1`` buckets, for ``k < V`` (a tail in every row).

    Forward: ``A = logsumexp(z)``, ``B = logsumexp(z`` with the k ids masked out``)``;
    the buckets are ``z[ids] − A`` and ``B − A`` (no ``(N, V)`` log-softmax is kept).
    Backward, with ``p = softmax(z)``, ``G = Σ`` of the incoming bucket gradients and
    ``P_tail = exp(B − A)``: ``∂/∂z_v = g_v − G p_v`` on the k ids and
    ``(g_tail / P_tail − G) p_v`` elsewhere. One ``(N, V)`` pass builds it; autograd
    through the masked log-sum-exps would take several.
    """

    @staticmethod
    def forward(ctx: Any, scores: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        log_total = scores.logsumexp(dim=-1)  # (N,)
        log_tail = scores.scatter(-1, ids, -torch.inf).logsumexp(dim=-1)  # (N,)
        top = scores.gather(-1, ids) - log_total[:, None]  # (N, K)
        ctx.save_for_backward(scores, ids, log_total, log_tail)
        return torch.cat([top, (log_tail - log_total)[:, None]], dim=-1)  # (N, K + 1)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        scores, ids, log_total, log_tail = ctx.saved_tensors
        grad_top, grad_tail = grad[:, :-1], grad[:, -1]  # (N, K), (N,)
        total = grad.sum(dim=-1)  # (N,)
        # exp(z − ref) · (g_tail · exp(ref − B) − G · exp(ref − A)) off the k ids. ref = A,
        # except where the tail is so small (B ≪ A) that exp(A − B) could overflow: there
        # ref = B. The k ids' entries (possibly inf then) are overwritten below.
        ref = torch.where(log_total - log_tail > 60.0, log_tail, log_total)  # (N,)
        scale = grad_tail * (ref - log_tail).exp() - total * (ref - log_total).exp()  # (N,)
        grad_scores = (scores - ref[:, None]).exp_().mul_(scale[:, None])  # (N, V)
        top = grad_top - total[:, None] * (scores.gather(-1, ids) - log_total[:, None]).exp()
        return grad_scores.scatter_(-1, ids, top), None


def _log_mass_outside(logprobs: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """``log Σ_{v ∉ ids} exp(logprobs[v])`` per row; ``−inf`` where ``ids`` cover the vocab.

    Args:
        logprobs: ``(..., V)`` log-probabilities.
        ids: ``(..., K)`` distinct ids into the last dimension.
    """
    in_top = torch.zeros_like(logprobs, dtype=torch.bool).scatter_(-1, ids, True)  # (..., V)
    return log_mass_off(logprobs, in_top)


def log_mass_off(logprobs: torch.Tensor, marked: torch.Tensor) -> torch.Tensor:
    """``log Σ_{v not marked} exp(logprobs[v])`` per row; ``−inf`` where every id is marked.

    Args:
        logprobs: ``(..., V)`` log-probabilities.
        marked: ``(..., V)`` bool, the ids left out.

    Returns:
        ``(...)``, with a zero gradient (never NaN) for the rows whose rest is empty.
    """
    has_rest = ~marked.all(dim=-1)  # (...)
    # The marked entries read −inf, except in rows with no rest: an all-(−inf) row would
    # give a NaN gradient through logsumexp, so those read 0 and take −inf from the final
    # `where`, which passes them no gradient.
    fill = torch.where(has_rest, -torch.inf, 0.0).to(logprobs.dtype)[..., None]  # (..., 1)
    outside = torch.where(marked, fill, logprobs)  # (..., V)
    return torch.where(has_rest, outside.logsumexp(dim=-1), -torch.inf)


def _check_shapes(student_logits: torch.Tensor, signal: SparseSignal) -> None:
    bt = tuple(student_logits.shape[:2])
    ids, logprobs, tail = signal.ids, signal.logprobs, signal.tail_logprob
    if ids.dim() != 3 or tuple(ids.shape[:2]) != bt:
        raise ValueError(
            f"sparse teacher ids {tuple(ids.shape)} must be (B, T, K) with (B, T) {bt}"
        )
    if logprobs.shape != ids.shape:
        raise ValueError(
            f"sparse teacher logprobs {tuple(logprobs.shape)} != ids {tuple(ids.shape)}"
        )
    if tuple(tail.shape) != bt:
        raise ValueError(f"sparse teacher tail_logprob {tuple(tail.shape)} must be (B, T) {bt}")
    if ids.shape[-1] > student_logits.shape[-1]:
        raise ValueError(
            f"sparse teacher keeps k={ids.shape[-1]} ids but the student's vocabulary has "
            f"only {student_logits.shape[-1]}"
        )
    if signal.temperature <= 0:
        raise ValueError(f"sparse teacher temperature must be > 0, got {signal.temperature}")
