"""Forward KL over shared tokens (`potstill.losses.shared`): a float64 reference and the
loss's properties."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from potstill.losses import (
    LossTerm,
    chunked_kd_loss,
    combine_losses,
    forward_kl,
    shared_kl,
    top_k_signal,
)
from potstill.signals import SparseSignal


def mapped(signal: SparseSignal, mapping: torch.Tensor) -> SparseSignal:
    """A teacher-id signal read as student ids (-1: none), as a cache across tokenizers is."""
    return with_ids(signal, mapping[signal.ids])


def at(signal: SparseSignal, i: int) -> SparseSignal:
    """Position ``i`` of every row."""
    return SparseSignal(
        signal.ids[:, i : i + 1], signal.logprobs[:, i : i + 1], signal.tail_logprob[:, i : i + 1]
    )


def with_ids(signal: SparseSignal, ids: torch.Tensor) -> SparseSignal:
    return SparseSignal(ids, signal.logprobs, signal.tail_logprob)


def reference(student: np.ndarray, teacher: np.ndarray, mapping: np.ndarray, k: int) -> float:
    """Mean over tokens, in float64, of KL(teacher ‖ student) on the buckets "each of the
    teacher's k likeliest ids that the student has" + "everything else", each side's
    buckets summed from its full softmax by hand."""
    total = 0.0
    rows, teacher_rows = student.reshape(-1, student.shape[-1]), teacher.reshape(-1, len(mapping))
    for s, t in zip(rows, teacher_rows, strict=True):
        q = np.exp(s - s.max())
        q /= q.sum()
        p = np.exp(t - t.max())
        p /= p.sum()
        top = np.argsort(-p)[:k]
        pairs = [(p[i], q[mapping[i]]) for i in top if mapping[i] >= 0]
        pairs.append((1.0 - sum(a for a, _ in pairs), 1.0 - sum(b for _, b in pairs)))
        total += sum(a * np.log(a / b) for a, b in pairs if a > 0)
    return total / len(rows)


def test_matches_a_float64_reference_across_vocabularies():
    torch.manual_seed(0)
    student, teacher = torch.randn(2, 5, 7).double(), torch.randn(2, 5, 11).double()
    mapping = torch.tensor([3, -1, 0, 5, -1, 1, 2, -1, -1, -1, 4])  # teacher of 11, student 7
    for k in (1, 4, 11):
        got = shared_kl(student, mapped(top_k_signal(teacher, k), mapping)).item()
        want = reference(student.numpy(), teacher.numpy(), mapping.numpy(), k)
        assert got == pytest.approx(want, abs=1e-12), k


def test_one_vocabulary_and_every_id_is_the_forward_kl():
    torch.manual_seed(1)
    student, teacher = torch.randn(2, 4, 6).double(), torch.randn(2, 4, 6).double()
    exact = forward_kl(student, teacher, temperature=1.0).item()
    full = top_k_signal(teacher, k=6)  # no tail, no rest: the buckets are the ids
    assert shared_kl(student, full).item() == pytest.approx(exact, abs=1e-12)
    assert shared_kl(student, teacher).item() == pytest.approx(exact, abs=1e-12)  # dense


def test_zero_exactly_when_the_buckets_agree_and_positive_otherwise():
    # the teacher keeps student ids 0, 1 and one id the student lacks; its tail is 0.2
    signal = SparseSignal(
        torch.tensor([[[0, 1, -1]]]),
        torch.log(torch.tensor([[[0.5, 0.2, 0.1]]], dtype=torch.float64)),
        torch.log(torch.tensor([[0.2]], dtype=torch.float64)),
    )
    agrees = torch.log(torch.tensor([[[0.5, 0.2, 0.1, 0.1, 0.1]]], dtype=torch.float64))
    assert shared_kl(agrees, signal).item() == pytest.approx(0.0, abs=1e-12)
    moved_in_rest = torch.log(torch.tensor([[[0.5, 0.2, 0.3, 0.0 + 1e-9, 1e-9]]]).double())
    assert shared_kl(moved_in_rest, signal).item() == pytest.approx(0.0, abs=1e-7)
    torch.manual_seed(2)
    for _ in range(20):
        assert shared_kl(torch.randn(1, 1, 5).double(), signal).item() > 0


def test_positions_without_a_teacher_signal_count_only_in_the_token_count():
    torch.manual_seed(3)
    student, teacher = torch.randn(1, 4, 6), torch.randn(1, 4, 6)
    signal = top_k_signal(teacher, k=3)
    logprobs, tail = signal.logprobs.clone(), signal.tail_logprob.clone()
    logprobs[0, 2], tail[0, 2] = -32.0, 0.0  # the codec's floor at position 2
    masked = SparseSignal(signal.ids, logprobs, tail)
    keep = torch.tensor([[True, True, False, True]])
    only_aligned = shared_kl(student, signal, keep, num_tokens=4)
    assert shared_kl(student, masked).item() == pytest.approx(only_aligned.item(), rel=1e-6)


def test_gradient_matches_finite_differences_and_stays_finite_with_no_rest():
    torch.manual_seed(4)
    student = torch.randn(2, 3, 5, dtype=torch.float64, requires_grad=True)
    mapping = torch.tensor([2, -1, 0, 4, 1, -1, 3])
    signal = mapped(top_k_signal(torch.randn(2, 3, 7).double(), 4), mapping)
    assert torch.autograd.gradcheck(lambda s: shared_kl(s, signal), (student,))
    peaked = torch.full((1, 1, 4), -1e4, requires_grad=True)
    every = top_k_signal(torch.randn(1, 1, 4), k=4)  # all ids kept: both rests empty
    shared_kl(peaked, every).backward()
    assert torch.isfinite(peaked.grad).all() and peaked.grad.abs().sum() > 0


def test_mask_and_num_tokens_divide_as_cross_entropy_does():
    torch.manual_seed(5)
    student, teacher = torch.randn(1, 4, 6).double(), torch.randn(1, 4, 6).double()
    signal = top_k_signal(teacher, k=2)
    keep = torch.tensor([[True, False, True, True]])
    per_row = [shared_kl(student[:, i : i + 1], at(signal, i)).item() for i in range(4)]
    summed = per_row[0] + per_row[2] + per_row[3]
    assert shared_kl(student, signal, keep).item() == pytest.approx(summed / 3, abs=1e-12)
    assert shared_kl(student, signal, keep, num_tokens=6).item() == pytest.approx(summed / 6)
    none = torch.zeros(1, 4, dtype=torch.bool)
    assert shared_kl(student, signal, none).item() == 0.0


def test_wrong_dtype_shape_or_ids_are_refused():
    teacher = top_k_signal(torch.randn(1, 3, 6), k=2)
    with pytest.raises(ValueError, match="float"):
        shared_kl(torch.zeros(1, 3, 6, dtype=torch.long), teacher)
    with pytest.raises(ValueError, match="must both be"):
        shared_kl(torch.zeros(1, 2, 6), teacher)
    with pytest.raises(ValueError, match="integer"):
        shared_kl(
            torch.zeros(1, 3, 6),
            SparseSignal(teacher.ids.float(), teacher.logprobs, teacher.tail_logprob),
        )
    with pytest.raises(ValueError, match=r"in \[0, 4\) or -1"):
        shared_kl(torch.zeros(1, 3, 4), with_ids(teacher, teacher.ids + 3))
    with pytest.raises(ValueError, match=r"or -1"):
        shared_kl(torch.zeros(1, 3, 6), with_ids(teacher, teacher.ids - 9))
    with pytest.raises(ValueError, match="mask shape"):
        shared_kl(torch.zeros(1, 3, 6), teacher, torch.ones(1, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="mask must be bool"):
        shared_kl(torch.zeros(1, 3, 6), teacher, torch.full((1, 3), -100))  # labels, not a mask


def test_a_recipe_term_trains_through_the_fused_chunks():
    torch.manual_seed(6)
    hidden, weight = torch.randn(2, 5, 4), torch.randn(9, 4)  # a student of 9 ids
    mapping = torch.tensor([4, -1, 0, 8, -1, 1, 2, 7, 5, -1, 3, 6, -1])  # a teacher of 13
    signal = mapped(top_k_signal(torch.randn(2, 5, 13), k=3), mapping)
    labels = torch.randint(0, 9, (2, 5))
    terms = [LossTerm("shared_kl"), LossTerm("cross_entropy")]
    total, parts = chunked_kd_loss(hidden, weight, signal, terms, labels, chunk_size=3)
    full, full_parts = combine_losses(terms, hidden @ weight.T, labels, signal)
    assert total.item() == pytest.approx(full.item(), rel=1e-5)
    assert parts["shared_kl"].item() == pytest.approx(full_parts["shared_kl"].item(), rel=1e-5)
