"""Forward KL over the tokens two vocabularies share: a logit loss across tokenizers.

A cache taught across tokenizers holds, at each student position aligned with a teacher
position (`potstill.data.align`: both have read the same text), the teacher's top k ids
and log-probabilities. Read through `potstill.data.vocab.shared_ids`, each kept id
becomes the student id of the same bytes, or ``NO_ID`` (-1) where the student has no
such token. Both models then predict the same next text, so where a token exists in both
vocabularies its probabilities are comparable one to one; everything else, on each side,
is one *rest* bucket:

- teacher: ``p_v`` on the kept ids that have a student id; its rest is the mass on the
  kept ids without one plus its stored tail;
- student: ``q_v`` on those same ids (its full softmax); its rest is ``1 − Σ q_v``, a
  log-sum-exp over the other ids (no cancellation when the kept ids hold nearly all).

The loss is ``Σ_v p_v log(p_v / q_v) + p_rest log(p_rest / q_rest)`` per position: a
forward KL between two distributions on the same buckets, so ``≥ 0`` and ``0`` exactly
when the student gives every shared kept id and the rest what the teacher does. It is
the matched half of GOLD's hybrid loss (TRL's ``GOLDTrainer`` with
``uld_use_hybrid_loss``, which compares exact vocabulary matches directly and the
unmatched tokens by ULD), as a forward KL on a top-k cache, with ids matched by bytes (a
recipe may add ``uld`` beside it). Unlike ULD (`potstill.losses.universal`) it says
*which* token, not only how sure. With one tokenizer and every id kept it is the forward
KL at temperature 1.

The bias: where one tokenizer merges what the other splits, the same text's probability
sits on different ids. Qwen writes ``" distillation"`` as ``" dist" + "illation"``,
SmolLM2 as one token, so the teacher's mass for that word lands on the student's
``" dist"``, which the student's own tokenization never writes there, and none on its
``" distillation"``. Positions with no teacher signal (every log-probability at the
codec's floor, `universal.NO_SIGNAL`) count only in the token count the loss is divided
by, as in ``uld``.
"""

from __future__ import annotations

import torch

from potstill.losses.divergences import forward_kl
from potstill.losses.sparse import log_mass_off, retemper_buckets
from potstill.losses.tokens import checked_tokens, compute_dtype, mean_over_tokens, select_tokens
from potstill.losses.universal import NO_SIGNAL, check_sparse
from potstill.signals.distributions import SparseSignal, TeacherSignal, as_signal


def shared_kl(
    student_logits: torch.Tensor,
    teacher: torch.Tensor | TeacherSignal,
    mask: torch.Tensor | None = None,
    temperature: float = 1.0,
    *,
    num_tokens: int | torch.Tensor | None = None,
) -> torch.Tensor:
    """Forward KL on the shared kept ids and one rest bucket, summed over the valid
    positions that have a teacher signal, divided by the number of valid positions (or
    ``num_tokens``).

    Args:
        student_logits: ``(B, T, V)`` float logits.
        teacher: a `SparseSignal` whose ``(B, T, K)`` ids are *student* ids, -1 where the
            student has no such token; or dense teacher logits of the student's
            vocabulary (``(B, T, V)`` or a `DenseSignal`: the forward KL).
        mask: optional ``(B, T)`` bool, True where a token counts.
        temperature: softens both sides; recipes give it none (1).
        num_tokens: divide by this instead of the local count of valid positions.

    >>> student = torch.log(torch.tensor([[[0.5, 0.3, 0.2]]]))
    >>> # the teacher keeps student id 1 (0.6) and an id the student lacks (0.3); tail 0.1
    >>> signal = SparseSignal(
    ...     torch.tensor([[[1, -1]]]), torch.log(torch.tensor([[[0.6, 0.3]]])),
    ...     torch.log(torch.tensor([[0.1]])), temperature=1.0)
    >>> value = shared_kl(student, signal).item()  # 0.6 log(0.6/0.3) + 0.4 log(0.4/0.7)
    >>> round(value, 6)
    0.192042
    """
    valid = checked_tokens(student_logits, mask, temperature)
    signal = as_signal(teacher)
    if not isinstance(signal, SparseSignal):
        return forward_kl(student_logits, signal, mask, temperature, num_tokens=num_tokens)
    bt = tuple(student_logits.shape[:2])
    _check(signal, bt, student_logits.shape[-1])
    rows = valid & (signal.logprobs.amax(dim=-1) > NO_SIGNAL)  # (B, T)
    dtype = compute_dtype(student_logits, signal.logprobs)

    ids = select_tokens(signal.ids, rows).long()  # (N, K)
    shared = ids >= 0
    buckets = retemper_buckets(
        select_tokens(signal.logprobs, rows).to(dtype),
        select_tokens(signal.tail_logprob[..., None], rows)[:, 0].to(dtype),
        from_temperature=signal.temperature,
        to_temperature=temperature,
    )  # (N, K + 1) log-probabilities, the tail last
    kept, tail = buckets[:, :-1], buckets[:, -1]
    teacher_kept = torch.where(shared, kept, -torch.inf)  # (N, K)
    teacher_rest = torch.cat([torch.where(shared, -torch.inf, kept), tail[:, None]], -1)
    teacher_rest = teacher_rest.logsumexp(dim=-1)  # (N,)

    scores = select_tokens(student_logits, rows).to(dtype)  # (N, V)
    if temperature != 1.0:
        scores = scores / temperature
    student = scores.log_softmax(dim=-1)
    index = ids.clamp_min(0)
    student_kept = student.gather(-1, index)  # (N, K); read only where shared
    # Scatter-add, not scatter: an unshared slot (index 0) must not unmark a shared id 0.
    marked = torch.zeros_like(student).scatter_add_(-1, index, shared.to(dtype)) > 0
    student_rest = log_mass_off(student, marked)  # (N,)

    p_kept = teacher_kept.exp()  # 0 where unshared, or an unused slot (−inf)
    terms = torch.where(p_kept > 0, p_kept * (teacher_kept - student_kept), 0.0).sum(-1)
    p_rest = teacher_rest.exp()
    rest = torch.where(p_rest > 0, p_rest * (teacher_rest - student_rest), 0.0)
    return mean_over_tokens(terms + rest, valid, num_tokens)


def _check(signal: SparseSignal, bt: tuple[int, ...], vocab: int) -> None:
    """ULD's checks of a sparse signal (`universal.check_sparse`), and its ids student ids
    or -1."""
    check_sparse(signal, bt)
    ids = signal.ids
    if ids.dtype == torch.bool:
        raise ValueError(f"sparse teacher ids must be integer student ids, got {ids.dtype}")
    if ids.numel() and (int(ids.min()) < -1 or int(ids.max()) >= vocab):
        raise ValueError(
            f"sparse teacher ids must be student ids in [0, {vocab}) or -1 (no student id), "
            f"got [{int(ids.min())}, {int(ids.max())}]: read a cache taught across "
            "tokenizers through potstill.data.vocab.shared_ids"
        )
