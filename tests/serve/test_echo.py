"""A completion's prompt in its answer (`potstill.serve.echo`): ``echo`` with ``logprobs``
(OpenAI's legacy format, the first token null), vLLM's ``prompt_logprobs`` and
``return_tokens_as_token_ids``, checked against a float64 forward pass of the model."""

from __future__ import annotations

import copy

import pytest
import torch

from potstill.generation.text import TokenText
from tests.serve.conftest import MODEL, post

PROMPT = "To be, or not to be, that is the question"


def float64_logprobs(model, ids: list[int]) -> torch.Tensor:
    """``(T − 1, V)`` float64: row ``t`` is the distribution over token ``t + 1``."""
    reference = copy.deepcopy(model).double()
    with torch.no_grad():
        logits = reference(input_ids=torch.tensor([ids]), use_cache=False).logits[0, :-1]
    return torch.log_softmax(logits, dim=-1)


def echo(url: str, ids: list[int], **fields) -> dict:
    body = {"model": MODEL, "prompt": ids, "echo": True, "max_tokens": 0, **fields}
    status, answer = post(f"{url}completions", body)
    assert status == 200, answer
    return answer


@pytest.fixture
def prompt_ids(lm) -> list[int]:
    return lm[1](PROMPT)["input_ids"]


def test_echo_with_max_tokens_0_gives_every_prompt_tokens_logprobs(serve, lm, prompt_ids):
    client, _ = serve
    answer = echo(str(client.base_url), prompt_ids, logprobs=5, return_tokens_as_token_ids=True)
    (choice,) = answer["choices"]
    assert choice["text"] == lm[1].decode(prompt_ids) and choice["finish_reason"] == "length"
    assert answer["usage"] == {
        "prompt_tokens": len(prompt_ids),
        "completion_tokens": 0,
        "total_tokens": len(prompt_ids),
    }
    logprobs = choice["logprobs"]
    assert logprobs["tokens"] == [f"token_id:{i}" for i in prompt_ids]
    assert logprobs["token_logprobs"][0] is None and logprobs["top_logprobs"][0] is None
    reference = float64_logprobs(lm[0], prompt_ids)  # (T − 1, V)
    for t in range(1, len(prompt_ids)):
        row = reference[t - 1]
        assert logprobs["token_logprobs"][t] == pytest.approx(row[prompt_ids[t]].item(), abs=1e-4)
        top = {int(k.removeprefix("token_id:")): v for k, v in logprobs["top_logprobs"][t].items()}
        ids = row.topk(5).indices
        # the top 5 and the prompt's own token when it is not among them (as OpenAI)
        assert set(top) == set(ids.tolist()) | {prompt_ids[t]}
        for i, value in top.items():
            assert value == pytest.approx(row[i].item(), abs=1e-4)
    offsets = logprobs["text_offset"]
    assert offsets[0] == 0 and offsets == sorted(offsets)
    assert lm[1].decode(prompt_ids[:3]) == choice["text"][: offsets[3]]


def test_echo_names_tokens_by_text_without_the_flag(serve, lm, prompt_ids):
    client, _ = serve
    names = TokenText(lm[1])
    choice = echo(str(client.base_url), prompt_ids, logprobs=2)["choices"][0]
    assert choice["logprobs"]["tokens"] == [names.text_of(i) for i in prompt_ids]


def test_echo_before_generated_tokens(serve, lm, prompt_ids):
    client, _ = serve
    answer = client.completions.create(
        model=MODEL, prompt=prompt_ids, echo=True, logprobs=1, max_tokens=3, temperature=0
    )
    plain = client.completions.create(
        model=MODEL, prompt=prompt_ids, logprobs=1, max_tokens=3, temperature=0
    )
    (choice,), (alone,) = answer.choices, plain.choices
    prompt_text = lm[1].decode(prompt_ids)
    assert choice.text == prompt_text + alone.text
    n = len(prompt_ids)
    assert len(choice.logprobs.tokens) == n + len(alone.logprobs.tokens)
    assert choice.logprobs.tokens[n:] == alone.logprobs.tokens
    assert choice.logprobs.text_offset[n:] == alone.logprobs.text_offset
    assert choice.logprobs.token_logprobs[0] is None


def test_vllm_prompt_logprobs_are_keyed_by_id_with_ranks(serve, lm, prompt_ids):
    client, _ = serve
    body = {"model": MODEL, "prompt": prompt_ids, "prompt_logprobs": 3, "max_tokens": 0}
    status, answer = post(f"{client.base_url}completions", body)
    assert status == 200, answer
    (choice,) = answer["choices"]
    assert choice["text"] == "" and choice["logprobs"] is None  # no echo asked for
    scores = choice["prompt_logprobs"]
    assert len(scores) == len(prompt_ids) and scores[0] is None
    reference = float64_logprobs(lm[0], prompt_ids)
    for t in range(1, len(prompt_ids)):
        row = reference[t - 1]
        entry = {int(k): v for k, v in scores[t].items()}
        assert set(entry) >= set(row.topk(3).indices.tolist())
        own = entry[prompt_ids[t]]
        assert own["logprob"] == pytest.approx(row[prompt_ids[t]].item(), abs=1e-4)
        assert own["rank"] == int((row > row[prompt_ids[t]]).sum()) + 1


def test_prompts_of_several_lengths_each_get_their_own(serve, lm):
    client, _ = serve
    prompts = [lm[1](text)["input_ids"] for text in ("To be", PROMPT, "The slings")]
    answer = echo(str(client.base_url), prompts, logprobs=1, return_tokens_as_token_ids=True)
    assert [c["index"] for c in answer["choices"]] == [0, 1, 2]
    for choice, ids in zip(answer["choices"], prompts, strict=True):
        assert choice["logprobs"]["tokens"] == [f"token_id:{i}" for i in ids]
        expected = float64_logprobs(lm[0], ids)[torch.arange(len(ids) - 1), ids[1:]]
        got = choice["logprobs"]["token_logprobs"][1:]
        assert got == pytest.approx(expected.tolist(), abs=1e-4)
