"""Combining recipe loss terms: weights, parts, the shared token set, parameters."""

from __future__ import annotations

import pytest
import torch

from potstill.losses import (
    KD_LOSSES,
    LOSS_NAMES,
    LossTerm,
    combine_losses,
    cross_entropy,
    forward_kl,
    jsd,
    skew_kl,
)

B, T, V = 2, 4, 6


def make_batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    student = torch.randn(B, T, V, generator=g, dtype=torch.float64) * 2
    teacher = torch.randn(B, T, V, generator=g, dtype=torch.float64) * 2
    labels = torch.randint(0, V, (B, T), generator=g)
    labels[0, 1] = -100
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[1, 3] = False
    return student, teacher, labels, mask


HINTON = [
    LossTerm(loss="forward_kl", weight=0.5, temperature=2.0),
    LossTerm(loss="cross_entropy", weight=0.5),
]


def test_kd_losses_cover_every_kd_name_in_the_config():
    inside = {"hidden_mse", "hidden_cosine", "attention_kl"}
    assert set(KD_LOSSES) == set(LOSS_NAMES) - {"cross_entropy"} - inside


def test_hinton_mix_equals_the_direct_computation():
    student, teacher, labels, mask = make_batch()
    valid = mask & (labels != -100)
    total, parts = combine_losses(HINTON, student, labels, teacher, mask)
    kl = forward_kl(student, teacher, valid, 2.0)
    ce = cross_entropy(student, labels, mask)
    torch.testing.assert_close(total, 0.5 * kl + 0.5 * ce, rtol=0, atol=0)
    assert set(parts) == {"forward_kl", "cross_entropy"}
    torch.testing.assert_close(parts["forward_kl"], kl, rtol=0, atol=0)
    torch.testing.assert_close(parts["cross_entropy"], ce, rtol=0, atol=0)


def test_parts_are_detached_and_the_total_has_a_gradient():
    student, teacher, labels, mask = make_batch()
    student.requires_grad_(True)
    total, parts = combine_losses(HINTON, student, labels, teacher, mask)
    assert all(not p.requires_grad for p in parts.values())
    total.backward()
    assert student.grad is not None and student.grad.abs().sum() > 0


def test_kd_terms_count_the_same_tokens_as_cross_entropy():
    student, teacher, labels, _ = make_batch()
    _, parts = combine_losses(HINTON, student, labels, teacher)
    assert parts["forward_kl"] == forward_kl(student, teacher, labels != -100, 2.0)
    assert parts["forward_kl"] != forward_kl(student, teacher, None, 2.0)


def test_missing_teacher_raises_a_clear_error():
    student, _, labels, _ = make_batch()
    with pytest.raises(ValueError, match=r"forward_kl need the teacher's logits"):
        combine_losses(HINTON, student, labels)


def test_cross_entropy_alone_needs_no_teacher():
    student, _, labels, mask = make_batch()
    total, parts = combine_losses([LossTerm(loss="cross_entropy")], student, labels, mask=mask)
    assert total == cross_entropy(student, labels, mask)
    assert list(parts) == ["cross_entropy"]


def test_beta_and_alpha_are_passed_through():
    student, teacher, labels, _ = make_batch()
    valid = labels != -100
    terms = [
        LossTerm(loss="jsd", temperature=1.5, params={"beta": 0.9}),
        LossTerm(loss="skew_kl", weight=2.0, params={"alpha": 0.3}),
    ]
    total, parts = combine_losses(terms, student, labels, teacher)
    want_jsd = jsd(student, teacher, valid, 1.5, beta=0.9)
    want_skew = skew_kl(student, teacher, valid, alpha=0.3)
    assert parts["jsd"] == want_jsd and want_jsd != jsd(student, teacher, valid, 1.5)
    assert parts["skew_kl"] == want_skew and want_skew != skew_kl(student, teacher, valid)
    torch.testing.assert_close(total, want_jsd + 2.0 * want_skew)


def test_unset_beta_and_alpha_use_the_function_defaults():
    student, teacher, labels, _ = make_batch()
    valid = labels != -100
    terms = [LossTerm(loss="jsd"), LossTerm(loss="skew_kl")]
    _, parts = combine_losses(terms, student, labels, teacher)
    assert parts["jsd"] == jsd(student, teacher, valid)
    assert parts["skew_kl"] == skew_kl(student, teacher, valid)


def test_repeated_losses_get_unique_keys():
    student, teacher, labels, _ = make_batch()
    terms = [
        LossTerm(loss="forward_kl", temperature=1.0),
        LossTerm(loss="forward_kl", temperature=2.0),
        LossTerm(loss="jsd", params={"beta": 0.1}),
        LossTerm(loss="jsd", params={"beta": 0.9}),
        LossTerm(loss="tvd"),
        LossTerm(loss="tvd"),
    ]
    _, parts = combine_losses(terms, student, labels, teacher)
    assert list(parts) == [
        "forward_kl@T1",
        "forward_kl@T2",
        "jsd@T1,beta0.1",
        "jsd@T1,beta0.9",
        "tvd@T1#1",
        "tvd@T1#2",
    ]
    assert parts["forward_kl@T2"] == forward_kl(student, teacher, labels != -100, 2.0)


def test_zero_weight_terms_are_skipped():
    student, _, labels, _ = make_batch()
    terms = [LossTerm(loss="cross_entropy"), LossTerm(loss="reverse_kl", weight=0.0)]
    total, parts = combine_losses(terms, student, labels)  # no teacher needed either
    assert list(parts) == ["cross_entropy"]
    assert total == cross_entropy(student, labels)
    with pytest.raises(ValueError, match="weight 0"):
        combine_losses([LossTerm(loss="cross_entropy", weight=0.0)], student, labels)


def test_num_tokens_is_passed_to_every_term():
    student, teacher, labels, mask = make_batch()
    full, _ = combine_losses(HINTON, student, labels, teacher, mask)
    num_tokens = (mask & (labels != -100)).sum()
    summed = sum(
        combine_losses(
            HINTON,
            student[i : i + 1],
            labels[i : i + 1],
            teacher[i : i + 1],
            mask[i : i + 1],
            num_tokens=num_tokens,
        )[0]
        for i in range(B)
    )
    torch.testing.assert_close(summed, full)
