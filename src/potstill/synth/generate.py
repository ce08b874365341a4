"""Generation as data: the teacher writes ``n`` responses to every prompt, row by row,
into a `GenerationsStore` that survives a kill.

The teacher is a local model decoded in batches by `potstill.generation.Engine` or an
OpenAI-compatible endpoint (`potstill.synth.writers`); both answer `RowWriter.write`, so
the loop (`write_rows`) never knows which.

Deduplication: identical prompts (the same messages: system prompt and text) are
generated once per sample index. The file holds ``n`` rows per distinct prompt, under the
``prompt_id`` of its first occurrence; later copies are counted as duplicates and get no
rows of their own. Each row samples with its own seed (`row_seed`), so its text depends
on the prompt, the sample index and the recipe's seed, not on the batch, order or run
that made it.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from potstill.data.texts import TextSet
from potstill.synth.generations import (
    FORMAT_VERSION,
    GenerationsStore,
    RowKey,
    settings_fingerprint,
)
from potstill.synth.settings import GenerateConfig
from potstill.util.log import Bar, bar
from potstill.util.log import log as _log


@dataclass(frozen=True)
class Prompt:
    """One distinct prompt: the row id of its first occurrence in the prompts file, its
    text, the chat messages the teacher reads, and their sha256 (the dedup key)."""

    prompt_id: int
    text: str
    messages: list[dict[str, str]]
    sha256: str


@dataclass(frozen=True)
class Todo:
    """One row to generate: a prompt's sample ``sample``, sampled with ``seed``."""

    prompt: Prompt
    sample: int
    seed: int

    @property
    def key(self) -> RowKey:
        return self.prompt.sha256, self.sample


@dataclass(frozen=True)
class Written:
    """What the teacher wrote for one row; token counts are None when an endpoint does
    not report them."""

    response: str
    finish_reason: str | None
    prompt_tokens: int | None
    completion_tokens: int | None


class RowWriter(Protocol):
    """A teacher that writes rows: a local model or an endpoint."""

    def write(self, rows: Sequence[Todo], done: Callable[[Todo, Written], None]) -> None:
        """Generate every row, calling ``done(row, written)`` (in this thread) as each is
        finished, in any order."""
        ...

    def usage(self) -> dict[str, int]:
        """What the writer has spent so far (requests, tokens, …)."""
        ...


def messages_of(text: str, system: str | None) -> list[dict[str, str]]:
    """The chat a prompt becomes: the system prompt (if any), then the text as the user.

    >>> messages_of("Hi", "Be brief.")
    [{'role': 'system', 'content': 'Be brief.'}, {'role': 'user', 'content': 'Hi'}]
    """
    head = [{"role": "system", "content": system}] if system is not None else []
    return [*head, {"role": "user", "content": text}]


def distinct_prompts(texts: TextSet, system: str | None) -> tuple[list[Prompt], int]:
    """The distinct prompts of ``texts`` in file order, and how many rows repeated an
    earlier one (same messages)."""
    prompts: dict[str, Prompt] = {}
    for prompt_id, text in zip(texts.ids, texts.texts, strict=True):
        messages = messages_of(text, system)
        sha = hashlib.sha256(json.dumps(messages, sort_keys=True).encode()).hexdigest()
        prompts.setdefault(sha, Prompt(prompt_id, text, messages, sha))
    return list(prompts.values()), len(texts) - len(prompts)


def row_seed(seed: int, prompt_sha256: str, sample: int) -> int:
    """The seed one row samples with: a function of the recipe's seed, the prompt and the
    sample index only (below 2**48: any server's integer seed takes it).

    >>> row_seed(0, "ab", 0) == row_seed(0, "ab", 0) != row_seed(0, "ab", 1)
    True
    """
    digest = hashlib.sha256(f"{seed}:{prompt_sha256}:{sample}".encode()).digest()
    return int.from_bytes(digest[:6], "big")


def generation_settings(
    cfg: GenerateConfig,
    *,
    teacher: str,
    teacher_sha256: str | None,
    prompt_format: str | None,
) -> dict[str, Any]:
    """Everything that decides a row's text besides its prompt: the store's identity.

    ``prompt_format`` says how a local teacher's prompts are rendered (the chat template's
    sha256, or ``plain``); None for an endpoint. ``n`` is not part of it: a larger ``n``
    adds samples to the rows kept, a smaller one keeps the first ``n``.
    """
    return {
        "format": FORMAT_VERSION,
        "teacher": teacher,
        "teacher_sha256": teacher_sha256,
        "prompt_format": prompt_format,
        "system": cfg.system,
        "max_tokens": cfg.max_tokens,
        "temperature": cfg.temperature,
        "top_p": cfg.top_p,
        "seed": cfg.seed,
        "stop": list(cfg.stop),
    }


@dataclass
class Plan:
    """The rows a run will hold: those kept from earlier runs and those still to write."""

    prompts: list[Prompt]
    n: int
    kept: dict[RowKey, dict[str, Any]]
    todo: list[Todo]


def plan_rows(store: GenerationsStore, prompts: list[Prompt], n: int, seed: int) -> Plan:
    """Split the ``len(prompts) * n`` rows into those already in ``store`` and the rest."""
    done = store.done()
    kept: dict[RowKey, dict[str, Any]] = {}
    todo = []
    for prompt in prompts:
        for sample in range(n):
            key = (prompt.sha256, sample)
            if key in done:
                kept[key] = done[key]
            else:
                todo.append(Todo(prompt, sample, row_seed(seed, prompt.sha256, sample)))
    return Plan(prompts, n, kept, todo)


@dataclass
class GenerationsResult:
    """What `write_rows` left: the file, its manifest, and this call's counts."""

    path: Path
    manifest_path: Path
    rows: int
    generated: int
    kept: int
    duplicates: int
    usage: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0


def write_rows(
    plan: Plan,
    writer: RowWriter,
    store: GenerationsStore,
    settings: dict[str, Any],
    *,
    shard_rows: int,
    duplicates: int,
    info: dict[str, Any] | None = None,
    log: Callable[[str], None] = _log,
    progress: Callable[..., AbstractContextManager[Bar]] = bar,
) -> GenerationsResult:
    """Generate ``plan.todo`` with ``writer`` into ``store``: a shard every
    ``shard_rows`` rows (and whatever is finished when a failure or Ctrl-C stops it),
    then the whole file in prompt order and the manifest. ``info`` goes into the manifest
    as it is (the prompts file, the endpoint, …)."""
    start = time.perf_counter()
    teacher, teacher_sha256 = settings["teacher"], settings["teacher_sha256"]
    finished: dict[RowKey, dict[str, Any]] = dict(plan.kept)
    buffer: list[dict[str, Any]] = []
    total = len(plan.prompts) * plan.n
    if plan.kept:
        log(f"generations: {len(plan.kept)} of {total} rows already written, kept")
    if plan.todo:
        store.begin(settings)

    with progress("generating", total=total, completed=len(plan.kept)) as shown:

        def done(row: Todo, written: Written) -> None:
            record = {
                "prompt_id": row.prompt.prompt_id,
                "sample": row.sample,
                "prompt": row.prompt.text,
                "messages": row.prompt.messages,
                "response": written.response,
                "finish_reason": written.finish_reason,
                "prompt_tokens": written.prompt_tokens,
                "completion_tokens": written.completion_tokens,
                "teacher": teacher,
                "teacher_sha256": teacher_sha256,
                "prompt_sha256": row.prompt.sha256,
                "seed": row.seed,
            }
            finished[row.key] = record
            buffer.append(record)
            if len(buffer) >= shard_rows:
                store.write_shard(buffer)
                buffer.clear()
            shown.advance(1)

        try:
            writer.write(plan.todo, done)
        finally:  # what finished before a failure or Ctrl-C is kept for the rerun
            if buffer:
                store.write_shard(buffer)
    rows = []
    for prompt in plan.prompts:
        for sample in range(plan.n):
            row = dict(finished[(prompt.sha256, sample)])
            row["prompt_id"] = prompt.prompt_id  # the current file's numbering
            rows.append(row)
    seconds = time.perf_counter() - start
    usage = writer.usage()
    tokens = {
        "prompt_tokens": sum(r["prompt_tokens"] or 0 for r in rows),
        "completion_tokens": sum(r["completion_tokens"] or 0 for r in rows),
    }
    manifest = {
        "format": FORMAT_VERSION,
        "fingerprint": settings_fingerprint(settings),
        "settings": settings,
        "counts": {
            "prompts": len(plan.prompts) + duplicates,
            "distinct_prompts": len(plan.prompts),
            "duplicates": duplicates,
            "n": plan.n,
            "rows": len(rows),
            "generated": len(plan.todo),
            "kept": len(plan.kept),
        },
        "tokens": tokens,  # over every row in the file
        "usage": usage,  # spent by this call
        "seconds": round(seconds, 3),
        **(info or {}),
    }
    store.finish(rows, manifest)
    log(
        f"generations: {len(plan.todo)} rows written, {len(plan.kept)} kept, {duplicates} "
        f"duplicate prompts skipped; {tokens['completion_tokens']:,} completion tokens in "
        f"the file; {seconds:.1f} s"
    )
    return GenerationsResult(
        store.path,
        store.manifest_path,
        len(rows),
        len(plan.todo),
        len(plan.kept),
        duplicates,
        usage,
        seconds,
    )
