"""Logging and progress bars: one logger (``potstill``), bars only when asked.

The Python API prints nothing unless asked: messages go to the ``potstill`` logger
(silent until someone adds a handler) and progress bars are off until `verbose(True)`;
the command line turns both on.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

console = Console(stderr=True, highlight=False, soft_wrap=True)
logger = logging.getLogger("potstill")
logger.addHandler(logging.NullHandler())
_state = {"verbose": False}


class _ConsoleHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        console.print(record.getMessage(), markup=False)


_handler = _ConsoleHandler()


@contextmanager
def verbose(on: bool = True) -> Iterator[None]:
    """Within this block, log messages and progress bars go to stderr."""
    previous = _state["verbose"]
    set_verbose(on)
    try:
        yield
    finally:
        set_verbose(previous)


def set_verbose(on: bool) -> None:
    _state["verbose"] = on
    if on and _handler not in logger.handlers:
        logger.addHandler(_handler)
        logger.setLevel(logging.INFO)
    elif not on and _handler in logger.handlers:
        logger.removeHandler(_handler)


class Bar(Protocol):
    def advance(self, n: int = 1, **fields: str) -> None: ...


class _RichBar:
    def __init__(self, progress: Progress, task: int) -> None:
        self._progress, self._task = progress, task

    def advance(self, n: int = 1, **fields: str) -> None:
        self._progress.update(self._task, advance=n, info="  ".join(fields.values()))


@contextmanager
def bar(description: str, total: int, completed: int = 0) -> Iterator[Bar]:
    """A progress bar on stderr (plain line updates when stderr is not a terminal); does
    nothing unless `verbose` is on."""
    if not _state["verbose"]:
        yield _Silent()
        return
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
        console=console,
        disable=not sys.stderr.isatty(),
    )
    with progress:
        task = progress.add_task(description, total=total, completed=completed, info="")
        inner = _RichBar(progress, task)
        if sys.stderr.isatty():
            yield inner
        else:
            yield _LineBar(inner, description, total, completed)


class _LineBar:
    """Without a terminal, print a line at every tenth of the work instead of redrawing."""

    def __init__(self, inner: _RichBar, description: str, total: int, completed: int) -> None:
        self._inner, self._desc, self._total, self._done = inner, description, total, completed
        self._next = completed + max(1, total // 10)

    def advance(self, n: int = 1, **fields: str) -> None:
        self._inner.advance(n, **fields)
        self._done += n
        if self._done >= self._next or self._done == self._total:
            self._next = self._done + max(1, self._total // 10)
            info = "  ".join(fields.values())
            console.print(f"{self._desc} {self._done}/{self._total}  {info}")


class _Silent:
    def advance(self, n: int = 1, **fields: str) -> None:
        pass


def log(message: str) -> None:
    """One message to the ``potstill`` logger (stderr when verbose)."""
    logger.info(message)
