"""`PromptLogprobs`: a served model's top-k prompt log-probabilities, through a real
`potstill serve` app on loopback (checked against a float64 forward pass) and a scripted
server for the answers a client must refuse, each in one line."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from potstill.serve import Engine, create_app
from potstill.teachers.endpoint import EndpointClient
from potstill.teachers.prompt_logprobs import PromptLogprobs
from potstill.teachers.settings import EndpointConfig
from potstill.util.errors import PotstillError
from tests.conftest import make_tokenizer
from tests.serve.conftest import make_decisive_llama, serving
from tests.teachers.logprobs_server import (
    LogprobsScript,
    as_text,
    id_outside,
    logprobs_server,
    no_logprobs,
    one_short,
)

TEXTS = ["To be, or not to be, that is the question", "The slings and arrows of outrage"]
K = 5


@pytest.fixture(scope="module")
def lm():
    torch.set_num_threads(1)
    tokenizer = make_tokenizer()
    model = make_decisive_llama(len(tokenizer)).eval()
    return model, tokenizer


@pytest.fixture(scope="module")
def prompts(lm) -> list[list[int]]:
    ids = [lm[1](text)["input_ids"] for text in TEXTS]
    return [p[:8] for p in ids]  # one length: one batch on the server


@pytest.fixture(scope="module")
def served(lm):
    engine = Engine(*lm, max_batch=4, max_queue=8)
    engine.start()
    try:
        with serving(create_app(engine, "tiny")) as url:
            yield url
    finally:
        engine.close()


def scorer_for(url: str, lm, *, top_k: int = K, **endpoint) -> PromptLogprobs:
    config = EndpointConfig(base_url=url, api_key_env=None, **endpoint)
    client = EndpointClient(config, "tiny", None, backoff_s=0.01)
    return PromptLogprobs(client, top_k=top_k, vocab_size=len(lm[1]), tokenizer=lm[1])


def reference(model, ids: list[int]) -> torch.Tensor:
    """``(T − 1, V)`` float64 log-probabilities: row ``t`` predicts token ``t + 1``."""
    with torch.no_grad():
        logits = copy.deepcopy(model).double()(input_ids=torch.tensor([ids])).logits[0, :-1]
    return torch.log_softmax(logits, dim=-1)


def assert_rows_match(row, exact: torch.Tensor, k: int) -> None:
    values, ids = exact.topk(k + 1, dim=-1)
    clear = (values[:, k - 1] - values[:, k]) > 1e-4  # no tie at the k-th place
    assert bool(clear.all()), "the decisive model should have no ties at the cut"
    assert np.array_equal(row.ids, ids[:, :k].numpy())
    np.testing.assert_allclose(row.logprobs, values[:, :k].numpy(), atol=1e-4)
    tail = torch.log1p(-values[:, :k].exp().sum(-1))
    np.testing.assert_allclose(row.tail, tail.numpy(), atol=1e-3)


@pytest.mark.parametrize("token_ids", [True, False], ids=["token-ids", "token-text"])
def test_rows_are_the_models_top_k(served, lm, prompts, token_ids):
    scorer = scorer_for(served, lm, token_ids=token_ids)
    rows = scorer.score(prompts)
    assert len(rows) == len(prompts)
    for row, ids in zip(rows, prompts, strict=True):
        assert row.ids.shape == (len(ids) - 1, K) and row.tail.shape == (len(ids) - 1,)
        assert_rows_match(row, reference(lm[0], ids), K)
    usage = scorer.client.usage
    assert usage.requests == 1 and usage.replies == len(prompts)
    assert usage.prompt_tokens == sum(map(len, prompts))


def test_a_server_that_refuses_max_tokens_0_is_asked_for_one_token(lm, prompts):
    script = LogprobsScript(refuse_zero=True)
    with logprobs_server(lm[0], script) as url:
        scorer = scorer_for(url, lm)
        first = scorer.score(prompts[:1])
        scorer.score(prompts[1:])
    assert [b["max_tokens"] for b in script.bodies] == [0, 1, 1]
    assert all(b["echo"] and b["logprobs"] == K for b in script.bodies)
    assert script.bodies[0]["return_tokens_as_token_ids"] is True
    assert_rows_match(first[0], reference(lm[0], prompts[0]), K)
    assert scorer.client.usage.retries == 0


@pytest.mark.parametrize(
    ("spoil", "words"),
    [
        (no_logprobs, ["without prompt log-probabilities", "echo and logprobs", "are kept"]),
        (one_short, ["answered 7 positions for block 0 of 8 tokens"]),
        (id_outside(300), ["id 305", "outside the teacher's vocabulary of 300 ids"]),
        (as_text, ["where an id was asked for", "teach.endpoint.token_ids=false"]),
        (lambda _: 500, ["failed 2 time(s) in a row", "HTTP 500"]),
    ],
    ids=["no-logprobs", "one-short", "id-outside", "text-for-ids", "http-500"],
)
def test_bad_answers_are_refused_in_one_line(lm, prompts, spoil, words):
    script = LogprobsScript(spoil={0: spoil, 1: spoil})
    with logprobs_server(lm[0], script) as url:
        scorer = scorer_for(url, lm, max_retries=1)
        with pytest.raises(PotstillError) as error:
            scorer.score(prompts[:1], names=["block 0"])
    message = str(error.value)
    assert "\n" not in message and message.startswith(url)
    for word in words:
        assert word in message, message


def test_a_token_text_several_ids_share_is_refused(lm, prompts):
    def shared(answer: dict) -> dict:
        answer["choices"][0]["logprobs"]["top_logprobs"][1] = {"\ufffd": -0.1}
        return answer

    with logprobs_server(lm[0], LogprobsScript(spoil={0: shared})) as url:
        scorer = scorer_for(url, lm, token_ids=False)
        with pytest.raises(PotstillError) as error:
            scorer.score(prompts[:1])
    message = str(error.value)
    assert "which 128 ids of the teacher's tokenizer read as" in message
    assert "teach.endpoint.token_ids=true" in message


def test_echoed_ids_must_be_the_prompts(lm, prompts):
    def shifted(answer: dict) -> dict:
        tokens = answer["choices"][0]["logprobs"]["tokens"]
        tokens[2] = tokens[3]
        return answer

    script = LogprobsScript(spoil={0: shifted})
    with (
        logprobs_server(lm[0], script) as url,
        pytest.raises(PotstillError, match="the positions do not line up"),
    ):
        scorer_for(url, lm).score(prompts[:1])


def test_top_k_is_capped_by_max_logprobs(served, lm):
    with pytest.raises(ValueError, match="max_logprobs"):
        scorer_for(served, lm, top_k=21)
    assert scorer_for(served, lm, top_k=30, max_logprobs=30).top_k == 30
