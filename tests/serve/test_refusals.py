"""What the server refuses, and how: bad requests (400/404), a missing or wrong API key
(401, the key never echoed or logged), a full queue (429); each an OpenAI-style error
body with a one-line message. Also: requests waiting together decode as one batch, each
row with its own settings."""

from __future__ import annotations

import logging
import threading
import time

import openai
import pytest
import torch
from openai import OpenAI

from potstill.serve import Engine
from tests.serve.conftest import MODEL, post, running

KEY = "sk-potstill-test-7c1e9a"


def assert_error(status: int, body: dict, expected_status: int, *words: str) -> None:
    assert status == expected_status, body
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert "\n" not in error["message"] and error["message"]
    for word in words:
        assert word in error["message"], error["message"]


@pytest.mark.parametrize(
    ("change", "status", "words"),
    [
        ({"max_tokens": 0}, 400, ["max_tokens: 0 generates nothing", "echo"]),
        ({"max_tokens": -1}, 400, ["max_tokens", "greater than or equal to 0"]),
        ({"temperature": -0.5}, 400, ["temperature"]),
        ({"top_p": 0}, 400, ["top_p"]),
        ({"n": 0}, 400, ["n:"]),
        ({"model": "gpt-4"}, 404, ["'gpt-4'", "not served here"]),
        ({"stop": ["a", ""]}, 400, ["stop", "empty"]),
        ({"logprobs": 21}, 400, ["logprobs"]),
        ({"echo": True, "stream": True}, 400, ["echo and prompt_logprobs", "leave stream out"]),
        ({"prompt_logprobs": 21}, 400, ["prompt_logprobs"]),
        ({"frequency_penalty": 0.5}, 400, ["frequency_penalty is not supported"]),
        ({"prompt": ""}, 400, ["prompt is empty"]),
        ({"prompt": [1, 2, 99999]}, 400, ["token ids"]),
        ({"prompt": [1, "a"]}, 400, ["prompt: expected one of: list[int], list[list[int]]"]),
        ({"prompt": "to be " * 200, "max_tokens": 100}, 400, ["context is 256 tokens"]),
    ],
)
def test_bad_completion_requests_get_one_line_errors(serve, change, status, words):
    client, _ = serve
    body = {"model": MODEL, "prompt": "To be", "max_tokens": 4, **change}
    assert_error(*post(f"{client.base_url}completions", body), status, *words)


def test_bad_chat_requests_and_bodies(serve):
    client, _ = serve
    url = f"{client.base_url}chat/completions"
    hi = [{"role": "user", "content": "hi"}]
    assert_error(*post(url, {"model": MODEL, "messages": []}), 400, "messages")
    bad_role = {"model": MODEL, "messages": [{"role": "wizard", "content": "hi"}]}
    assert_error(*post(url, bad_role), 400, "role")
    image = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]
    assert_error(*post(url, {"model": MODEL, "messages": image}), 400, "only text")
    top = {"model": MODEL, "messages": hi, "top_logprobs": 2}
    assert_error(*post(url, top), 400, "top_logprobs needs logprobs")
    assert_error(*post(url, b"{not json"), 400, "not valid JSON")
    assert_error(*post(f"{client.base_url}nowhere", {}), 404, "Not Found")
    # Through the official client: the same refusal, as its exception type.
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model=MODEL, messages=hi, max_tokens=0)
    assert refused.value.status_code == 400


def test_api_key_is_required_checked_and_never_echoed_or_logged(lm, caplog):
    caplog.set_level(logging.DEBUG)
    engine = Engine(*lm)
    engine.start()
    with running(engine, api_key=KEY) as url:
        body = {"model": MODEL, "prompt": "To be", "max_tokens": 2}
        status, missing = post(f"{url}/completions", body)
        assert_error(status, missing, 401, "API key")
        wrong_key = "sk-wrong-key-3141"
        status, wrong = post(f"{url}/completions", body, {"Authorization": f"Bearer {wrong_key}"})
        assert_error(status, wrong, 401, "API key")
        assert wrong_key not in str(wrong) and KEY not in str(wrong) + str(missing)
        # The key is checked before the body: no validation details for strangers.
        assert_error(*post(f"{url}/completions", {"model": MODEL}), 401, "API key")
        with pytest.raises(openai.AuthenticationError):
            OpenAI(base_url=url, api_key=wrong_key, max_retries=0).models.list()
        client = OpenAI(base_url=url, api_key=KEY, max_retries=0)
        assert [m.id for m in client.models.list().data] == [MODEL]
        out = client.completions.create(model=MODEL, prompt="To be", max_tokens=2)
        assert out.usage.completion_tokens == 2
        status, _ = post(f"{url}/completions", body, {"Authorization": f"Bearer {KEY}"})
        assert status == 200
    assert KEY not in caplog.text and wrong_key not in caplog.text


def _in_background(fn) -> tuple[threading.Thread, dict]:
    result: dict = {}

    def run() -> None:
        try:
            result["value"] = fn()
        except Exception as e:  # handed to the test thread
            result["error"] = e

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, result


def _wait_for(condition, seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_a_full_queue_answers_429_and_the_queued_request_completes(lm):
    engine = Engine(*lm, max_batch=1, max_queue=1)  # not started: requests wait in the queue
    with running(engine) as url:
        client = OpenAI(base_url=url, api_key="unused", max_retries=0)
        thread, first = _in_background(
            lambda: client.completions.create(model=MODEL, prompt="To be", max_tokens=3)
        )
        _wait_for(lambda: engine.queued() == 1)
        status, body = post(f"{url}/completions", {"model": MODEL, "prompt": "No", "max_tokens": 3})
        assert_error(status, body, 429, "busy", "retry later")
        assert body["error"]["type"] == "rate_limit_error"
        with pytest.raises(openai.RateLimitError):
            client.completions.create(model=MODEL, prompt="No", max_tokens=3)
        engine.start()
        thread.join(timeout=30)
        assert "error" not in first and first["value"].usage.completion_tokens == 3


def test_waiting_requests_share_a_batch_and_keep_their_own_settings(lm):
    engine = Engine(*lm, max_batch=8)  # started once all three requests wait
    requests = [  # finishing after 10, 3 and 6 tokens: the batch shrinks twice
        {"prompt": "The slings and arrows", "max_tokens": 10, "temperature": 0},
        {"prompt": "No", "max_tokens": 3, "temperature": 0.9, "top_p": 0.8, "seed": 11},
        {"prompt": "To be, or not to be", "max_tokens": 6, "temperature": 0, "logprobs": 2},
    ]
    with running(engine) as url:
        client = OpenAI(base_url=url, api_key="unused", max_retries=0)
        jobs = [
            _in_background(lambda kw=kw: client.completions.create(model=MODEL, **kw))
            for kw in requests
        ]
        _wait_for(lambda: engine.queued() == 3)
        engine.start()
        for thread, _ in jobs:
            thread.join(timeout=30)
        assert engine.stats.batches == 1 and engine.stats.largest_batch == 3
        together = [result["value"].choices[0] for _, result in jobs]
        alone = [client.completions.create(model=MODEL, **kw).choices[0] for kw in requests]
        assert engine.stats.batches == 4
    assert [c.text for c in together] == [c.text for c in alone]
    assert [c.finish_reason for c in together] == ["length"] * 3
    for batched, single in zip(
        together[2].logprobs.top_logprobs, alone[2].logprobs.top_logprobs, strict=True
    ):
        assert batched.keys() == single.keys()
        assert [batched[k] for k in single] == pytest.approx(list(single.values()), abs=1e-5)
    assert together[0].logprobs is None


class Exploding(torch.nn.Module):
    """A causal LM whose forward fails, like a model running out of memory."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model
        self.config = model.config
        self.generation_config = model.generation_config

    def get_input_embeddings(self) -> torch.nn.Module:
        return self.model.get_input_embeddings()

    def forward(self, input_ids, attention_mask=None, position_ids=None, cache=None, **kwargs):
        raise RuntimeError("CUDA out of memory (simulated)")


def test_a_failing_model_fails_the_request_not_the_server(lm, caplog):
    model, tokenizer = lm
    engine = Engine(Exploding(model), tokenizer)
    engine.start()
    body = {"model": MODEL, "prompt": "To be", "max_tokens": 3}
    with running(engine) as url:
        status, error = post(f"{url}/completions", body)
        assert_error(status, error, 500, "generation failed", "out of memory")
        assert error["error"]["type"] == "server_error"
        client = OpenAI(base_url=url, api_key="unused", max_retries=0)
        with pytest.raises(openai.APIError, match="generation failed"):
            list(client.completions.create(stream=True, **body))  # an error event mid-stream
        assert [m.id for m in client.models.list().data] == [MODEL]  # still serving
    assert "generation failed" in caplog.text
