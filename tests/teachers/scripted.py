"""A scripted OpenAI-compatible server on loopback: a real uvicorn server whose
``/v1/chat/completions`` answers the statuses it is told to, in order, then 200, and
records what it was sent (for retry, rate-limit, concurrency and key tests)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from tests.serve.conftest import serving


@dataclass
class Script:
    """What the server answers and what it saw.

    ``statuses``: the first requests get these HTTP statuses (200: a normal answer; any
    other: an OpenAI-shaped error whose message echoes the request's Authorization
    header, to check that the client scrubs it); later ones get 200. ``delay_s``: each
    answer waits this long. ``headers``: extra headers on the error answers (Retry-After).
    """

    statuses: list[int] = field(default_factory=list)
    delay_s: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)
    error_message: str = "scripted failure"
    # The reply's text, from the request body; None: "reply to " + the last message.
    reply: Callable[[dict[str, Any]], str] | None = None
    arrivals: list[float] = field(default_factory=list)
    bodies: list[dict[str, Any]] = field(default_factory=list)
    authorizations: list[str] = field(default_factory=list)
    in_flight: int = 0
    most_in_flight: int = 0


def scripted_app(script: Script) -> FastAPI:
    app = FastAPI()
    lock = threading.Lock()

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> JSONResponse:
        body = await request.json()
        authorization = request.headers.get("authorization", "")
        with lock:
            number = len(script.arrivals)
            script.arrivals.append(time.monotonic())
            script.bodies.append(body)
            script.authorizations.append(authorization)
            script.in_flight += 1
            script.most_in_flight = max(script.most_in_flight, script.in_flight)
        try:
            await asyncio.sleep(script.delay_s)
        finally:
            with lock:
                script.in_flight -= 1
        status = script.statuses[number] if number < len(script.statuses) else 200
        if status != 200:
            message = f"{script.error_message} (you sent {authorization})"
            return JSONResponse(
                {"error": {"message": message, "type": "error", "param": None, "code": None}},
                status_code=status,
                headers=script.headers,
            )
        if script.reply is not None:
            text = script.reply(body)
        else:
            text = "reply to " + body["messages"][-1]["content"]
        return JSONResponse(
            {
                "id": f"chatcmpl-{number}",
                "object": "chat.completion",
                "created": 0,
                "model": body["model"],
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": text},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8},
            }
        )

    return app


@contextmanager
def scripted(script: Script) -> Iterator[str]:
    """A scripted server for ``script``; yields its base URL."""
    with serving(scripted_app(script)) as url:
        yield url
