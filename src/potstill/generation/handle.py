"""A request inside the engine, as its caller sees it: what it asks (`GenerationSettings`),
what comes back (`RowUpdate` as rows produce text, `Choice` once they finish), and the
`Generation` handle that carries updates from the worker thread to the request's asyncio
loop."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass, field


class EngineBusy(Exception):
    """The request queue is full; the client should retry later (HTTP 429)."""


class EngineError(Exception):
    """The engine could not finish a request (it failed or is shutting down; HTTP 500)."""


@dataclass(frozen=True)
class GenerationSettings:
    """What a request asks of each of its rows."""

    max_tokens: int  # at least 1
    sampling_temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None  # row i samples with seed + i
    top_logprobs: int | None = None  # None: no logprobs; k: the chosen token's and the top k


@dataclass(frozen=True)
class TokenLogprob:
    """One generated token with its log-probability and the k most likely alternatives."""

    token_id: int
    logprob: float
    top: tuple[tuple[int, float], ...]  # (token id, log-probability), most likely first
    offset: int  # where the token's text starts in its row's text


@dataclass(frozen=True)
class RowUpdate:
    """What one row (one choice of the response) produced since its last update."""

    index: int  # the choice's index: prompt * n + choice
    text: str  # newly final text; the pieces of a row add up to its whole text
    tokens: tuple[TokenLogprob, ...]  # logprobs of the tokens behind that text, if asked
    finish_reason: str | None  # "stop" or "length" on the row's last update, else None
    completion_tokens: int  # tokens generated so far (the end token and any past a stop
    # string included)


@dataclass
class Choice:
    """A finished row: the whole text and what it cost."""

    index: int
    text: str = ""
    tokens: list[TokenLogprob] = field(default_factory=list)
    finish_reason: str | None = None
    completion_tokens: int = 0


class Generation:
    """One request inside the engine; read it with `updates` (streaming) or `choices`.

    Created by `Engine.submit` in the thread running the request's asyncio loop; the
    worker thread hands it updates through that loop.
    """

    def __init__(
        self,
        prompts: list[list[int]],
        n: int,
        settings: GenerationSettings,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.prompts = prompts
        self.settings = settings
        self.rows = len(prompts) * n
        self.prompt_tokens = sum(len(p) for p in prompts)
        self._loop = loop
        self._inbox: asyncio.Queue[RowUpdate | EngineError] = asyncio.Queue()
        self._cancelled = threading.Event()

    def cancel(self) -> None:
        """Stop generating (the client went away): the worker drops the rows."""
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    async def updates(self) -> AsyncIterator[RowUpdate]:
        """Each row's updates as they come, until every row has finished."""
        finished = 0
        while finished < self.rows:
            update = await self._inbox.get()
            if isinstance(update, EngineError):
                raise update
            finished += update.finish_reason is not None
            yield update

    async def choices(self) -> list[Choice]:
        """Wait for every row; the choices in index order."""
        choices = [Choice(i) for i in range(self.rows)]
        async for update in self.updates():
            choice = choices[update.index]
            choice.text += update.text
            choice.tokens.extend(update.tokens)
            choice.finish_reason = update.finish_reason
            choice.completion_tokens = update.completion_tokens
        return choices

    def deliver(self, update: RowUpdate | EngineError) -> None:
        """Called by the worker thread: queue an update on the request's loop."""
        try:
            self._loop.call_soon_threadsafe(self._inbox.put_nowait, update)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            self.cancel()
