"""``potstill teach`` through a server: the cache filled from a served teacher's prompt
log-probabilities (`potstill.teachers.prompt_logprobs`), not from a local forward pass.

Each training block is sent as the prompt of a ``/v1/completions`` request, as token ids,
and the server's top-k log-probabilities at every position but the first become the
block's row of an ordinary top-k cache shard: the k ids, their log-probabilities and the
tail bucket ``log(1 − Σ p)``, written through the same `CacheWriter` as a local teach, so
a killed teach keeps its finished shards and a rerun continues with the rest. A server
gives neither hidden states nor the full distribution: the cache holds top-k ids only
(no draws, no hidden states), at temperature 1, and no reconstruction KL is measured.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from potstill.cache import codec
from potstill.cache.reader import TeacherCache
from potstill.cache.settings import TeachConfig
from potstill.cache.store import CacheWriter, Fidelity, Manifest
from potstill.data import Blocks
from potstill.models.load import tokenizer_sha256
from potstill.teachers.prompt_logprobs import PromptLogprobs, PromptTopK
from potstill.util.log import bar

SERVED_PREFIX = "openai:"  # a served teacher's name in a cache source, as a recipe writes one


def served_teacher(model: str) -> tuple[str, str]:
    """What a cache or a labels table made through a server names as its teacher:
    ``openai:MODEL``, and a hash of that name in place of the weights' (a server shows
    none), so what a server made and what a local teacher made are never mistaken for each
    other."""
    name = f"{SERVED_PREFIX}{model}"
    return name, hashlib.sha256(name.encode()).hexdigest()


def served_source(
    model: str, tokenizer: Any, *, data_fingerprint: str, block_size: int
) -> dict[str, Any]:
    """What a cache taught by the server's ``model`` depends on, as its manifest records
    it: the served teacher (`served_teacher`) and the local tokenizer the blocks were cut
    by, which the server must share."""
    teacher, teacher_sha256 = served_teacher(model)
    return {
        "teacher": teacher,
        "teacher_sha256": teacher_sha256,
        "tokenizer_sha256": tokenizer_sha256(tokenizer),
        "data_fingerprint": data_fingerprint,
        "block_size": block_size,
    }


def teach_through_endpoint(
    scorer: PromptLogprobs,
    blocks: Blocks,
    *,
    directory: Path,
    source: dict[str, Any],
    settings: TeachConfig,
    plan: list[int],
    log: Callable[[str], None] = lambda _: None,
) -> TeacherCache:
    """Fill the cache in ``directory`` with the server's top-``scorer.top_k`` signal for the
    ``plan`` blocks (continuing one a killed run left), then load and return it.

    ``teach.batch_size`` blocks go in one request, ``teach.endpoint.concurrency`` requests
    at a time; a shard (``teach.shard_blocks`` blocks) is written once all its blocks are
    answered. A bad answer or a server that keeps failing raises a one-line error, and
    every shard written before it is kept.
    """
    if settings.samples:
        raise ValueError("a cache taught through a server keeps the top k only (samples 0)")
    fresh = Manifest.new(
        source,
        vocab_size=scorer.vocab_size,
        top_k=scorer.top_k,
        temperature=1.0,  # servers give the model's own log-probabilities
        bits=settings.bits,
        plan=plan,
        samples=0,
        seed=settings.seed,
    )
    writer = CacheWriter.open(directory, fresh, log=log)
    remaining = writer.manifest.remaining()
    cut = settings.shard_blocks
    shards = [remaining[start : start + cut] for start in range(0, len(remaining), cut)]
    tail_mass, positions = 0.0, 0
    with bar("   teach", total=len(remaining)) as progress:
        for shard in shards:
            rows = _ask(scorer, blocks, shard, settings.batch_size, progress.advance)
            ids = np.concatenate([row.ids for row in rows])  # (blocks · positions, K)
            logprobs = np.concatenate([row.logprobs for row in rows])
            tail = np.concatenate([row.tail for row in rows])
            payload = codec.encode(
                ids, logprobs, tail, vocab_size=fresh.vocab_size, bits=fresh.bits
            )
            writer.write_shard(shard, payload, Fidelity())
            tail_mass += float(np.exp(tail).sum())
            positions += len(tail)
    usage = scorer.client.usage
    if positions:
        log(
            f"teach: {positions:,} positions from {scorer.where} in {usage.requests} requests "
            f"({usage.retries} retries); mean mass outside the top {scorer.top_k}: "
            f"{tail_mass / positions:.4f}"
        )
    return TeacherCache.load(directory, source, memory_mb=settings.cache_memory_mb)


def _ask(
    scorer: PromptLogprobs,
    blocks: Blocks,
    shard: list[int],
    per_request: int,
    advance: Callable[[int], None],
) -> list[PromptTopK]:
    """The server's rows for the blocks of ``shard``, in its order: ``per_request`` blocks
    a request, the requests sent concurrently."""
    requests = [shard[i : i + per_request] for i in range(0, len(shard), per_request)]
    answers: dict[int, list[PromptTopK]] = {}

    def keep(index: int, rows: list[PromptTopK]) -> None:
        answers[index] = rows
        advance(len(requests[index]))

    scorer.score_all(
        [blocks.batch(torch.tensor(request)).input_ids.tolist() for request in requests],
        keep,
        names=[[f"block {b}" for b in request] for request in requests],
    )
    return [row for index in range(len(requests)) for row in answers[index]]
