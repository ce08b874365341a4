"""Label scoring through `potstill serve` on loopback (`ServedLabelScorer`) against the
local reference scorer on the same tiny Llama: the same log-likelihoods, truncation and
prior."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from potstill.serve import Engine, create_app
from potstill.synth.label import build_prompt, calibrate, score_labels_naive
from potstill.synth.served_labels import ServedLabelScorer
from potstill.teachers.endpoint import EndpointClient
from potstill.teachers.prompt_logprobs import PromptLogprobs
from potstill.teachers.settings import EndpointConfig
from tests.conftest import make_llama, make_tokenizer
from tests.serve.conftest import serving
from tests.synth.test_label import CHAT_TEMPLATE, SPEC, TEXTS


@pytest.fixture(scope="module")
def lm():
    torch.set_num_threads(1)
    tokenizer = make_tokenizer()
    tokenizer.chat_template = CHAT_TEMPLATE
    model = make_llama(len(tokenizer), layers=2, seed=0).eval()
    model.config.max_position_embeddings = 512  # the tiny tokenizer's prompt is long
    return model, tokenizer


@pytest.fixture(scope="module")
def scorer(lm):
    engine = Engine(*lm, max_batch=4, max_queue=8)
    engine.start()
    try:
        with serving(create_app(engine, "tiny")) as url:
            config = EndpointConfig(base_url=url, api_key_env=None, concurrency=2)
            client = EndpointClient(config, "tiny", None)
            yield ServedLabelScorer(
                PromptLogprobs(client, top_k=1, vocab_size=len(lm[1]), tokenizer=lm[1])
            )
            client.close()
    finally:
        engine.close()


@pytest.mark.parametrize("max_length", [None, 232], ids=["whole", "cut"])
def test_served_scores_equal_the_local_ones(lm, scorer, max_length):
    prompt = build_prompt(lm[1], SPEC)
    local = score_labels_naive(lm[0], prompt, TEXTS, max_length=max_length)
    served = scorer.score(prompt, TEXTS, batch_size=3, max_length=max_length)
    assert served.logprobs.shape == (len(TEXTS), 3) and served.label_names == prompt.label_names
    np.testing.assert_allclose(served.logprobs, local.logprobs, atol=1e-4, rtol=0)
    assert served.truncated == local.truncated
    assert (served.truncated > 0) == (max_length is not None)


def test_served_prior_equals_the_local_one(lm, scorer):
    prompt = build_prompt(lm[1], SPEC)
    served = scorer.prior(prompt, batch_size=4)
    np.testing.assert_allclose(served, calibrate(lm[0], prompt), atol=1e-5)
    assert served.sum() == pytest.approx(1.0)
