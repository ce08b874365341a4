"""The sampled (and hybrid) teacher signal: an unbiased estimate of the teacher's
distribution and of the forward-KL gradient, a proper distribution in distinct slots,
and its arguments checked."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from potstill.losses import forward_kl
from potstill.losses.sampled import sampled_signal
from tests.conftest import make_llama

VOCAB = 40


def _logits(seed: int = 0, tokens: int = 3) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(1, tokens, VOCAB, generator=g, dtype=torch.float64) * 2.0).contiguous()


def _estimate(signal) -> torch.Tensor:
    """The signal as a dense (B, T, V) distribution."""
    dense = torch.zeros(*signal.ids.shape[:2], VOCAB, dtype=torch.float64)
    return dense.scatter_add(-1, signal.ids.long(), signal.logprobs.double().exp())


@pytest.mark.parametrize("top", [0, 4])
def test_the_estimate_is_unbiased_and_a_proper_distribution(top):
    logits = _logits()
    p = F.softmax(logits, dim=-1)
    g = torch.Generator().manual_seed(1)
    draws, samples = 3000, 8
    # One draw per batch row: the same tokens, drawn independently 3,000 times.
    signal = sampled_signal(logits.expand(draws, 3, VOCAB), samples, top=top, generator=g)
    estimate = _estimate(signal)  # (draws, 3, V)
    assert torch.allclose(estimate.sum(-1), torch.ones(draws, 3, dtype=torch.float64))
    assert torch.isneginf(signal.tail_logprob).all()
    mean = estimate.mean(0, keepdim=True)
    # Each p̂(v) is a mean of draws·samples Bernoulli shares of the sampled mass: within
    # 5 standard errors of p(v) (the top ids are exact).
    se = (p * (1 - p) / (draws * samples)).sqrt()
    assert ((mean - p).abs() <= 5 * se + 1e-12).all()
    if top:
        top_ids = p.topk(top, dim=-1).indices
        assert torch.allclose(mean.gather(-1, top_ids), p.gather(-1, top_ids), atol=1e-12)


def test_slots_are_distinct_and_free_slots_hold_no_mass():
    logits = _logits(tokens=6)
    logits[0, 0] = -30.0
    logits[0, 0, 3] = 30.0  # one id holds all the mass: every draw repeats it
    signal = sampled_signal(logits, 16, top=2, generator=torch.Generator().manual_seed(0))
    assert signal.ids.shape == (1, 6, 18) and signal.logprobs.shape == (1, 6, 18)
    for row in signal.ids[0]:
        assert len(set(row.tolist())) == 18  # the codec needs distinct ids
        assert (row >= 0).all() and (row < VOCAB).all()
    # The top ids come first, with their exact log-probabilities.
    top = F.log_softmax(logits, -1).topk(2, dim=-1)
    assert torch.equal(signal.ids[..., :2], top.indices)
    assert torch.allclose(signal.logprobs[..., :2], top.values)
    # With (almost) all the mass on id 3, kept as a top id, the drawn slots weigh nothing.
    assert signal.ids[0, 0, 0] == 3 and (signal.logprobs[0, 0, 2:].exp() < 1e-20).all()


def test_with_enough_draws_of_a_tiny_vocabulary_the_estimate_converges():
    logits = torch.log(torch.tensor([[[0.5, 0.3, 0.15, 0.05]]], dtype=torch.float64))
    signal = sampled_signal(logits, 4, generator=torch.Generator().manual_seed(0))
    assert signal.ids.shape[-1] == 4  # top + samples <= V is allowed up to V
    g = torch.Generator().manual_seed(2)
    s = sampled_signal(logits.expand(4000, 1, 4), 4, generator=g)
    many = torch.zeros(4000, 1, 4, dtype=torch.float64).scatter_add(
        -1, s.ids.long(), s.logprobs.exp()
    )
    assert torch.allclose(many.mean(0)[0], logits.exp()[0, 0], atol=0.01)


def test_the_forward_kl_gradient_on_a_tiny_student_is_unbiased():
    torch.manual_seed(0)
    student = make_llama(VOCAB, layers=1, seed=5).double()
    ids = torch.randint(0, VOCAB, (2, 6))
    teacher_logits = _logits(seed=3, tokens=6).expand(2, 6, VOCAB).clone()
    params = [p for p in student.parameters() if p.requires_grad]

    def gradient(teacher) -> torch.Tensor:
        student.zero_grad()
        forward_kl(student(input_ids=ids).logits, teacher).backward()
        return torch.cat([p.grad.flatten() for p in params])

    dense = gradient(teacher_logits)
    g = torch.Generator().manual_seed(4)
    draws = 400
    grads = torch.stack(
        [gradient(sampled_signal(teacher_logits, 8, top=2, generator=g)) for _ in range(draws)]
    )
    mean, spread = grads.mean(0), grads.std(0)
    # Stated tolerance: the mean of 400 draws lies within 5 standard errors of the dense
    # gradient in every coordinate (plus float64 noise), and points the same way.
    assert ((mean - dense).abs() <= 5 * spread / math.sqrt(draws) + 1e-9).all()
    assert F.cosine_similarity(mean, dense, dim=0) > 0.99


def test_bad_arguments_are_refused():
    logits = _logits()
    with pytest.raises(ValueError, match=r"\(B, T, V\)"):
        sampled_signal(logits[0], 4)
    with pytest.raises(ValueError, match=r"\(B, T, V\)"):
        sampled_signal(logits.long(), 4)
    with pytest.raises(ValueError, match="samples must be"):
        sampled_signal(logits, 0)
    with pytest.raises(ValueError, match="exceed the vocabulary"):
        sampled_signal(logits, 30, top=20)
    with pytest.raises(ValueError, match="temperature"):
        sampled_signal(logits, 4, temperature=0.0)


def test_the_draws_are_taken_at_the_signals_temperature():
    logits = _logits()
    # 36 exact ids and 4 draws over the other 4: the exact part is softmax(logits / 2).
    signal = sampled_signal(logits, 4, top=36, temperature=2.0)
    assert signal.temperature == 2.0
    want = F.softmax(logits / 2.0, dim=-1).gather(-1, signal.ids[..., :36])
    assert torch.allclose(signal.logprobs[..., :36].exp(), want, atol=1e-12)


def test_drawing_a_chunk_of_rows_at_a_time_changes_nothing(monkeypatch):
    # The rows are drawn a chunk at a time (to keep each chunk's probabilities small); the
    # draws are the ones a single (N, V) pass takes, bit for bit, with the top ids too.
    import potstill.losses.sampled as sampled

    logits = _logits(tokens=23)
    for top in (0, 3):
        whole = sampled_signal(logits, 6, top=top, generator=torch.Generator().manual_seed(5))
        monkeypatch.setattr(sampled, "CHUNK_BYTES", 5 * VOCAB * 8)  # 4 rows a chunk
        parts = sampled_signal(logits, 6, top=top, generator=torch.Generator().manual_seed(5))
        monkeypatch.undo()
        assert torch.equal(whole.ids, parts.ids)
        assert torch.equal(whole.logprobs, parts.logprobs)
