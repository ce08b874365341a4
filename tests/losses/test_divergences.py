"""The losses against independent float64 references, and the properties they must keep."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from potstill.losses import (
    KD_LOSSES,
    DenseSignal,
    SparseSignal,
    cross_entropy,
    forward_kl,
    jsd,
    reverse_kl,
    skew_kl,
    tvd,
)
from tests.losses.reference import np_softmax, ref_divergence

B, T, V = 2, 5, 7
SEEDS = (0, 1, 2)
TEMPERATURES = (0.5, 1.0, 2.0, 4.0)
LOSSES = KD_LOSSES  # name -> loss function, every KD loss
KD_CASES = [
    ("forward_kl", {}),
    ("reverse_kl", {}),
    ("jsd", {}),
    ("jsd", {"beta": 0.1}),
    ("jsd", {"beta": 0.9}),
    ("tvd", {}),
    ("skew_kl", {}),
    ("skew_kl", {"alpha": 0.5}),
]
CASE_IDS = [name + "".join(f"-{k}{v}" for k, v in params.items()) for name, params in KD_CASES]
kd_cases = pytest.mark.parametrize(("name", "params"), KD_CASES, ids=CASE_IDS)


def make_batch(seed: int, dtype: torch.dtype = torch.float64, scale: float = 3.0):
    """Random ``(B, T, V)`` student/teacher logits, a random mask (never empty), labels."""
    g = torch.Generator().manual_seed(seed)
    student = (torch.randn(B, T, V, generator=g, dtype=torch.float64) * scale).to(dtype)
    teacher = (torch.randn(B, T, V, generator=g, dtype=torch.float64) * scale).to(dtype)
    mask = torch.rand(B, T, generator=g) > 0.3
    mask[0, 0] = True
    labels = torch.randint(0, V, (B, T), generator=g)
    labels[torch.rand(B, T, generator=g) > 0.7] = -100
    labels[0, 0] = 1
    return student, teacher, mask, labels


def kd(name: str, student, teacher, mask=None, temperature=1.0, **kwargs):
    return LOSSES[name](student, teacher, mask, temperature, **kwargs)


# --- an independent float64 reference: numpy, one token at a time ---------------------------


def ref_kd(name, student, teacher, mask, temperature, **params) -> float:
    s, t = student.double().numpy(), teacher.double().numpy()
    m = np.ones(s.shape[:2], bool) if mask is None else mask.numpy()
    total, count = 0.0, 0
    for b in range(s.shape[0]):
        for i in range(s.shape[1]):
            if m[b, i]:
                p, q = np_softmax(t[b, i] / temperature), np_softmax(s[b, i] / temperature)
                total += ref_divergence(name, p, q, **params)
                count += 1
    return temperature**2 * total / max(count, 1)


def ref_cross_entropy(student, labels, mask) -> float:
    s, y = student.double().numpy(), labels.numpy()
    m = np.ones(y.shape, bool) if mask is None else mask.numpy()
    total, count = 0.0, 0
    for b in range(s.shape[0]):
        for i in range(s.shape[1]):
            if m[b, i] and y[b, i] != -100:
                z = s[b, i]
                total += float(np.log(np.exp(z - z.max()).sum()) + z.max() - z[y[b, i]])
                count += 1
    return total / max(count, 1)


# --- numbers --------------------------------------------------------------------------------


@kd_cases
@pytest.mark.parametrize("temperature", TEMPERATURES)
def test_kd_matches_float64_reference(name, params, temperature):
    for seed in SEEDS:
        student, teacher, mask, _ = make_batch(seed)
        for m in (mask, None):
            got = kd(name, student, teacher, m, temperature, **params)
            want = ref_kd(name, student, teacher, m, temperature, **params)
            assert got.dtype == torch.float64
            assert got.item() == pytest.approx(want, rel=1e-10, abs=1e-12)


@pytest.mark.parametrize("temperature", TEMPERATURES)
def test_forward_kl_matches_torch_kl_div(temperature):
    student, teacher, mask, _ = make_batch(3)
    per_token = F.kl_div(
        F.log_softmax(student / temperature, -1),
        F.log_softmax(teacher / temperature, -1),
        reduction="none",
        log_target=True,
    ).sum(-1)  # (B, T)
    want = temperature**2 * per_token[mask].mean()
    torch.testing.assert_close(forward_kl(student, teacher, mask, temperature), want)


def test_cross_entropy_matches_float64_reference():
    for seed in SEEDS:
        student, _, mask, labels = make_batch(seed)
        for m in (mask, None):
            got = cross_entropy(student, labels, m)
            assert got.item() == pytest.approx(ref_cross_entropy(student, labels, m), rel=1e-10)


def test_cross_entropy_matches_torch():
    student, _, _, labels = make_batch(4)
    want = F.cross_entropy(student.reshape(-1, V), labels.reshape(-1), ignore_index=-100)
    torch.testing.assert_close(cross_entropy(student, labels), want)


# --- properties -----------------------------------------------------------------------------


@kd_cases
@pytest.mark.parametrize("temperature", TEMPERATURES)
def test_zero_on_identical_distributions(name, params, temperature):
    student, _, mask, _ = make_batch(5)
    loss = kd(name, student, student.clone(), mask, temperature, **params)
    assert abs(loss.item()) < 1e-12


@kd_cases
@pytest.mark.parametrize("scale", [1.0, 30.0])
def test_non_negative(name, params, scale):
    for seed in SEEDS:
        student, teacher, mask, _ = make_batch(seed, scale=scale)
        loss = kd(name, student, teacher, mask, 2.0, **params)
        assert loss.isfinite() and loss.item() >= 0.0


def _value_and_grads(fn, student, teacher):
    student = student.clone().requires_grad_(True)
    teacher = teacher.clone().requires_grad_(True)
    value = fn(student, teacher)
    value.backward()
    return value.detach(), student.grad, teacher.grad


@kd_cases
@pytest.mark.parametrize("garbage", [1e6, -1e30, math.nan])
def test_masked_tokens_change_neither_value_nor_gradient(name, params, garbage):
    student, teacher, mask, _ = make_batch(6)

    def loss(s, t):
        return kd(name, s, t, mask, 2.0, **params)

    clean = _value_and_grads(loss, student, teacher)
    dirty_student, dirty_teacher = student.clone(), teacher.clone()
    dirty_student[~mask] = garbage
    dirty_teacher[~mask] = -garbage
    dirty = _value_and_grads(loss, dirty_student, dirty_teacher)
    for a, b in zip(clean, dirty, strict=True):
        assert torch.equal(a, b)
    assert torch.equal(dirty[1][~mask], torch.zeros_like(dirty[1][~mask]))


@pytest.mark.parametrize("garbage", [1e6, math.nan])
def test_cross_entropy_ignores_masked_and_unlabelled_tokens(garbage):
    student, teacher, mask, labels = make_batch(7)
    valid = mask & (labels != -100)

    def loss(s, _):
        return cross_entropy(s, labels, mask)

    clean = _value_and_grads(loss, student, teacher)
    dirty_student = student.clone()
    dirty_student[~valid] = garbage
    dirty = _value_and_grads(loss, dirty_student, teacher)
    assert torch.equal(clean[0], dirty[0])
    assert torch.equal(clean[1], dirty[1])
    assert torch.equal(dirty[1][~valid], torch.zeros_like(dirty[1][~valid]))


@kd_cases
def test_all_masked_is_exactly_zero_with_zero_gradients(name, params):
    student, teacher, _, _ = make_batch(8)
    none = torch.zeros(B, T, dtype=torch.bool)
    value, s_grad, t_grad = _value_and_grads(
        lambda s, t: kd(name, s, t, none, 2.0, **params), student, teacher
    )
    assert value.item() == 0.0
    assert torch.equal(s_grad, torch.zeros_like(s_grad))
    assert torch.equal(t_grad, torch.zeros_like(t_grad))


def test_cross_entropy_all_ignored_is_exactly_zero_with_zero_gradients():
    student, teacher, _, _ = make_batch(8)
    labels = torch.full((B, T), -100)
    value, s_grad, _ = _value_and_grads(lambda s, t: cross_entropy(s, labels), student, teacher)
    assert value.item() == 0.0
    assert torch.equal(s_grad, torch.zeros_like(s_grad))


@kd_cases
@pytest.mark.parametrize("temperature", [0.5, 2.0, 3.0])
def test_temperature_scales_by_t_squared(name, params, temperature):
    student, teacher, mask, _ = make_batch(9)
    loss = kd(name, student, teacher, mask, temperature, **params)
    # T² × the divergence between the softened distributions ...
    unscaled = ref_kd(name, student / temperature, teacher / temperature, mask, 1.0, **params)
    assert loss.item() == pytest.approx(temperature**2 * unscaled, rel=1e-10)
    # ... and exactly T² × the T=1 loss on logits / T.
    at_one = kd(name, student / temperature, teacher / temperature, mask, 1.0, **params)
    assert torch.equal(loss, temperature**2 * at_one)


@kd_cases
def test_num_tokens_makes_micro_batches_sum_to_the_full_batch(name, params):
    student, teacher, mask, _ = make_batch(10)
    full = kd(name, student, teacher, mask, 2.0, **params)
    for num_tokens in (int(mask.sum()), mask.sum()):
        summed = sum(
            kd(
                name,
                student[i : i + 1],
                teacher[i : i + 1],
                mask[i : i + 1],
                2.0,
                num_tokens=num_tokens,
                **params,
            )
            for i in range(B)
        )
        torch.testing.assert_close(summed, full)


def test_cross_entropy_num_tokens_makes_micro_batches_sum_to_the_full_batch():
    student, _, mask, labels = make_batch(11)
    full = cross_entropy(student, labels, mask)
    num_tokens = (mask & (labels != -100)).sum()
    summed = sum(
        cross_entropy(student[i : i + 1], labels[i : i + 1], mask[i : i + 1], num_tokens=num_tokens)
        for i in range(B)
    )
    torch.testing.assert_close(summed, full)


@kd_cases
def test_num_tokens_zero_is_guarded(name, params):
    student, teacher, _, _ = make_batch(12)
    none = torch.zeros(B, T, dtype=torch.bool)
    assert LOSSES[name](student, teacher, none, num_tokens=0, **params).item() == 0.0


@pytest.mark.parametrize("temperature", TEMPERATURES)
def test_reverse_kl_is_forward_kl_with_roles_swapped(temperature):
    student, teacher, mask, _ = make_batch(13)
    torch.testing.assert_close(
        reverse_kl(student, teacher, mask, temperature),
        forward_kl(teacher, student, mask, temperature),
    )


@pytest.mark.parametrize("temperature", TEMPERATURES)
def test_jsd_is_symmetric_at_half_and_bounded_by_log2(temperature):
    for scale in (1.0, 100.0):
        student, teacher, mask, _ = make_batch(14, scale=scale)
        forward = jsd(student, teacher, mask, temperature)
        torch.testing.assert_close(forward, jsd(teacher, student, mask, temperature))
        assert 0.0 <= forward.item() <= math.log(2) * temperature**2 + 1e-12


@pytest.mark.parametrize("beta", [0.0, 1.0])
def test_jsd_is_zero_at_beta_endpoints(beta):
    student, teacher, mask, _ = make_batch(15)
    value, s_grad, t_grad = _value_and_grads(
        lambda s, t: jsd(s, t, mask, 2.0, beta=beta), student, teacher
    )
    assert abs(value.item()) < 1e-12
    assert s_grad.isfinite().all() and t_grad.isfinite().all()


@pytest.mark.parametrize("temperature", TEMPERATURES)
def test_tvd_is_between_zero_and_t_squared(temperature):
    for scale in (1.0, 100.0):
        student, teacher, mask, _ = make_batch(16, scale=scale)
        assert 0.0 <= tvd(student, teacher, mask, temperature).item() <= temperature**2
    # disjoint one-hot-like distributions reach the bound
    student = torch.tensor([[[100.0, 0.0]]], dtype=torch.float64)
    assert tvd(student, student.flip(-1)).item() == pytest.approx(1.0)


@pytest.mark.parametrize("temperature", TEMPERATURES)
def test_skew_kl_endpoints(temperature):
    student, teacher, mask, _ = make_batch(17)
    torch.testing.assert_close(
        skew_kl(student, teacher, mask, temperature, alpha=0.0),
        forward_kl(student, teacher, mask, temperature),
    )
    assert abs(skew_kl(student, teacher, mask, temperature, alpha=1.0).item()) < 1e-12


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("name", [*LOSSES, "cross_entropy"])
def test_low_precision_inputs_compute_in_float32(dtype, name):
    student, teacher, mask, labels = make_batch(18, dtype=dtype)
    if name == "cross_entropy":
        got = cross_entropy(student, labels, mask)
        want = cross_entropy(student.double(), labels, mask)
    else:
        got = kd(name, student, teacher, mask, 2.0)
        want = kd(name, student.double(), teacher.double(), mask, 2.0)
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(want.item(), rel=1e-5, abs=1e-6)


@kd_cases
def test_gradcheck(name, params):
    g = torch.Generator().manual_seed(19)
    student = torch.randn(1, 3, 4, generator=g, dtype=torch.float64, requires_grad=True)
    teacher = torch.randn(1, 3, 4, generator=g, dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([[True, False, True]])
    assert torch.autograd.gradcheck(
        lambda s, t: kd(name, s, t, mask, 2.0, **params), (student, teacher)
    )


def test_gradcheck_cross_entropy():
    g = torch.Generator().manual_seed(20)
    student = torch.randn(1, 3, 4, generator=g, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([[0, -100, 3]])
    assert torch.autograd.gradcheck(lambda s: cross_entropy(s, labels), (student,))


# --- the teacher signal and argument checks -------------------------------------------------


@kd_cases
def test_dense_signal_equals_bare_tensor(name, params):
    student, teacher, mask, _ = make_batch(21)
    assert torch.equal(
        kd(name, student, DenseSignal(teacher), mask, 2.0, **params),
        kd(name, student, teacher, mask, 2.0, **params),
    )


@pytest.mark.parametrize("name", list(LOSSES))
def test_malformed_sparse_signal_is_rejected(name):
    # The sparse path's numbers are tested in test_sparse.py.
    student, _, _, _ = make_batch(22)
    good = {
        "ids": torch.stack([torch.arange(2)] * (B * T)).reshape(B, T, 2),
        "logprobs": torch.full((B, T, 2), math.log(0.4)),
        "tail_logprob": torch.full((B, T), math.log(0.2)),
    }
    assert torch.isfinite(kd(name, student, SparseSignal(**good)))
    for key, bad, match in [
        ("ids", good["ids"][:, :-1], "ids"),
        ("logprobs", good["logprobs"][..., :1], "logprobs"),
        ("tail_logprob", good["tail_logprob"][:, :-1], "tail_logprob"),
    ]:
        with pytest.raises(ValueError, match=match):
            kd(name, student, SparseSignal(**{**good, key: bad}))


def test_bad_arguments_are_rejected():
    student, teacher, mask, labels = make_batch(23)
    with pytest.raises(ValueError, match="same"):
        forward_kl(student, teacher[..., :-1])
    with pytest.raises(ValueError, match="mask shape"):
        forward_kl(student, teacher, mask[:, :-1])
    with pytest.raises(ValueError, match="labels shape"):
        cross_entropy(student, labels[:, :-1])
    with pytest.raises(ValueError, match="temperature"):
        forward_kl(student, teacher, temperature=0.0)
    with pytest.raises(ValueError, match="beta"):
        jsd(student, teacher, beta=1.5)
    with pytest.raises(ValueError, match="alpha"):
        skew_kl(student, teacher, alpha=-0.1)
    with pytest.raises(TypeError, match="TeacherSignal"):
        forward_kl(student, teacher.numpy())
