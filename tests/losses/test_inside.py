"""Hidden-state and attention losses: against float64 references written one position at
a time, their mathematical properties, the head pairing, and argument errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from potstill.losses import attention_kl, hidden_cosine, hidden_mse, hidden_projections
from potstill.losses.inside import check_head_mapping, match_heads


def _states(seed: int, shape=(2, 5, 6)) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _maps(seed: int, heads: int, length: int = 5) -> torch.Tensor:
    """Causal attention probabilities ``(2, heads, L, L)``."""
    scores = _states(seed, (2, heads, length, length))
    future = torch.triu(torch.ones(length, length, dtype=torch.bool), diagonal=1)
    return torch.softmax(scores.masked_fill(future, float("-inf")), dim=-1)


def _mask() -> torch.Tensor:
    mask = torch.ones(2, 5, dtype=torch.bool)
    mask[1, 3:] = False
    return mask


def ref_hidden(name: str, s: np.ndarray, t: np.ndarray, mask: np.ndarray) -> float:
    values = []
    for b, i in zip(*np.nonzero(mask), strict=True):
        x, y = s[b, i], t[b, i]
        if name == "hidden_mse":
            values.append(sum((x - y) ** 2) / sum(y**2))
        else:
            values.append(1 - float(x @ y) / np.sqrt(float(x @ x) * float(y @ y)))
    return float(np.mean(values))


def ref_attention(s: np.ndarray, t: np.ndarray, mask: np.ndarray) -> float:
    """Per query: KL(teacher row ‖ student row) averaged over heads; mean over queries."""
    values = []
    for b, i in zip(*np.nonzero(mask), strict=True):
        per_head = []
        for h in range(s.shape[1]):
            p, q = t[b, h, i, : i + 1], s[b, h, i, : i + 1]
            per_head.append(float(np.sum(p * np.log(p / q))))
        values.append(np.mean(per_head))
    return float(np.mean(values))


@pytest.mark.parametrize("fn", [hidden_mse, hidden_cosine])
def test_hidden_losses_match_the_float64_reference(fn):
    s, t, mask = _states(0), _states(1), _mask()
    got = fn(s, t, mask)
    assert got.dtype == torch.float64
    want = ref_hidden(fn.__name__, s.numpy(), t.numpy(), mask.numpy())
    assert got.item() == pytest.approx(want, rel=1e-12)


@pytest.mark.parametrize("fn", [hidden_mse, hidden_cosine])
def test_hidden_losses_properties(fn):
    s, t = _states(0), _states(1)
    assert fn(t, t).item() == pytest.approx(0.0, abs=1e-12)
    assert fn(s, t).item() > 0
    # Scale-free: the same relative error at any size of the residual stream.
    assert fn(5.0 * s, 5.0 * t).item() == pytest.approx(fn(s, t).item(), rel=1e-12)
    # num_tokens divides the sum instead of the valid count (gradient accumulation).
    total = fn(s, t, num_tokens=1).item()
    assert fn(s, t, num_tokens=20).item() == pytest.approx(total / 20, rel=1e-12)
    assert fn(s, t).item() == pytest.approx(total / 10, rel=1e-12)


def test_hidden_mse_is_one_for_zeros_and_cosine_two_for_opposites():
    t = _states(1)
    assert hidden_mse(torch.zeros_like(t), t).item() == pytest.approx(1.0)
    assert hidden_cosine(-t, t).item() == pytest.approx(2.0)


def test_hidden_gradient_matches_finite_differences():
    s, t = _states(0, (1, 2, 3)).requires_grad_(), _states(1, (1, 2, 3))
    assert torch.autograd.gradcheck(lambda x: hidden_mse(x, t), (s,))
    assert torch.autograd.gradcheck(lambda x: hidden_cosine(x, t), (s,))


def test_attention_kl_matches_the_float64_reference():
    s, t, mask = _maps(0, 4), _maps(1, 4), _mask()
    got = attention_kl(s, t, mask)
    assert got.item() == pytest.approx(ref_attention(s.numpy(), t.numpy(), mask.numpy()), rel=1e-12)
    assert attention_kl(t, t).item() == pytest.approx(0.0, abs=1e-12)
    assert got.item() > 0


def test_grouped_heads_average_consecutive_teacher_heads():
    s, t, mask = _maps(0, 2), _maps(1, 6), _mask()
    grouped = t.reshape(2, 2, 3, 5, 5).mean(2)  # teacher heads 0-2 → 0, 3-5 → 1
    want = ref_attention(s.numpy(), grouped.numpy(), mask.numpy())
    assert attention_kl(s, t, mask).item() == pytest.approx(want, rel=1e-12)
    # More student heads than teacher heads: the student's are grouped instead.
    want = ref_attention(t.reshape(2, 2, 3, 5, 5).mean(2).numpy(), s.numpy(), mask.numpy())
    assert attention_kl(t, s, mask).item() == pytest.approx(want, rel=1e-12)


def test_mean_heads_compare_head_averaged_maps():
    s, t = _maps(0, 2), _maps(1, 3)
    got = attention_kl(s, t, heads="mean")
    want = ref_attention(
        s.mean(1, keepdim=True).numpy(), t.mean(1, keepdim=True).numpy(), np.ones((2, 5), bool)
    )
    assert got.item() == pytest.approx(want, rel=1e-12)
    assert tuple(match_heads(s, t, "mean")[0].shape) == (2, 1, 5, 5)


def test_impossible_head_pairing_is_one_line():
    with pytest.raises(ValueError, match="student's 2 and the teacher's 3 cannot be grouped") as e:
        attention_kl(_maps(0, 2), _maps(1, 3))
    assert "\n" not in str(e.value) and "heads: mean" in str(e.value)
    check_head_mapping(2, 3, "mean")  # mean pairs any counts
    with pytest.raises(ValueError, match="give grouped or mean"):
        check_head_mapping(2, 4, "first")


@pytest.mark.parametrize(
    ("student", "teacher", "mask", "message"),
    [
        (_states(0), _states(1, (2, 5, 4)), None, "project the student's"),
        (_states(0)[0], _states(1)[0], None, r"must be \(B, T, H\)"),
        (_states(0), _states(1), torch.ones(2, 5, dtype=torch.long), "mask must be"),
        (_states(0), _states(1), torch.ones(2, 4, dtype=torch.bool), "mask must be"),
        (_states(0).long(), _states(1).long(), None, "floating point"),
    ],
)
def test_hidden_arguments_are_checked(student, teacher, mask, message):
    with pytest.raises(ValueError, match=message):
        hidden_mse(student, teacher, mask)


def test_attention_arguments_are_checked():
    with pytest.raises(ValueError, match="must be \\(B, heads, T, T\\)"):
        attention_kl(_maps(0, 2)[0], _maps(1, 2)[0])
    with pytest.raises(ValueError, match="differ in batch or length"):
        attention_kl(_maps(0, 2, 5), _maps(1, 2, 4))


def test_projections_only_where_widths_differ_and_start_as_identity():
    projections = hidden_projections([(1, 3), (2, 5), (1, 3)], 4, 6)
    assert sorted(projections) == ["s1", "s2"]
    x = torch.randn(3, 4)
    y = projections["s1"](x)
    assert torch.equal(y[:, :4], x) and torch.equal(y[:, 4:], torch.zeros(3, 2))
    assert len(hidden_projections([(1, 3)], 6, 6)) == 0
