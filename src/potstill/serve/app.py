"""The FastAPI app: OpenAI's ``/v1/models``, ``/v1/completions`` and
``/v1/chat/completions`` over one engine, with an optional API key. A completion may also
show its prompt's own log-probabilities (``echo`` with ``logprobs``, vLLM's
``prompt_logprobs``), scored by one forward pass beside the engine (`potstill.serve.echo`).

Every error is OpenAI's shape with a one-line message; the API key is compared in
constant time and never echoed or logged.
"""

from __future__ import annotations

import asyncio
import hmac
import re
import time
import uuid
from collections.abc import AsyncIterator

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from potstill.generation.engine import Engine
from potstill.generation.handle import EngineBusy, EngineError, Generation, GenerationSettings
from potstill.generation.text import TokenText
from potstill.serve.echo import (
    TokenIds,
    prompt_only,
    score_prompts,
    wants_prompt_scores,
    with_prompt,
)
from potstill.serve.errors import ApiError
from potstill.serve.prompts import PromptBuilder
from potstill.serve.responses import (
    chat_body,
    chat_chunks,
    collect,
    completion_body,
    completion_chunks,
    server_sent_events,
)
from potstill.serve.schema import (
    ChatCompletion,
    ChatRequest,
    Completion,
    CompletionRequest,
    ModelCard,
    ModelList,
    Usage,
)
from potstill.serve.scoring import PromptScorer

COMPLETION_DEFAULT_MAX_TOKENS = 16  # OpenAI's default for /v1/completions
CHAT_DEFAULT_MAX_TOKENS = 1024  # when the model's context length is unknown


def create_app(engine: Engine, model_name: str, *, api_key: str | None = None) -> FastAPI:
    """The app serving ``engine``'s model as ``model_name``.

    With ``api_key``, every ``/v1`` request must send ``Authorization: Bearer <key>``.
    The engine is started and closed by the caller.
    """
    app = FastAPI(title="potstill serve", docs_url=None, redoc_url=None, openapi_url=None)
    prompts = PromptBuilder(engine.tokenizer, engine.encode, engine.vocab_size)
    names = TokenText(engine.tokenizer)
    scorer = PromptScorer(engine.model)
    created = int(time.time())

    def authorize(request: Request) -> None:
        if api_key is None:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            given.strip().encode(), api_key.encode()
        ):
            raise ApiError(
                401,
                "missing or wrong API key: send the header 'Authorization: Bearer <key>'",
                code="invalid_api_key",
            )

    def check_model(name: str) -> None:
        if name != model_name:
            raise ApiError(
                404,
                f"model {name!r} is not served here; this server serves {model_name!r} "
                "(GET /v1/models)",
                param="model",
                code="model_not_found",
            )

    def check_rows(prompt_count: int, n: int) -> None:
        if prompt_count * n > 128:
            raise ApiError(400, "at most 128 choices per request (prompts × n)", param="n")

    def check_context(prompt_ids: list[list[int]], max_tokens: int) -> None:
        for ids in prompt_ids:
            if not ids:
                raise ApiError(400, "the prompt is empty: it encodes to no tokens", param="prompt")
            limit = engine.context_length
            if limit is not None and len(ids) + max_tokens > limit:
                raise ApiError(
                    400,
                    f"this model's context is {limit} tokens: the prompt has {len(ids)} and "
                    f"max_tokens asks for {max_tokens}; shorten the prompt or lower max_tokens",
                    param="max_tokens",
                )

    def submit(prompt_ids: list[list[int]], settings: GenerationSettings, n: int) -> Generation:
        try:
            return engine.submit(prompt_ids, settings, n)
        except EngineBusy as e:
            raise ApiError(429, str(e), code="queue_full") from e
        except EngineError as e:
            raise ApiError(500, str(e)) from e

    def stream(generation: Generation, chunks: AsyncIterator[BaseModel]) -> StreamingResponse:
        return StreamingResponse(
            server_sent_events(generation, chunks), media_type="text/event-stream"
        )

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, error: ApiError) -> JSONResponse:
        return error.response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, error: RequestValidationError) -> JSONResponse:
        return _validation_error(error).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, error: StarletteHTTPException) -> JSONResponse:
        return ApiError(error.status_code, str(error.detail)).response()

    @app.exception_handler(Exception)
    async def _bug(_: Request, error: Exception) -> JSONResponse:  # uvicorn logs the traceback
        return ApiError(500, "internal server error; the server log has the details").response()

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/models", dependencies=[Depends(authorize)])
    async def list_models() -> ModelList:
        return ModelList(data=[ModelCard(id=model_name, created=created)])

    @app.get("/v1/models/{name:path}", dependencies=[Depends(authorize)])
    async def get_model(name: str) -> ModelCard:
        check_model(name)
        return ModelCard(id=model_name, created=created)

    @app.post("/v1/completions", dependencies=[Depends(authorize)], response_model=None)
    async def completions(body: CompletionRequest) -> Completion | StreamingResponse:
        check_model(body.model)
        n = body.choices_per_prompt
        encoded = prompts.completion(body.prompt)
        prompt_ids = [ids for _, ids in encoded]
        check_rows(len(prompt_ids), n)
        max_tokens = COMPLETION_DEFAULT_MAX_TOKENS if body.max_tokens is None else body.max_tokens
        check_context(prompt_ids, max_tokens)
        shown = TokenIds(names) if body.return_tokens_as_token_ids else names
        request_id = f"cmpl-{uuid.uuid4().hex}"
        top = wants_prompt_scores(body)
        scored = None
        if top is not None:
            try:
                scored = await asyncio.to_thread(
                    score_prompts, scorer, prompt_ids, top, engine.tokenizer.decode
                )
            except Exception as e:  # uvicorn's log has the traceback
                raise ApiError(500, f"scoring the prompt failed: {type(e).__name__}") from e
        texts = [text for text, _ in encoded]
        if max_tokens == 0:
            choices = prompt_only(
                len(prompt_ids),
                n,
                request_id=request_id,
                model=model_name,
                with_logprobs=body.logprobs is not None,
            )
            usage = Usage.of(sum(len(ids) for ids in prompt_ids), 0)
            answer = Completion(id=request_id, model=model_name, choices=choices, usage=usage)
            return with_prompt(answer, body, texts=texts, scored=scored, names=shown)
        settings = GenerationSettings(
            max_tokens=max_tokens,
            sampling_temperature=body.sampling_temperature,
            top_p=body.top_p or 1.0,
            stop=body.stop_strings,
            seed=body.seed,
            top_logprobs=body.logprobs,
        )
        generation = submit(prompt_ids, settings, n)
        shape = {
            "request_id": request_id,
            "model": model_name,
            "names": shown,
            "prompt_chars": [len(text) for text in texts],
            "with_logprobs": body.logprobs is not None,
        }
        if body.stream:
            chunks = completion_chunks(generation, include_usage=body.include_usage, **shape)
            return stream(generation, chunks)
        answer = completion_body(await collect(generation), generation, **shape)
        return with_prompt(answer, body, texts=texts, scored=scored, names=shown)

    @app.post("/v1/chat/completions", dependencies=[Depends(authorize)], response_model=None)
    async def chat_completions(body: ChatRequest) -> ChatCompletion | StreamingResponse:
        check_model(body.model)
        n = body.choices_per_prompt
        check_rows(1, n)
        prompt_ids = [prompts.chat(body.messages)]
        max_tokens = body.token_limit
        if max_tokens is None:
            limit = engine.context_length
            max_tokens = limit - len(prompt_ids[0]) if limit else CHAT_DEFAULT_MAX_TOKENS
            max_tokens = max(max_tokens, 1)
        check_context(prompt_ids, max_tokens)
        top_logprobs = (body.top_logprobs or 0) if body.logprobs else None
        settings = GenerationSettings(
            max_tokens=max_tokens,
            sampling_temperature=body.sampling_temperature,
            top_p=body.top_p or 1.0,
            stop=body.stop_strings,
            seed=body.seed,
            top_logprobs=top_logprobs,
        )
        generation = submit(prompt_ids, settings, n)
        shape = {
            "request_id": f"chatcmpl-{uuid.uuid4().hex}",
            "model": model_name,
            "names": TokenIds(names) if body.return_tokens_as_token_ids else names,
            "with_logprobs": top_logprobs is not None,
        }
        if body.stream:
            chunks = chat_chunks(generation, include_usage=body.include_usage, **shape)
            return stream(generation, chunks)
        return chat_body(await collect(generation), generation, **shape)

    return app


def _validation_error(error: RequestValidationError) -> ApiError:
    """The first problem pydantic found, as one line naming the parameter (never the
    value sent). Our own checks' messages win over a union's "wrong type" branches."""
    errors = error.errors()
    if any(e.get("type") == "json_invalid" for e in errors):
        return ApiError(400, "the request body is not valid JSON")
    locations = [[part for part in e.get("loc", ()) if part != "body"] for e in errors]
    chosen = next((i for i, e in enumerate(errors) if e.get("type") == "value_error"), 0)
    first, location = errors[chosen], locations[chosen]
    param = ".".join(str(part) for part in location if not _is_type_tag(part)) or None
    message = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
    tag_at = next((i for i, part in enumerate(location) if _is_type_tag(part)), None)
    if tag_at is not None and first.get("type") != "value_error":
        # A union: say which forms it takes, not why its first form failed.
        branches = {str(loc[tag_at]) for loc in locations if len(loc) > tag_at}
        message = "expected one of: " + ", ".join(sorted(branches))
    return ApiError(400, f"{param}: {message}" if param else message, param=param)


_TYPE_TAG = re.compile(r"(str|int|float|bool|list|dict|function-[a-z]+)(\[|$)")


def _is_type_tag(part: object) -> bool:
    """Whether a pydantic error location part names a union branch (``list[int]``), not a
    field."""
    return isinstance(part, str) and _TYPE_TAG.match(part) is not None
