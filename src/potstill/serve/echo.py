"""The prompt in a completion's answer: ``echo`` (the prompt's text, and with ``logprobs``
its tokens' log-probabilities, before the generated ones) and vLLM's ``prompt_logprobs``.

OpenAI's legacy format keys each position's alternatives by token text; with
``return_tokens_as_token_ids`` every token is named ``token_id:N`` instead (`TokenIds`),
which a client maps back to ids exactly.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from potstill.generation.text import TextStream, TokenText
from potstill.serve.schema import (
    Completion,
    CompletionChoice,
    CompletionLogprobs,
    CompletionRequest,
    PromptLogprob,
)
from potstill.serve.scoring import PromptScorer, PromptToken

TOKEN_ID = "token_id:"


class TokenIds:
    """`TokenText`'s interface, every token named ``token_id:N`` (vLLM's
    ``return_tokens_as_token_ids``); ``bytes_of`` stays the token's own bytes."""

    def __init__(self, names: TokenText) -> None:
        self.bytes_of = names.bytes_of

    def text_of(self, token_id: int) -> str:
        return f"{TOKEN_ID}{token_id}"


@dataclass(frozen=True)
class ScoredPrompt:
    """A prompt's tokens as `PromptScorer` scored them, and where each starts in its text."""

    tokens: list[PromptToken]
    offsets: list[int]


def wants_prompt_scores(body: CompletionRequest) -> int | None:
    """How many alternatives per prompt position the answer shows (None: no scores)."""
    wanted = [
        k for k in (body.logprobs if body.echo else None, body.prompt_logprobs) if k is not None
    ]
    return max(wanted) if wanted else None


def score_prompts(
    scorer: PromptScorer,
    prompt_ids: list[list[int]],
    top: int,
    decode: Callable[[list[int]], str],
) -> list[ScoredPrompt]:
    """Score every prompt and find its tokens' text offsets (a worker thread's job)."""
    scored = []
    for ids, tokens in zip(prompt_ids, scorer.score(prompt_ids, top), strict=True):
        stream = TextStream(decode)
        for token_id in ids:
            stream.push(token_id)
        scored.append(ScoredPrompt(tokens, list(stream.offsets)))
    return scored


def prompt_only(
    prompt_count: int, n: int, *, request_id: str, model: str, with_logprobs: bool
) -> list[CompletionChoice]:
    """The choices of a request that generates nothing (``max_tokens: 0``)."""
    empty = CompletionLogprobs(tokens=[], token_logprobs=[], top_logprobs=[], text_offset=[])
    return [
        CompletionChoice(
            index=index,
            text="",
            logprobs=empty.model_copy() if with_logprobs else None,
            finish_reason="length",
        )
        for index in range(prompt_count * n)
    ]


def with_prompt(
    completion: Completion,
    body: CompletionRequest,
    *,
    texts: list[str],
    scored: list[ScoredPrompt] | None,
    names: Any,
) -> Completion:
    """``completion`` with its prompt shown as ``body`` asks: the text echoed, the prompt's
    tokens before the generated ones, vLLM's ``prompt_logprobs``."""
    per_prompt = body.choices_per_prompt
    choices = []
    for choice in completion.choices:
        prompt = choice.index // per_prompt
        update: dict[str, Any] = {}
        if body.echo:
            update["text"] = texts[prompt] + choice.text
            if choice.logprobs is not None and scored is not None:
                update["logprobs"] = _joined(scored[prompt], choice.logprobs, body, names)
        if body.prompt_logprobs is not None and scored is not None:
            update["prompt_logprobs"] = _vllm(scored[prompt], body.prompt_logprobs, names)
        choices.append(choice.model_copy(update=update))
    return completion.model_copy(update={"choices": choices})


def _joined(
    prompt: ScoredPrompt, generated: CompletionLogprobs, body: CompletionRequest, names: Any
) -> CompletionLogprobs:
    """The prompt's tokens, then the generated ones (whose offsets already count from the
    prompt's start)."""
    k = body.logprobs or 0
    top: list[dict[str, float] | None] = []
    for token in prompt.tokens:
        if token.logprob is None:
            top.append(None)
            continue
        entry = {names.text_of(i): lp for i, lp in token.top[:k]}
        entry.setdefault(names.text_of(token.token_id), token.logprob)
        top.append(entry)
    return CompletionLogprobs(
        tokens=[names.text_of(t.token_id) for t in prompt.tokens] + generated.tokens,
        token_logprobs=[t.logprob for t in prompt.tokens] + generated.token_logprobs,
        top_logprobs=top + generated.top_logprobs,
        text_offset=prompt.offsets + generated.text_offset,
    )


def _vllm(prompt: ScoredPrompt, k: int, names: Any) -> list[dict[str, PromptLogprob] | None]:
    """vLLM's ``prompt_logprobs``: per token ``{id: {logprob, rank, decoded_token}}``, the
    top k and the token itself."""
    out: list[dict[str, PromptLogprob] | None] = []
    for token in prompt.tokens:
        if token.logprob is None:
            out.append(None)
            continue
        entry = {
            str(i): PromptLogprob(logprob=lp, rank=rank, decoded_token=names.text_of(i))
            for rank, (i, lp) in enumerate(token.top[:k], start=1)
        }
        entry.setdefault(
            str(token.token_id),
            PromptLogprob(
                logprob=token.logprob,
                rank=token.rank,
                decoded_token=names.text_of(token.token_id),
            ),
        )
        out.append(entry)
    return out
