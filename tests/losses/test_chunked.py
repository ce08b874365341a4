"""The chunked, lm-head-fused loss against `combine_losses` on the full logits."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from potstill.losses import DenseSignal, LossTerm, chunked_kd_loss, combine_losses, top_k_signal

B, T, H, V, K = 2, 7, 5, 23, 4
N_VALID = 10  # the valid tokens make_batch leaves: chunk sizes 1 and 5 divide it, 3 not

HINTON = [
    LossTerm(loss="forward_kl", weight=0.5, temperature=2.0),
    LossTerm(loss="cross_entropy", weight=0.5),
]
EVERY_LOSS = [
    LossTerm(loss="reverse_kl", weight=0.2, temperature=1.5),
    LossTerm(loss="jsd", weight=0.3, params={"beta": 0.3}),
    LossTerm(loss="tvd", weight=0.1),
    LossTerm(loss="skew_kl", weight=0.2, temperature=0.7, params={"alpha": 0.2}),
    LossTerm(loss="forward_kl", weight=0.1),
    LossTerm(loss="cross_entropy", weight=0.1),
]
TEACHERS = ["dense", "sparse"]


def make_batch(seed: int = 0, bias: bool = False):
    """float64 hidden states, lm head, teacher logits, labels with -100s, a mask."""
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(B, T, H, generator=g, dtype=torch.float64)
    weight = torch.randn(V, H, generator=g, dtype=torch.float64)
    lm_bias = torch.randn(V, generator=g, dtype=torch.float64) if bias else None
    teacher = torch.randn(B, T, V, generator=g, dtype=torch.float64) * 2
    labels = torch.randint(0, V, (B, T), generator=g)
    labels[0, [1, 4]] = -100
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[1, 5:] = False
    assert (mask & (labels != -100)).sum() == N_VALID
    return hidden, weight, lm_bias, teacher, labels, mask


def signal_of(kind: str, teacher: torch.Tensor):
    if kind == "tensor":
        return teacher
    if kind == "dense":
        return DenseSignal(teacher)
    return top_k_signal(teacher, k=K, temperature=1.0)  # re-tempered for T != 1 terms


def losses_and_grads(loss_fn, hidden, weight, lm_bias):
    leaves = [t.clone().requires_grad_() for t in (hidden, weight)]
    if lm_bias is not None:
        leaves.append(lm_bias.clone().requires_grad_())
    total, parts = loss_fn(*leaves)
    total.backward()
    return total.detach(), parts, [leaf.grad for leaf in leaves]


def assert_same(chunked, full):
    (total, parts, grads), (ref_total, ref_parts, ref_grads) = chunked, full
    torch.testing.assert_close(total, ref_total, rtol=1e-12, atol=1e-14)
    assert parts.keys() == ref_parts.keys()
    for key in parts:
        torch.testing.assert_close(parts[key], ref_parts[key], rtol=1e-12, atol=1e-14)
    for grad, ref_grad in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(grad, ref_grad, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("kind", TEACHERS)
@pytest.mark.parametrize("terms", [HINTON, EVERY_LOSS], ids=["hinton", "every-loss"])
@pytest.mark.parametrize("chunk_size", [1, 3, 5, 1024])
def test_chunked_equals_unchunked(kind, terms, chunk_size):
    hidden, weight, _, teacher_logits, labels, mask = make_batch(0)
    teacher = signal_of(kind, teacher_logits)

    def full(h, w):
        return combine_losses(terms, h @ w.T, labels, teacher, mask)

    def chunked(h, w):
        return chunked_kd_loss(h, w, teacher, terms, labels, mask, chunk_size=chunk_size)

    assert_same(
        losses_and_grads(chunked, hidden, weight, None),
        losses_and_grads(full, hidden, weight, None),
    )


@pytest.mark.parametrize("kind", ["tensor", "sparse"])
def test_bias_and_global_token_count(kind):
    hidden, weight, lm_bias, teacher_logits, labels, _ = make_batch(1, bias=True)
    teacher = signal_of(kind, teacher_logits)

    def full(h, w, b):
        logits = F.linear(h, w, b)
        return combine_losses(HINTON, logits, labels, teacher, num_tokens=37)

    def chunked(h, w, b):
        return chunked_kd_loss(
            h, w, teacher, HINTON, labels, num_tokens=37, chunk_size=4, lm_head_bias=b
        )

    assert_same(
        losses_and_grads(chunked, hidden, weight, lm_bias),
        losses_and_grads(full, hidden, weight, lm_bias),
    )


@pytest.mark.parametrize("kind", ["tensor", *TEACHERS])
def test_all_masked_gives_zero_and_zero_gradients(kind):
    hidden, weight, _, teacher_logits, labels, _ = make_batch(2)
    teacher = signal_of(kind, teacher_logits)
    mask = torch.zeros(B, T, dtype=torch.bool)
    total, parts, grads = losses_and_grads(
        lambda h, w: chunked_kd_loss(h, w, teacher, HINTON, labels, mask, chunk_size=3),
        hidden,
        weight,
        None,
    )
    assert total.item() == 0.0
    assert all(value.item() == 0.0 for value in parts.values())
    assert all(grad is not None and (grad == 0).all() for grad in grads)


def test_cross_entropy_alone_needs_no_teacher_and_no_grad_works():
    hidden, weight, _, _, labels, mask = make_batch(3)
    terms = [LossTerm(loss="cross_entropy")]
    with torch.no_grad():
        total, parts = chunked_kd_loss(hidden, weight, None, terms, labels, mask, chunk_size=3)
    expected, _ = combine_losses(terms, hidden @ weight.T, labels, None, mask)
    torch.testing.assert_close(total, expected, rtol=1e-12, atol=1e-14)
    assert list(parts) == ["cross_entropy"]
    with pytest.raises(ValueError, match="teacher"):
        chunked_kd_loss(hidden, weight, None, HINTON, labels, mask)


class LargestOutput(TorchDispatchMode):
    """Records the largest tensor any op produces, forward and backward."""

    def __init__(self):
        super().__init__()
        self.numel = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        # Views and in-place results share an input's storage: nothing new was made.
        inputs = {_storage(t) for t in _tensors((*args, *(kwargs or {}).values()))}
        for t in _tensors(out if isinstance(out, tuple | list) else (out,)):
            if _storage(t) not in inputs:
                self.numel = max(self.numel, t.numel())
        return out


def _tensors(values):
    return [v for v in values if isinstance(v, torch.Tensor)]


def _storage(t: torch.Tensor) -> int:
    return t.untyped_storage().data_ptr()


@pytest.mark.parametrize("kind", ["dense", "sparse"])
def test_the_full_student_logits_never_exist(kind):
    hidden, weight, _, teacher_logits, labels, mask = make_batch(4)
    teacher = signal_of(kind, teacher_logits)
    hidden.requires_grad_()
    weight.requires_grad_()
    with LargestOutput() as chunked:
        total, _ = chunked_kd_loss(hidden, weight, teacher, EVERY_LOSS, labels, mask, chunk_size=3)
        total.backward()
    with LargestOutput() as full:
        combine_losses(EVERY_LOSS, hidden @ weight.T, labels, teacher, mask)[0].backward()
    # The lm head's weight gradient (V x H, H = 5) is the largest thing the chunked loss
    # makes; the unchunked one makes (B x T x V) logits.
    assert chunked.numel == V * H < N_VALID * V <= full.numel


def test_bad_arguments_are_rejected():
    hidden, weight, _, teacher, labels, mask = make_batch(5)
    with pytest.raises(ValueError, match="chunk_size"):
        chunked_kd_loss(hidden, weight, teacher, HINTON, labels, chunk_size=0)
    with pytest.raises(ValueError, match="lm_head_weight"):
        chunked_kd_loss(hidden, weight.T, teacher, HINTON, labels)
    with pytest.raises(ValueError, match="labels shape"):
        chunked_kd_loss(hidden, weight, teacher, HINTON, labels[:, 1:])
    with pytest.raises(ValueError, match="mask shape"):
        chunked_kd_loss(hidden, weight, teacher, HINTON, labels, mask[:, 1:])
    with pytest.raises(ValueError, match="teacher logits"):
        chunked_kd_loss(hidden, weight, teacher[:, 1:], HINTON, labels)
    sparse = top_k_signal(teacher, k=K)
    with pytest.raises(ValueError, match="tail_logprob"):
        bad = type(sparse)(sparse.ids, sparse.logprobs, sparse.tail_logprob[:, 1:])
        chunked_kd_loss(hidden, weight, bad, HINTON, labels)
