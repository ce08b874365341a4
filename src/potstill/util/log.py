"""Progress bars for long work: rate, ETA and live fields such as the loss."""

from __future__ import annotations

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


class Bar(Protocol):
    def advance(self, n: int = 1, **fields: str) -> None: ...


class _RichBar:
    def __init__(self, progress: Progress, task: int) -> None:
        self._progress, self._task = progress, task

    def advance(self, n: int = 1, **fields: str) -> None:
        self._progress.update(self._task, advance=n, info="  ".join(fields.values()))


@contextmanager
def bar(description: str, total: int, completed: int = 0) -> Iterator[Bar]:
    """A progress bar on stderr (plain line updates when stderr is not a terminal)."""
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


def log(message: str) -> None:
    console.print(message)
