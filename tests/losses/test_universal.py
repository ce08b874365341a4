"""ULD (`potstill.losses.universal`): a float64 reference and the distance's properties."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from potstill.losses import LossTerm, chunked_kd_loss, combine_losses, top_k_signal, uld
from potstill.losses.universal import NO_SIGNAL, sorted_l1
from potstill.signals import SparseSignal


def reference(student_logits: np.ndarray, teacher_logits: np.ndarray) -> float:
    """Mean over tokens of Σ_r |sort↓ p_s − sort↓ p_t| in float64, zeros padding the
    shorter vocabulary: the loss of Boizard et al. written out by hand."""
    total = 0.0
    rows = student_logits.reshape(-1, student_logits.shape[-1])
    teacher_rows = teacher_logits.reshape(-1, teacher_logits.shape[-1])
    for s, t in zip(rows, teacher_rows, strict=True):
        p = np.exp(s - s.max())
        p /= p.sum()
        q = np.exp(t - t.max())
        q /= q.sum()
        width = max(len(p), len(q))
        p = np.pad(np.sort(p)[::-1], (0, width - len(p)))
        q = np.pad(np.sort(q)[::-1], (0, width - len(q)))
        total += np.abs(p - q).sum()
    return total / len(rows)


def test_dense_matches_a_float64_reference_across_vocabulary_sizes():
    torch.manual_seed(0)
    student, teacher = torch.randn(2, 5, 7, dtype=torch.float64), torch.randn(2, 5, 11)
    got = uld(student, teacher.double()).item()
    assert got == pytest.approx(reference(student.numpy(), teacher.double().numpy()), abs=1e-12)


def test_sparse_with_every_id_equals_dense():
    torch.manual_seed(1)
    student, teacher = torch.randn(2, 4, 6, dtype=torch.float64), torch.randn(2, 4, 9).double()
    full = top_k_signal(teacher, k=9)  # the tail is empty: the bucketed loss is the exact one
    assert uld(student, full).item() == pytest.approx(uld(student, teacher).item(), abs=1e-12)


def test_sparse_tail_bucket_is_a_lower_bound_and_exact_when_the_tail_is_one_id():
    torch.manual_seed(2)
    student, teacher = torch.randn(3, 4, 8).double(), torch.randn(3, 4, 8).double()
    exact = uld(student, teacher).item()
    assert uld(student, top_k_signal(teacher, k=3)).item() <= exact + 1e-12
    assert uld(student, top_k_signal(teacher, k=7)).item() == pytest.approx(exact, abs=1e-12)


def test_zero_iff_the_sorted_distributions_are_equal():
    torch.manual_seed(3)
    logits = torch.randn(1, 3, 6).double()
    permuted = logits[..., torch.randperm(6)]
    assert uld(logits, permuted).item() == pytest.approx(0.0, abs=1e-12)
    other = logits.clone()
    other[0, 1, 0] += 0.5
    assert uld(logits, other).item() > 1e-3


def test_symmetric_and_invariant_to_permuting_either_vocabulary():
    torch.manual_seed(4)
    a, b = torch.randn(2, 3, 5).double(), torch.randn(2, 3, 8).double()
    value = uld(a, b).item()
    assert uld(b, a).item() == pytest.approx(value, abs=1e-12)
    assert uld(a[..., torch.randperm(5)], b).item() == pytest.approx(value, abs=1e-12)
    assert uld(a, b[..., torch.randperm(8)]).item() == pytest.approx(value, abs=1e-12)


def test_sorted_l1_pads_the_shorter_side_with_zeros():
    value = sorted_l1(torch.tensor([[0.5, 0.5]]), torch.tensor([[0.5, 0.25, 0.25]]))
    assert value.item() == pytest.approx(0.25 + 0.25)


def test_positions_without_a_teacher_signal_count_only_in_the_token_count():
    torch.manual_seed(5)
    student, teacher = torch.randn(1, 4, 6), torch.randn(1, 4, 6)
    signal = top_k_signal(teacher, k=3)
    logprobs = signal.logprobs.clone()
    logprobs[0, 2] = -32.0  # the codec's floor: no signal at position 2
    tail = signal.tail_logprob.clone()
    tail[0, 2] = 0.0
    masked = SparseSignal(signal.ids, logprobs, tail)
    keep = torch.tensor([[True, True, False, True]])
    only_aligned = uld(student, signal, keep, num_tokens=4)
    assert uld(student, masked).item() == pytest.approx(only_aligned.item(), rel=1e-6)
    assert NO_SIGNAL > -32.0


def test_gradient_is_finite_and_flows_to_the_student():
    torch.manual_seed(6)
    student = torch.randn(2, 3, 7, requires_grad=True)
    uld(student, top_k_signal(torch.randn(2, 3, 11), k=4)).backward()
    assert torch.isfinite(student.grad).all() and student.grad.abs().sum() > 0
    peaked = torch.full((1, 1, 5), -1e4)
    peaked[0, 0, 0] = 0.0
    peaked.requires_grad_()
    uld(peaked, top_k_signal(torch.randn(1, 1, 9), k=9)).backward()
    assert torch.isfinite(peaked.grad).all()


def test_all_masked_is_zero_not_nan():
    value = uld(torch.randn(1, 2, 4), torch.randn(1, 2, 6), torch.zeros(1, 2, dtype=torch.bool))
    assert value.item() == 0.0


def test_wrong_dtype_or_shape_is_refused():
    teacher = top_k_signal(torch.randn(1, 3, 6), k=2)
    with pytest.raises(ValueError, match="float"):
        uld(torch.zeros(1, 3, 4, dtype=torch.long), teacher)
    with pytest.raises(ValueError, match=r"\(B, T, V\)"):
        uld(torch.zeros(3, 4), teacher)
    with pytest.raises(ValueError, match="must both be"):
        uld(torch.zeros(1, 2, 4), teacher)
    with pytest.raises(ValueError, match="integer"):
        uld(
            torch.zeros(1, 3, 4),
            SparseSignal(teacher.ids.float(), teacher.logprobs, teacher.tail_logprob),
        )
    with pytest.raises(ValueError, match="mask shape"):
        uld(torch.zeros(1, 3, 4), teacher, torch.ones(1, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="mask must be bool"):
        uld(torch.zeros(1, 3, 4), teacher, torch.full((1, 3), -100))  # labels, not a mask


def test_a_recipe_term_trains_through_the_fused_chunks():
    torch.manual_seed(7)
    hidden, weight = torch.randn(2, 5, 4), torch.randn(9, 4)  # a student of 9 ids
    signal = top_k_signal(torch.randn(2, 5, 13), k=3)  # a teacher of 13
    labels = torch.randint(0, 9, (2, 5))
    terms = [LossTerm("uld"), LossTerm("cross_entropy")]
    total, parts = chunked_kd_loss(hidden, weight, signal, terms, labels, chunk_size=3)
    full, full_parts = combine_losses(terms, hidden @ weight.T, labels, signal)
    assert total.item() == pytest.approx(full.item(), rel=1e-5)
    assert parts["uld"].item() == pytest.approx(full_parts["uld"].item(), rel=1e-5)
