"""Generation speed on a tiny in-process model."""

from __future__ import annotations

import math

import pytest
import torch
import transformers

from potstill.evaluation.speed import generation_tokens_per_second


def tiny_llama() -> transformers.LlamaForCausalLM:
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        eos_token_id=2,
        pad_token_id=None,
    )
    return transformers.LlamaForCausalLM(config)


def test_tokens_per_second_is_positive_and_finite():
    model = tiny_llama().train()
    prompt = torch.tensor([[5, 6, 7, 8]])
    calls = []
    original = model.generate

    def counting_generate(*args, **kwargs):
        out = original(*args, **kwargs)
        calls.append(out.shape[-1] - prompt.shape[-1])
        return out

    model.generate = counting_generate
    rate = generation_tokens_per_second(model, prompt, new_tokens=8, repeats=2)
    assert math.isfinite(rate) and rate > 0
    assert calls[1:] == [8, 8]  # warm-up, then exactly new_tokens each repeat
    assert model.training  # mode handed back


def test_rejects_a_batch_of_prompts():
    with pytest.raises(ValueError, match=r"\(1, P\)"):
        generation_tokens_per_second(tiny_llama(), torch.zeros(2, 3, dtype=torch.long))
