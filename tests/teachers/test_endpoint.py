"""The endpoint client against real HTTP servers on loopback: retries with backoff on 429,
5xx, timeouts and refused connections; no retry on other 4xx; concurrency, rate limit and
token usage counted; the API key sent but never shown."""

from __future__ import annotations

import random
import threading
import time

import pytest

from potstill.serve.server import bind
from potstill.teachers.endpoint import (
    ChatReply,
    ChatRequest,
    EndpointClient,
    api_key_from_env,
)
from potstill.teachers.retry import RateLimiter, backoff_delay
from potstill.teachers.settings import EndpointConfig
from potstill.util.errors import PotstillError
from tests.teachers.scripted import Script, scripted

KEY = "sk-test-endpoint-7c1e9a"
REQUEST = ChatRequest([{"role": "user", "content": "hi"}], max_tokens=4, sampling_temperature=0)


def client_for(url: str, **config) -> EndpointClient:
    endpoint = EndpointConfig(base_url=url, api_key_env="POTSTILL_TEST_KEY", **config)
    return EndpointClient(endpoint, "tiny", KEY, backoff_s=0.05, max_backoff_s=0.5)


def test_429_twice_then_an_answer_is_retried_and_counted():
    script = Script(statuses=[429, 429])
    with scripted(script) as url:
        client = client_for(url, max_retries=2)
        reply = client.chat(REQUEST)
    assert reply == ChatReply("reply to hi", "stop", 5, 3)
    assert client.usage.as_dict() == {
        "requests": 3,
        "retries": 2,
        "replies": 1,
        "prompt_tokens": 5,
        "completion_tokens": 3,
        "replies_without_usage": 0,
    }
    # Backoff: the first retry waits at least 0.025 s, the second at least 0.05 s.
    gaps = [b - a for a, b in zip(script.arrivals, script.arrivals[1:], strict=False)]
    assert gaps[0] >= 0.025 and gaps[1] >= 0.05
    assert script.authorizations == [f"Bearer {KEY}"] * 3
    assert script.bodies[0]["model"] == "tiny" and script.bodies[0]["max_tokens"] == 4


def test_server_errors_and_retry_after_are_honoured():
    script = Script(statuses=[500, 503], headers={"Retry-After": "0.3"})
    with scripted(script) as url:
        client = client_for(url)
        start = time.monotonic()
        assert client.chat(REQUEST).text == "reply to hi"
    assert time.monotonic() - start >= 0.3  # Retry-After (0.3 s) beat the backoff (<0.1 s)
    assert client.usage.retries == 2 and client.usage.requests == 3


def test_retries_run_out_with_one_line_that_never_shows_the_key():
    script = Script(statuses=[429] * 10)
    with scripted(script) as url:
        client = client_for(url, max_retries=2)
        with pytest.raises(PotstillError) as error:
            client.chat(REQUEST)
    message = str(error.value)
    assert "failed 3 time(s) in a row" in message and "HTTP 429" in message
    assert "\n" not in message and KEY not in message and "***" in message  # server echoed it
    assert client.usage.requests == 3 and client.usage.retries == 2


@pytest.mark.parametrize(
    ("status", "words"), [(401, "refused the key in $POTSTILL_TEST_KEY"), (404, "model 'tiny'")]
)
def test_other_client_errors_are_not_retried(status, words):
    script = Script(statuses=[status] * 3)
    with scripted(script) as url:
        client = client_for(url)
        with pytest.raises(PotstillError) as error:
            client.chat(REQUEST)
    assert words in str(error.value) and KEY not in str(error.value)
    assert client.usage.requests == 1 and client.usage.retries == 0


def test_a_server_that_wants_max_completion_tokens_gets_it():
    script = Script(
        statuses=[400],
        error_message="Unsupported parameter: 'max_tokens'. Use 'max_completion_tokens'.",
    )
    with scripted(script) as url:
        client = client_for(url)
        assert client.chat(REQUEST).text == "reply to hi"
        client.chat(REQUEST)
    assert "max_tokens" in script.bodies[0]
    assert [b.get("max_completion_tokens") for b in script.bodies[1:]] == [4, 4]
    assert all("max_tokens" not in b for b in script.bodies[1:])


def test_a_refused_connection_is_retried_then_reported():
    sock = bind("127.0.0.1", 0)
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    client = client_for(f"http://127.0.0.1:{port}/v1", max_retries=1)
    with pytest.raises(PotstillError) as error:
        client.chat(REQUEST)
    assert "cannot connect" in str(error.value) and "failed 2 time(s)" in str(error.value)
    assert client.usage.requests == 2


def test_a_slow_answer_times_out():
    with scripted(Script(delay_s=2.0)) as url:
        client = client_for(url, timeout_s=0.2, max_retries=0)
        start = time.monotonic()
        with pytest.raises(PotstillError, match=r"no answer within 0\.2 s"):
            client.chat(REQUEST)
        assert time.monotonic() - start < 1.5


def test_chat_all_keeps_concurrency_requests_in_flight():
    script = Script(delay_s=0.2)
    requests = [
        ChatRequest([{"role": "user", "content": f"q{i}"}], max_tokens=4, sampling_temperature=0)
        for i in range(8)
    ]
    replies: dict[int, str] = {}
    threads = set()
    with scripted(script) as url:
        client = client_for(url, concurrency=4)

        def on_reply(index: int, reply: ChatReply) -> None:
            threads.add(threading.get_ident())
            replies[index] = reply.text

        client.chat_all(requests, on_reply)
    assert replies == {i: f"reply to q{i}" for i in range(8)}
    assert script.most_in_flight == 4
    assert threads == {threading.get_ident()}  # answers are handed over in the caller's thread
    assert client.usage.replies == 8 and client.usage.completion_tokens == 24


def test_requests_per_minute_spaces_the_starts():
    script = Script()
    with scripted(script) as url:
        client = client_for(url, concurrency=4, requests_per_minute=600)  # one per 0.1 s
        client.chat_all([REQUEST] * 5, lambda i, r: None)
    gaps = [b - a for a, b in zip(script.arrivals, script.arrivals[1:], strict=False)]
    assert len(gaps) == 4 and min(gaps) >= 0.05  # 0.1 s apart, less network jitter
    assert script.arrivals[-1] - script.arrivals[0] >= 0.35


def test_chat_all_stops_at_a_refusal_and_hands_over_what_came_back():
    script = Script(statuses=[200, 400])  # the second request is refused
    received = []
    with scripted(script) as url:
        client = client_for(url, concurrency=1)
        with pytest.raises(PotstillError, match="HTTP 400"):
            client.chat_all([REQUEST] * 5, lambda i, r: received.append(i))
    assert received == [0]  # one at a time: the first answered, the second refused
    assert len(script.arrivals) == 2  # nothing was sent after the refusal


def test_the_key_comes_from_the_named_variable(monkeypatch):
    monkeypatch.setenv("POTSTILL_TEST_KEY", f"  {KEY}\n")
    assert api_key_from_env("POTSTILL_TEST_KEY") == KEY
    assert api_key_from_env(None) is None
    monkeypatch.delenv("POTSTILL_TEST_KEY")
    with pytest.raises(PotstillError) as error:
        api_key_from_env("POTSTILL_TEST_KEY")
    assert "POTSTILL_TEST_KEY is not set or empty" in str(error.value)


def test_backoff_grows_exponentially_within_its_jitter():
    rng = random.Random(3)
    for attempt in range(8):
        step = min(30.0, 0.5 * 2**attempt)
        delays = [backoff_delay(attempt, rng) for _ in range(200)]
        assert step / 2 <= min(delays) and max(delays) <= step
        assert max(delays) - min(delays) > step / 4  # it is jittered
    assert backoff_delay(1, rng, retry_after_s=100.0) == 30.0  # capped


def test_the_rate_limiter_books_slots_across_threads():
    limiter = RateLimiter(6000, clock=lambda: 0.0)  # one start per 0.01 s, time stands still
    waits: list[float] = []
    lock = threading.Lock()

    def book() -> None:
        wait = limiter.reserve()
        with lock:
            waits.append(wait)

    threads = [threading.Thread(target=book) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(waits) == pytest.approx([0.01 * k for k in range(20)])  # no slot shared
    assert RateLimiter(None).reserve() == 0.0
