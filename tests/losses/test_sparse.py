"""The sparse top-k teacher signal: k + 1 buckets against float64 hand references."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from potstill.losses import (
    KD_LOSSES,
    SparseSignal,
    forward_kl,
    top_k_signal,
)
from potstill.losses.sparse import retemper_buckets
from tests.losses.reference import np_kl, np_softmax, ref_divergence

B, T, V, K = 2, 5, 11, 4
LOSSES = KD_LOSSES  # name -> loss function, every KD loss
KD_CASES = [
    ("forward_kl", {}),
    ("reverse_kl", {}),
    ("jsd", {}),
    ("jsd", {"beta": 0.2}),
    ("tvd", {}),
    ("skew_kl", {"alpha": 0.3}),
]
CASE_IDS = [name + "".join(f"-{k}{v}" for k, v in params.items()) for name, params in KD_CASES]
kd_cases = pytest.mark.parametrize(("name", "params"), KD_CASES, ids=CASE_IDS)


def make_batch(seed: int, scale: float = 3.0):
    """float64 ``(B, T, V)`` student and teacher logits and a ``(B, T)`` mask, never empty."""
    g = torch.Generator().manual_seed(seed)
    student = torch.randn(B, T, V, generator=g, dtype=torch.float64) * scale
    teacher = torch.randn(B, T, V, generator=g, dtype=torch.float64) * scale
    mask = torch.rand(B, T, generator=g) > 0.3
    mask[0, 0] = True
    return student, teacher, mask


def kd(name, student, teacher, mask=None, temperature=1.0, **params):
    return LOSSES[name](student, teacher, mask, temperature, **params)


# --- a float64 reference over the k + 1 buckets, numpy, one token at a time ----------------


def buckets(probs: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """The k ids' probabilities, then the mass outside them (summed, not ``1 − Σ``)."""
    outside = np.ones(probs.shape, bool)
    outside[ids] = False
    return np.append(probs[ids], probs[outside].sum())


def ref_sparse_kd(name, student, teacher, ids, mask, temperature, teacher_temperature, **params):
    """``T² ·`` mean divergence between the bucketed teacher, taken at
    ``teacher_temperature`` and re-tempered as documented (every bucket, the tail included,
    raised to the power ``T0 / T`` and renormalised), and the bucketed student at ``T``."""
    s, t, ids = student.numpy(), teacher.numpy(), ids.numpy()
    power = teacher_temperature / temperature
    total, count = 0.0, 0
    for b in range(s.shape[0]):
        for i in range(s.shape[1]):
            if mask is None or mask[b, i]:
                p = buckets(np_softmax(t[b, i] / teacher_temperature), ids[b, i]) ** power
                q = buckets(np_softmax(s[b, i] / temperature), ids[b, i])
                total += ref_divergence(name, p / p.sum(), q, **params)
                count += 1
    return temperature**2 * total / max(count, 1)


# --- k = V: an empty tail, and the dense losses exactly ------------------------------------


@kd_cases
@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0])
def test_full_vocab_sparse_equals_dense_values_and_gradients(name, params, temperature):
    student, teacher, mask = make_batch(0)
    signal = top_k_signal(teacher, k=V)  # at T0 = 1: with no tail, re-tempering is exact
    assert torch.isneginf(signal.tail_logprob).all()
    student_dense = student.clone().requires_grad_()
    student_sparse = student.clone().requires_grad_()
    dense = kd(name, student_dense, teacher, mask, temperature, **params)
    sparse = kd(name, student_sparse, signal, mask, temperature, **params)
    dense.backward()
    sparse.backward()
    torch.testing.assert_close(sparse, dense, rtol=1e-10, atol=1e-12)
    assert torch.isfinite(student_sparse.grad).all()
    torch.testing.assert_close(student_sparse.grad, student_dense.grad, rtol=1e-9, atol=1e-12)


# --- k < V: the k + 1 buckets ---------------------------------------------------------------


@kd_cases
@pytest.mark.parametrize("temperature", [0.5, 1.0, 3.0])
def test_same_temperature_matches_the_bucket_reference(name, params, temperature):
    student, teacher, mask = make_batch(1)
    signal = top_k_signal(teacher, k=K, temperature=temperature)
    expected = ref_sparse_kd(
        name, student, teacher, signal.ids, mask, temperature, temperature, **params
    )
    actual = kd(name, student, signal, mask, temperature, **params)
    assert actual.dtype == torch.float64
    assert actual.item() == pytest.approx(expected, rel=1e-10, abs=1e-12)


@kd_cases
@pytest.mark.parametrize(("stored", "temperature"), [(1.0, 2.0), (2.0, 1.0), (1.0, 0.5)])
def test_retempered_teacher_matches_the_hand_computation(name, params, stored, temperature):
    student, teacher, mask = make_batch(2)
    signal = top_k_signal(teacher, k=K, temperature=stored)
    expected = ref_sparse_kd(
        name, student, teacher, signal.ids, mask, temperature, stored, **params
    )
    actual = kd(name, student, signal, mask, temperature, **params)
    assert actual.item() == pytest.approx(expected, rel=1e-10, abs=1e-12)


def test_retemper_buckets_by_hand():
    top = torch.tensor([[0.5, 0.2, 0.2]], dtype=torch.float64).log()
    tail = torch.tensor([0.1], dtype=torch.float64).log()
    # T0 = 1 -> T = 2: every bucket to the power 1/2, the tail as one pseudo-token.
    raw = torch.tensor([0.5, 0.2, 0.2, 0.1], dtype=torch.float64).sqrt()
    actual = retemper_buckets(top, tail, from_temperature=1.0, to_temperature=2.0)
    torch.testing.assert_close(actual.exp()[0], raw / raw.sum(), rtol=1e-12, atol=0)
    # T == T0 only renormalises: a proper distribution comes back unchanged.
    same = retemper_buckets(top, tail, from_temperature=1.5, to_temperature=1.5)
    torch.testing.assert_close(same[0, :3], top[0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(same[0, 3], tail[0], rtol=1e-12, atol=1e-12)
    # ...and an unnormalised (e.g. half-precision) one is renormalised.
    scaled = retemper_buckets(top + 0.01, tail + 0.01, from_temperature=1.0, to_temperature=1.0)
    torch.testing.assert_close(scaled.exp().sum(), torch.tensor(1.0, dtype=torch.float64))


@pytest.mark.parametrize(("stored", "temperature"), [(1.0, 2.0), (1.0, 4.0), (2.0, 1.0)])
def test_retempered_tail_is_the_documented_one_sided_bound(stored, temperature):
    # The tail as one pseudo-token under-states the true tempered tail when softening
    # (T > T0) and over-states it when sharpening (T < T0); the k ids' ratios are exact.
    _, teacher, _ = make_batch(3)
    signal = top_k_signal(teacher, k=K, temperature=stored)
    approx = retemper_buckets(
        signal.logprobs.reshape(-1, K),
        signal.tail_logprob.reshape(-1),
        from_temperature=stored,
        to_temperature=temperature,
    )
    truth = top_k_signal(teacher, k=K, temperature=temperature)
    true_tail = truth.tail_logprob.reshape(-1)
    if temperature > stored:
        assert (approx[:, -1] <= true_tail + 1e-12).all()
    else:
        assert (approx[:, -1] >= true_tail - 1e-12).all()
    ratios = approx[:, :-1] - approx[:, :1]
    true_ratios = truth.logprobs.reshape(-1, K) - truth.logprobs.reshape(-1, K)[:, :1]
    torch.testing.assert_close(ratios, true_ratios, rtol=1e-10, atol=1e-10)


# --- masks, normalisation, gradients --------------------------------------------------------


@kd_cases
def test_masked_tokens_are_ignored(name, params):
    student, teacher, mask = make_batch(4)
    signal = top_k_signal(teacher, k=K)
    # Garbage at masked positions must enter neither the value nor the gradient.
    poisoned = SparseSignal(
        signal.ids,
        signal.logprobs.masked_fill(~mask[..., None], float("nan")),
        signal.tail_logprob.masked_fill(~mask, float("nan")),
    )
    student = student.masked_fill(~mask[..., None], 1e4).requires_grad_()
    loss = kd(name, student, poisoned, mask, 2.0, **params)
    loss.backward()
    expected = ref_sparse_kd(name, student.detach(), teacher, signal.ids, mask, 2.0, 1.0, **params)
    assert loss.item() == pytest.approx(expected, rel=1e-10, abs=1e-12)
    assert (student.grad[~mask] == 0).all()
    assert torch.isfinite(student.grad).all()


@kd_cases
def test_all_masked_gives_zero_and_zero_gradients(name, params):
    student, teacher, _ = make_batch(5)
    student.requires_grad_()
    loss = kd(name, student, top_k_signal(teacher, k=K), torch.zeros(B, T, dtype=torch.bool))
    loss.backward()
    assert loss.item() == 0.0
    assert (student.grad == 0).all()


@kd_cases
def test_num_tokens_splits_a_batch_exactly(name, params):
    student, teacher, mask = make_batch(6)
    signal = top_k_signal(teacher, k=K, temperature=2.0)
    whole = kd(name, student, signal, mask, 1.5, **params)
    halves = [mask.clone(), mask.clone()]
    halves[0][1:] = False
    halves[1][:1] = False
    split = sum(
        LOSSES[name](student, signal, half, 1.5, num_tokens=mask.sum(), **params) for half in halves
    )
    torch.testing.assert_close(split, whole, rtol=1e-12, atol=1e-14)


@kd_cases
@pytest.mark.parametrize("k", [3, 7], ids=["k<V", "k=V"])
def test_gradcheck(name, params, k):
    g = torch.Generator().manual_seed(7)
    student = torch.randn(1, 3, 7, generator=g, dtype=torch.float64, requires_grad=True)
    signal = top_k_signal(torch.randn(1, 3, 7, generator=g, dtype=torch.float64), k=k)
    mask = torch.tensor([[True, False, True]])
    assert torch.autograd.gradcheck(
        lambda s: LOSSES[name](s, signal, mask, 1.7, **params), (student,), fast_mode=True
    )


# --- precision and the signal builder -------------------------------------------------------


def test_low_precision_inputs_are_computed_in_float32():
    student, teacher, mask = make_batch(8)
    signal = top_k_signal(teacher, k=K)
    half = SparseSignal(signal.ids, signal.logprobs.bfloat16(), signal.tail_logprob.bfloat16())
    loss = forward_kl(student.bfloat16(), half, mask, 2.0)
    assert loss.dtype == torch.float32
    reference = forward_kl(student, signal, mask, 2.0)
    assert loss.item() == pytest.approx(reference.item(), rel=0.05)


def test_top_k_signal_is_a_distribution_over_the_buckets():
    _, teacher, _ = make_batch(9)
    signal = top_k_signal(teacher, k=K, temperature=0.7)
    assert signal.ids.shape == (B, T, K) and signal.temperature == 0.7
    total = signal.logprobs.exp().sum(-1) + signal.tail_logprob.exp()
    torch.testing.assert_close(total, torch.ones(B, T, dtype=torch.float64))
    expected = torch.log_softmax(teacher / 0.7, -1).topk(K, dim=-1)
    assert torch.equal(signal.ids, expected.indices)
    with pytest.raises(ValueError, match="k must be"):
        top_k_signal(teacher, k=V + 1)
    with pytest.raises(ValueError, match="temperature"):
        top_k_signal(teacher, k=K, temperature=0.0)


def test_tiny_tail_is_not_lost_to_cancellation():
    # The top k hold all but ~e^-40 of the student's mass: in float32, 1 − Σ top-k rounds
    # to 0 and forward KL would be +inf; the log-sum-exp over the rest keeps it finite.
    student = torch.tensor([[[40.0, 40.0, 0.0]]])
    teacher = torch.tensor([0.45, 0.45, 0.1], dtype=torch.float64)
    signal = SparseSignal(
        ids=torch.tensor([[[0, 1]]]),
        logprobs=teacher[:2].log().float()[None, None],
        tail_logprob=teacher[2:].log().float()[None],
    )
    expected = np_kl(teacher.numpy(), np_softmax(student[0, 0].double().numpy()))
    assert forward_kl(student, signal).item() == pytest.approx(expected, rel=1e-5)


def test_tiny_tail_gradient_is_finite_and_right():
    # Tail mass ~e^-100 (under float32's range relative to the top): the backward must not
    # overflow exp(A − B). float64 autograd through the masked log-sum-exp is the reference.
    logits = torch.tensor([[[100.0, 99.0, 0.0, -1.0]]])
    signal = SparseSignal(
        ids=torch.tensor([[[0, 1]]]),
        logprobs=torch.log(torch.tensor([[[0.5, 0.3]]])),
        tail_logprob=torch.log(torch.tensor([[0.2]])),
    )
    student = logits.clone().requires_grad_()
    forward_kl(student, signal).backward()
    reference = logits.double().requires_grad_()
    logprobs = torch.log_softmax(reference[0, 0], -1)
    buckets = torch.stack([logprobs[0], logprobs[1], logprobs[2:].logsumexp(-1)])
    teacher = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    (teacher * (teacher.log() - buckets)).sum().backward()
    assert torch.isfinite(student.grad).all()
    torch.testing.assert_close(student.grad.double(), reference.grad, rtol=1e-4, atol=1e-6)
