"""The recipe's ``teach.endpoint`` section: an OpenAI-compatible endpoint as the teacher."""

from __future__ import annotations

import re

from pydantic import Field, field_validator

from potstill.util.schema import Strict

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class EndpointConfig(Strict):
    """Where an ``openai:MODEL`` teacher lives and how hard to push it.

    The key itself is never in a recipe (recipes are saved as ``config.yaml`` and shared):
    ``api_key_env`` names the environment variable that holds it; None sends no real key
    (a local server started without one). ``concurrency`` requests are in flight at once;
    each is retried up to ``max_retries`` times on HTTP 429, 5xx, timeouts and refused
    connections, with exponential backoff and jitter; ``timeout_s`` bounds one request;
    ``requests_per_minute`` (optional) spaces request starts evenly. With ``model`` the
    endpoint also teaches the cache of a local teacher it serves (`potstill.cache.endpoint_teach`).

    >>> EndpointConfig(base_url="http://127.0.0.1:8000/v1").concurrency
    4
    """

    base_url: str = "https://api.openai.com/v1"
    """The endpoint's URL with its scheme, e.g. `http://127.0.0.1:8000/v1` for a local
    server."""
    api_key_env: str | None = "OPENAI_API_KEY"
    """The NAME of the environment variable that holds the API key (never the key itself:
    recipes are saved and shared); null = send no real key, for a server that needs none."""
    concurrency: int = Field(4, ge=1, le=256)
    """Requests in flight at once."""
    max_retries: int = Field(5, ge=0, le=50)
    """Retries of one request on HTTP 429, 5xx, timeouts and refused connections, with
    exponential backoff and jitter."""
    timeout_s: float = Field(60.0, gt=0.0)
    """The longest one request may take, in seconds."""
    requests_per_minute: float | None = Field(None, gt=0.0)
    """A rate limit: request starts are spaced evenly to this many a minute; null = no
    limit."""
    model: str | None = Field(None, min_length=1)
    """The name the endpoint serves the recipe's (local) teacher under: set, `potstill teach`
    fills the cache from the server's prompt log-probabilities (`/v1/completions` with
    `echo` and `logprobs`: its top `teach.top_k` ids per position) instead of running the
    teacher here. The server must serve the teacher's own weights and tokenizer; null =
    the teacher runs here."""
    max_logprobs: int = Field(20, ge=1)
    """The most log-probabilities the server gives per position, the ceiling of
    `teach.top_k` when teaching through it: vLLM's `--max-logprobs` (20 unless raised),
    `potstill serve`'s 20."""
    token_ids: bool = True
    """Ask for the tokens as `token_id:N` (vLLM's and `potstill serve`'s
    `return_tokens_as_token_ids`), which map back to ids exactly; false for a server that
    refuses the flag: tokens then map back through the tokenizer, and an answer naming a
    token several ids share is refused."""

    @field_validator("base_url")
    @classmethod
    def _http(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError(
                "give the endpoint's URL with its scheme, e.g. http://127.0.0.1:8000/v1"
            )
        return value.rstrip("/")

    @field_validator("api_key_env")
    @classmethod
    def _env_name(cls, value: str | None) -> str | None:
        # The value is never echoed: a key pasted here by mistake must not reach a log.
        if value is not None and not _ENV_NAME.fullmatch(value):
            raise ValueError(
                "must be the NAME of an environment variable (letters, digits, _), not the "
                "key itself; export NAME=<key> and set teach.endpoint.api_key_env=NAME"
            )
        return value
