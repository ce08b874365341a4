"""A scripted prompt-logprobs server on loopback: a real uvicorn server whose
``/v1/completions`` answers ``echo`` + ``logprobs`` requests from a model's true
log-probabilities (`potstill.serve.scoring.PromptScorer`), except the requests the script
spoils: an HTTP status, an answer without logprobs, one position short, an id outside the
vocabulary, tokens as text where ids were asked for. It records what it was sent."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from potstill.serve.scoring import PromptScorer
from tests.serve.conftest import serving

Spoil = Callable[[dict[str, Any]], dict[str, Any] | int]


@dataclass
class LogprobsScript:
    """``spoil[n]`` changes the answer to request ``n`` (counted from 0): it edits the
    good answer and returns it, or returns an HTTP status to answer instead; requests
    past the script are answered well. ``refuse_zero`` answers ``max_tokens: 0`` with
    vLLM's 400."""

    spoil: dict[int, Spoil] = field(default_factory=dict)
    refuse_zero: bool = False
    bodies: list[dict[str, Any]] = field(default_factory=list)


def logprobs_app(model: Any, script: LogprobsScript) -> FastAPI:
    app = FastAPI()
    scorer = PromptScorer(model)
    lock = threading.Lock()

    @app.post("/v1/completions")
    async def completions(request: Request) -> JSONResponse:
        body = await request.json()
        with lock:
            number = len(script.bodies)
            script.bodies.append(body)
        if script.refuse_zero and body.get("max_tokens") == 0:
            return _error(400, "max_tokens must be at least 1, got 0.")
        prompts = body["prompt"] if isinstance(body["prompt"][0], list) else [body["prompt"]]
        answer = _answer(scorer, prompts, body)
        spoil = script.spoil.get(number)
        if spoil is not None:
            spoiled = spoil(answer)
            if isinstance(spoiled, int):
                return _error(spoiled, f"scripted HTTP {spoiled}")
            answer = spoiled
        return JSONResponse(answer)

    return app


def _answer(scorer: PromptScorer, prompts: list[list[int]], body: dict[str, Any]) -> dict:
    k = body["logprobs"]
    ids = bool(body.get("return_tokens_as_token_ids"))
    extra = int(body.get("max_tokens") or 0)  # "generated" tokens: the last prompt token again

    def name(token: int) -> str:
        return f"token_id:{token}" if ids else f"<{token}>"

    choices = []
    for index, (prompt, tokens) in enumerate(zip(prompts, scorer.score(prompts, k), strict=True)):
        top = [None] + [{name(i): lp for i, lp in t.top} for t in tokens[1:]]
        choices.append(
            {
                "index": index,
                "text": "",
                "finish_reason": "length",
                "logprobs": {
                    "tokens": [name(t) for t in prompt] + [name(prompt[-1])] * extra,
                    "token_logprobs": [t.logprob for t in tokens] + [-1.0] * extra,
                    "top_logprobs": top + [{name(prompt[-1]): -1.0}] * extra,
                    "text_offset": list(range(len(prompt) + extra)),
                },
            }
        )
    usage = {"prompt_tokens": sum(map(len, prompts)), "completion_tokens": 0, "total_tokens": 0}
    return {"id": "cmpl-0", "object": "text_completion", "choices": choices, "usage": usage}


def _error(status: int, message: str) -> JSONResponse:
    error = {"message": message, "type": "error", "param": None, "code": None}
    return JSONResponse({"error": error}, status_code=status)


@contextmanager
def logprobs_server(model: Any, script: LogprobsScript) -> Iterator[str]:
    """Serve `logprobs_app` on 127.0.0.1; yield its base URL (``…/v1``)."""
    with serving(logprobs_app(model, script)) as url:
        yield url


# --- spoilers -------------------------------------------------------------------------


def no_logprobs(answer: dict) -> dict:
    for choice in answer["choices"]:
        choice["logprobs"] = None
    return answer


def one_short(answer: dict) -> dict:
    logprobs = answer["choices"][0]["logprobs"]
    for key in ("tokens", "token_logprobs", "top_logprobs", "text_offset"):
        logprobs[key] = logprobs[key][:-1]
    return answer


def id_outside(vocab_size: int) -> Spoil:
    def spoil(answer: dict) -> dict:
        top = answer["choices"][0]["logprobs"]["top_logprobs"][1]
        top[f"token_id:{vocab_size + 5}"] = 0.0
        return answer

    return spoil


def as_text(answer: dict) -> dict:
    """Every token id named as plain text, as a server that ignores the flag does."""
    for choice in answer["choices"]:
        logprobs = choice["logprobs"]
        logprobs["top_logprobs"] = [
            None if top is None else {k.replace("token_id:", "id "): v for k, v in top.items()}
            for top in logprobs["top_logprobs"]
        ]
    return answer
