"""Per-row token choice and the reported log-probabilities, against hand computations."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from potstill.generation.sampling import RowSampling, next_tokens, nucleus, token_logprobs


def test_nucleus_keeps_the_smallest_set_reaching_top_p():
    torch.manual_seed(0)
    probs = torch.softmax(torch.randn(50, dtype=torch.float64), dim=0)
    for top_p in (0.05, 0.3, 0.9, 0.999):
        kept = nucleus(probs, top_p) > 0
        order = probs.argsort(descending=True)
        cumulative = probs[order].cumsum(0)
        size = int((cumulative < top_p).sum()) + 1  # the first prefix that reaches top_p
        assert set(torch.nonzero(kept)[:, 0].tolist()) == set(order[:size].tolist())
    assert torch.equal(nucleus(probs, 1.0), probs)


def test_rows_follow_their_own_settings_and_seeds():
    torch.manual_seed(0)
    logits = torch.randn(3, 40)

    def seeded(seed: int) -> RowSampling:
        return RowSampling(0.8, 0.9, torch.Generator().manual_seed(seed))

    greedy = RowSampling(0.0, 1.0, None)
    first = next_tokens(logits, [greedy, seeded(1), seeded(2)])
    assert first[0] == logits[0].argmax()
    # A seeded row draws the same token whatever the other rows are.
    again = next_tokens(logits[1:2], [seeded(1)])
    assert first[1] == again[0]
    # Sampling follows the tempered, truncated distribution: count many draws.
    generator = torch.Generator().manual_seed(3)
    row = RowSampling(0.5, 1.0, generator)
    draws = torch.stack([next_tokens(logits[:1], [row]) for _ in range(4000)])[:, 0]
    frequencies = torch.bincount(draws, minlength=40).double() / 4000
    expected = torch.softmax(logits[0].double() / 0.5, dim=0)
    assert (frequencies - expected).abs().max() < 0.03


def test_logprobs_are_log_softmax_of_the_raw_logits():
    torch.manual_seed(0)
    logits = torch.randn(2, 30) * 3
    chosen = torch.tensor([4, 17])
    chosen_lp, top_ids, top_lp = token_logprobs(logits, chosen, top_k=5)
    reference = F.log_softmax(logits.double(), dim=-1)
    assert torch.allclose(chosen_lp.double(), reference[[0, 1], chosen], atol=1e-6)
    values, ids = reference.topk(5, dim=-1)
    assert torch.equal(top_ids, ids)
    assert torch.allclose(top_lp.double(), values, atol=1e-6)
    _, none_ids, none_lp = token_logprobs(logits, chosen, top_k=0)
    assert none_ids.shape == none_lp.shape == (2, 0)
