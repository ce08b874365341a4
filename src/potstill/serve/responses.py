"""From the engine's choices and updates to OpenAI response bodies and SSE streams.

A stream is ``data: {chunk}\\n\\n`` events and a final ``data: [DONE]\\n\\n``; an engine
failure mid-stream is sent as one ``data: {"error": …}`` event before ``[DONE]``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

from pydantic import BaseModel

from potstill.generation.handle import Choice, EngineError, Generation, TokenLogprob
from potstill.generation.text import TokenText
from potstill.serve.errors import ApiError
from potstill.serve.schema import (
    AssistantMessage,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatLogprobs,
    ChatTokenLogprob,
    Completion,
    CompletionChoice,
    CompletionLogprobs,
    TopLogprob,
    Usage,
)


def completion_logprobs(
    tokens: Sequence[TokenLogprob], names: TokenText, prompt_chars: int
) -> CompletionLogprobs:
    """The legacy format. ``top_logprobs[i]`` holds the top k and the chosen token (so up
    to k + 1 entries, as OpenAI); ``text_offset`` counts from the start of the prompt,
    whose text is ``prompt_chars`` characters long."""
    top = []
    for token in tokens:
        entry = {names.text_of(i): lp for i, lp in token.top}
        entry.setdefault(names.text_of(token.token_id), token.logprob)
        top.append(entry)
    return CompletionLogprobs(
        tokens=[names.text_of(t.token_id) for t in tokens],
        token_logprobs=[t.logprob for t in tokens],
        top_logprobs=top,
        text_offset=[prompt_chars + t.offset for t in tokens],
    )


def chat_logprobs(tokens: Sequence[TokenLogprob], names: TokenText) -> ChatLogprobs:
    """The chat format: each token with its bytes and exactly its top k alternatives."""
    return ChatLogprobs(
        content=[
            ChatTokenLogprob(
                token=names.text_of(t.token_id),
                logprob=t.logprob,
                bytes=list(names.bytes_of(t.token_id)),
                top_logprobs=[
                    TopLogprob(token=names.text_of(i), logprob=lp, bytes=list(names.bytes_of(i)))
                    for i, lp in t.top
                ],
            )
            for t in tokens
        ]
    )


async def collect(generation: Generation) -> list[Choice]:
    """Every choice of a request; an engine failure is a 500."""
    try:
        return await generation.choices()
    except EngineError as e:
        raise ApiError(500, str(e)) from e
    finally:
        generation.cancel()  # a no-op once finished; stops the rows if the client left


def completion_body(
    choices: list[Choice],
    generation: Generation,
    *,
    request_id: str,
    model: str,
    names: TokenText,
    prompt_chars: list[int],
    with_logprobs: bool,
) -> Completion:
    per_prompt = generation.rows // len(generation.prompts)
    return Completion(
        id=request_id,
        model=model,
        choices=[
            CompletionChoice(
                index=c.index,
                text=c.text,
                logprobs=completion_logprobs(c.tokens, names, prompt_chars[c.index // per_prompt])
                if with_logprobs
                else None,
                finish_reason=c.finish_reason,
            )
            for c in choices
        ],
        usage=Usage.of(generation.prompt_tokens, sum(c.completion_tokens for c in choices)),
    )


def chat_body(
    choices: list[Choice],
    generation: Generation,
    *,
    request_id: str,
    model: str,
    names: TokenText,
    with_logprobs: bool,
) -> ChatCompletion:
    return ChatCompletion(
        id=request_id,
        model=model,
        choices=[
            ChatChoice(
                index=c.index,
                message=AssistantMessage(content=c.text),
                logprobs=chat_logprobs(c.tokens, names) if with_logprobs else None,
                finish_reason=c.finish_reason,
            )
            for c in choices
        ],
        usage=Usage.of(generation.prompt_tokens, sum(c.completion_tokens for c in choices)),
    )


async def completion_chunks(
    generation: Generation,
    *,
    request_id: str,
    model: str,
    names: TokenText,
    prompt_chars: list[int],
    with_logprobs: bool,
    include_usage: bool,
) -> AsyncIterator[Completion]:
    per_prompt = generation.rows // len(generation.prompts)
    spent = [0] * generation.rows
    async for update in generation.updates():
        spent[update.index] = update.completion_tokens
        logprobs = None
        if with_logprobs:
            chars = prompt_chars[update.index // per_prompt]
            logprobs = completion_logprobs(update.tokens, names, chars)
        choice = CompletionChoice(
            index=update.index,
            text=update.text,
            logprobs=logprobs,
            finish_reason=update.finish_reason,
        )
        yield Completion(id=request_id, model=model, choices=[choice])
    if include_usage:
        usage = Usage.of(generation.prompt_tokens, sum(spent))
        yield Completion(id=request_id, model=model, choices=[], usage=usage)


async def chat_chunks(
    generation: Generation,
    *,
    request_id: str,
    model: str,
    names: TokenText,
    with_logprobs: bool,
    include_usage: bool,
) -> AsyncIterator[ChatCompletionChunk]:
    def chunk(index: int, delta: dict[str, str], **fields: object) -> ChatCompletionChunk:
        choice = ChatChunkChoice(index=index, delta=delta, **fields)  # type: ignore[arg-type]
        return ChatCompletionChunk(id=request_id, model=model, choices=[choice])

    for index in range(generation.rows):
        yield chunk(index, {"role": "assistant", "content": ""})
    spent = [0] * generation.rows
    async for update in generation.updates():
        spent[update.index] = update.completion_tokens
        if update.text or update.tokens:
            logprobs = chat_logprobs(update.tokens, names) if with_logprobs else None
            yield chunk(update.index, {"content": update.text}, logprobs=logprobs)
        if update.finish_reason is not None:
            yield chunk(update.index, {}, finish_reason=update.finish_reason)
    if include_usage:
        usage = Usage.of(generation.prompt_tokens, sum(spent))
        yield ChatCompletionChunk(id=request_id, model=model, choices=[], usage=usage)


async def server_sent_events(
    generation: Generation, chunks: AsyncIterator[BaseModel]
) -> AsyncIterator[str]:
    """The SSE body of a stream; the rows stop if the client goes away."""
    try:
        try:
            async for chunk in chunks:
                yield f"data: {chunk.model_dump_json()}\n\n"
        except EngineError as e:
            yield f"data: {ApiError(500, str(e)).body().model_dump_json()}\n\n"
        yield "data: [DONE]\n\n"
    finally:
        generation.cancel()
