"""An OpenAI-compatible endpoint as the teacher (``teacher: openai:MODEL``): chat
completions with concurrency, retries, a rate limit, timeouts and token accounting.

Works against OpenAI itself, `potstill serve`, vLLM or any server speaking
``/v1/chat/completions``. The official ``openai`` client sends each request with its
own retries off (``max_retries=0``); `EndpointClient` retries instead, so every attempt
is counted and paced by the same rate limit. The API key is read from the environment
variable the recipe names and never written anywhere: messages quote the variable's
name, and any text from the server is scrubbed of the key before it is shown.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, fields
from typing import Any, TypeVar

from potstill.teachers.retry import RateLimiter, backoff_delay
from potstill.teachers.settings import EndpointConfig
from potstill.util.errors import PotstillError
from potstill.util.secrets import env_secret

RETRY_STATUS = frozenset({408, 409, 429})  # and every 5xx
NO_KEY = "unused"  # what is sent when the recipe names no key variable: servers want one
T = TypeVar("T")
R = TypeVar("R")


def api_key_from_env(env_name: str | None) -> str | None:
    """The key in environment variable ``env_name`` (None: no key is needed).

    Raises a one-line `PotstillError` naming the variable when it is unset or empty.
    """
    return env_secret(
        env_name,
        setting="teach.endpoint.api_key_env",
        fix=", or name another variable "
        "(teach.endpoint.api_key_env=null for a server that needs no key)",
    )


@dataclass(frozen=True)
class ChatRequest:
    """One chat completion to ask for (one choice)."""

    messages: list[dict[str, str]]
    max_tokens: int
    sampling_temperature: float
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()


@dataclass(frozen=True)
class ChatReply:
    """The endpoint's answer; token counts are None when the server reports no usage."""

    text: str
    finish_reason: str | None
    prompt_tokens: int | None
    completion_tokens: int | None


@dataclass
class EndpointUsage:
    """What the endpoint was asked and answered, counted across threads.

    ``requests`` counts HTTP attempts (retries included), ``retries`` the attempts after a
    failure, ``replies`` the completions received; tokens are the servers' own counts.
    """

    requests: int = 0
    retries: int = 0
    replies: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    replies_without_usage: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, **counts: int) -> None:
        with self._lock:
            for name, value in counts.items():
                setattr(self, name, getattr(self, name) + value)

    def as_dict(self) -> dict[str, int]:
        with self._lock:
            return {f.name: getattr(self, f.name) for f in fields(self) if f.name[0] != "_"}


class _Stopped(Exception):
    """The batch was abandoned (another request failed for good, or Ctrl-C)."""


class EndpointClient:
    """Chat completions from ``model`` at ``config.base_url``.

    Args:
        config: the endpoint section (URL, key variable, concurrency, retries, limits).
        model: the served model's name (``MODEL`` of ``openai:MODEL``).
        api_key: the key (from `api_key_from_env`); None sends a placeholder.
        backoff_s: the first retry's delay step (doubling per retry, capped at
            ``max_backoff_s``).
    """

    def __init__(
        self,
        config: EndpointConfig,
        model: str,
        api_key: str | None,
        *,
        backoff_s: float = 0.5,
        max_backoff_s: float = 30.0,
    ) -> None:
        from openai import OpenAI

        self.config = config
        self.model = model
        self.usage = EndpointUsage()
        self._secret = api_key
        self._client = OpenAI(
            base_url=config.base_url,
            api_key=api_key or NO_KEY,
            max_retries=0,  # ours, below: counted and rate-limited
            timeout=config.timeout_s,
        )
        self._limiter = RateLimiter(config.requests_per_minute)
        self._backoff_s, self._max_backoff_s = backoff_s, max_backoff_s
        self._rng = random.Random()
        self._rng_lock = threading.Lock()
        # OpenAI's reasoning models refuse `max_tokens`; switched on their first refusal.
        self._token_param = "max_tokens"
        self.kept = "rows"  # what a failure's message says is kept ("shards" for a cache)

    def close(self) -> None:
        self._client.close()

    def chat(self, request: ChatRequest, *, stop: threading.Event | None = None) -> ChatReply:
        """One completion, retried on 429, 5xx, timeouts and connection errors.

        Raises a one-line `PotstillError` when the server refuses the request (other
        4xx) or keeps failing past ``max_retries`` retries. Setting ``stop`` ends its
        waits (backoff, rate limit) early with `_Stopped`.
        """

        def send() -> Any:
            return self._client.chat.completions.create(**self._arguments(request))

        def switch(error: Any) -> bool:
            if not self._wants_completion_tokens(error):
                return False
            self._token_param = "max_completion_tokens"
            return True

        return self._reply(self.call(send, stop=stop, resend=switch))

    @property
    def openai(self) -> Any:
        """The underlying ``openai.OpenAI`` client (its own retries off), for requests
        other than chat sent through `call`."""
        return self._client

    def call(
        self,
        send: Callable[[], Any],
        *,
        stop: threading.Event | None = None,
        resend: Callable[[Any], bool] = lambda _: False,
    ) -> Any:
        """``send()`` (one request through `openai`), paced by the rate limit and retried
        on 429, 5xx, timeouts and connection errors; returns its answer.

        ``resend(error)`` may adjust the request after an HTTP error and return True to
        send it again at once, uncounted (a server that wants another parameter name).
        Raises a one-line `PotstillError` when the server refuses the request (other 4xx)
        or keeps failing past ``max_retries`` retries; ``stop`` ends its waits early.
        """
        from openai import APIConnectionError, APIStatusError, APITimeoutError

        stop = stop or threading.Event()
        attempt = 0
        while True:
            _wait(stop, self._limiter.reserve())
            self.usage.add(requests=1)
            retry_after = None
            try:
                return send()
            except APIStatusError as e:
                if resend(e):
                    continue
                if not (e.status_code in RETRY_STATUS or e.status_code >= 500):
                    raise PotstillError(self._refused(e)) from None
                failure = f"HTTP {e.status_code}: {self.server_message(e)}"
                retry_after = _retry_after(e.response.headers)
            except APITimeoutError:
                failure = f"no answer within {self.config.timeout_s:g} s"
            except APIConnectionError as e:
                failure = f"cannot connect ({self._scrub(_cause(e))})"
            if attempt >= self.config.max_retries:
                raise PotstillError(
                    f"{self.config.base_url} failed {attempt + 1} time(s) in a row (last: "
                    f"{failure}); the {self.kept} finished so far are kept: rerun to "
                    "continue, or raise teach.endpoint.max_retries / lower "
                    "teach.endpoint.concurrency"
                ) from None
            with self._rng_lock:
                delay = backoff_delay(
                    attempt,
                    self._rng,
                    base_s=self._backoff_s,
                    max_s=self._max_backoff_s,
                    retry_after_s=retry_after,
                )
            self.usage.add(retries=1)
            attempt += 1
            _wait(stop, delay)

    def chat_all(
        self, requests: Sequence[ChatRequest], on_reply: Callable[[int, ChatReply], None]
    ) -> None:
        """Send every request, ``config.concurrency`` at a time, and call
        ``on_reply(index, reply)`` in this thread as each answer arrives (in the order
        they arrive).

        The first request that fails for good stops the rest: requests not yet sent are
        dropped, the answers already received are handed over, then its error is raised.
        """
        self.map_all(lambda request, stop: self.chat(request, stop=stop), requests, on_reply)

    def map_all(
        self,
        ask: Callable[[T, threading.Event], R],
        items: Sequence[T],
        on_reply: Callable[[int, R], None],
    ) -> None:
        """`chat_all` for any request: ``ask(item, stop)`` for every item, ``concurrency``
        at a time, each answer handed to ``on_reply(index, answer)`` in this thread.

        ``ask`` sends through `call` with ``stop``, so a failure for good stops the rest
        as in `chat_all`; an error ``ask`` raises itself (a bad answer) does too.
        """
        stop = threading.Event()
        pool = ThreadPoolExecutor(self.config.concurrency, thread_name_prefix="potstill-endpoint")
        todo = iter(enumerate(items))
        running: dict[Future[R], int] = {}
        error: BaseException | None = None
        try:
            while True:
                while error is None and len(running) < self.config.concurrency:
                    item = next(todo, None)
                    if item is None:
                        break
                    running[pool.submit(ask, item[1], stop)] = item[0]
                if not running:
                    break
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    index = running.pop(future)
                    try:
                        reply = future.result()
                    except _Stopped:
                        continue
                    except Exception as e:
                        if error is None:
                            error = e
                            stop.set()  # the others' backoff and rate-limit waits end now
                        continue
                    on_reply(index, reply)
        finally:
            stop.set()
            pool.shutdown(wait=False, cancel_futures=True)
        if error is not None:
            raise error

    # --- helpers -----------------------------------------------------------------------

    def _arguments(self, request: ChatRequest) -> dict[str, Any]:
        arguments: dict[str, Any] = {
            "model": self.model,
            "messages": request.messages,
            self._token_param: request.max_tokens,
            "temperature": request.sampling_temperature,
            "top_p": request.top_p,
        }
        if request.seed is not None:
            arguments["seed"] = request.seed
        if request.stop:
            arguments["stop"] = list(request.stop)
        return arguments

    def _reply(self, response: Any) -> ChatReply:
        if not response.choices:
            raise PotstillError(
                f"{self.config.base_url} answered without a choice; is it OpenAI-compatible?"
            )
        choice = response.choices[0]
        usage = response.usage
        prompt_tokens = getattr(usage, "prompt_tokens", None)
        completion_tokens = getattr(usage, "completion_tokens", None)
        if usage is None:
            self.usage.add(replies=1, replies_without_usage=1)
        else:
            self.usage.add(
                replies=1,
                prompt_tokens=prompt_tokens or 0,
                completion_tokens=completion_tokens or 0,
            )
        return ChatReply(
            choice.message.content or "", choice.finish_reason, prompt_tokens, completion_tokens
        )

    def _wants_completion_tokens(self, error: Any) -> bool:
        return (
            error.status_code == 400
            and self._token_param == "max_tokens"
            and "max_completion_tokens" in self.server_message(error)
        )

    def _refused(self, error: Any) -> str:
        status, message = error.status_code, self.server_message(error)
        where = self.config.base_url
        if status in (401, 403):
            env = self.config.api_key_env
            source = f"the key in ${env}" if env else "the request (no key was sent)"
            return (
                f"{where} refused {source} (HTTP {status}: {message}); check the key, or "
                "teach.endpoint.api_key_env"
            )
        if status == 404:
            return (
                f"{where}: HTTP 404 for model {self.model!r} ({message}); check the name after "
                "openai: and teach.endpoint.base_url"
            )
        return f"{where} refused the request (HTTP {status}: {message})"

    def server_message(self, error: Any) -> str:
        """The server's own one-line error message of an HTTP error, scrubbed of the key."""
        body = error.body
        if isinstance(body, dict):
            body = body.get("error", body)
        message = body.get("message") if isinstance(body, dict) else None
        return self._scrub(str(message or error.message))

    def _scrub(self, text: str) -> str:
        """``text`` on one line, at most 300 characters, the key replaced by ``***``."""
        if self._secret:
            text = text.replace(self._secret, "***")
        text = " ".join(text.split())
        return text if len(text) <= 300 else text[:297] + "..."


def _retry_after(headers: Any) -> float | None:
    """A ``Retry-After`` header in seconds (the HTTP-date form is ignored)."""
    try:
        value = float(headers.get("retry-after", ""))
    except (TypeError, ValueError):
        return None
    return value if value >= 0 else None


def _wait(stop: threading.Event, seconds: float) -> None:
    """Sleep ``seconds``, unless ``stop`` is set meanwhile (then raise `_Stopped`)."""
    if stop.wait(seconds) if seconds > 0 else stop.is_set():
        raise _Stopped


def _cause(error: BaseException) -> str:
    """The low-level reason behind a connection error (refused, reset, DNS…)."""
    reason = str(error.__cause__ or error).strip()
    return reason.splitlines()[0] if reason else type(error).__name__
