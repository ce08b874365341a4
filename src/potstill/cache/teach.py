"""``potstill teach``: run the teacher once over the training blocks, into the cache."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from potstill.cache import codec
from potstill.cache.store import CacheWriter, Fidelity, Manifest, TeacherCache
from potstill.config import Recipe
from potstill.data import Blocks, LMData
from potstill.losses import top_k_signal
from potstill.signals import SparseSignal
from potstill.models.load import tokenizer_sha256, weights_sha256
from potstill.util.log import bar
from potstill.train.loop import scheduled_blocks


def plan_blocks(recipe: Recipe, num_blocks: int) -> list[int]:
    """The training blocks to cache, in the order training first visits them."""
    order = scheduled_blocks(num_blocks, recipe.train)
    blocks = recipe.teach.blocks
    if blocks == "schedule":
        return order
    every = list(dict.fromkeys([*order, *range(num_blocks)]))  # visited first, then the rest
    return every if blocks == "all" else every[: int(blocks)]


def source_of(recipe: Recipe, tokenizer: Any, data: LMData) -> dict[str, Any]:
    """What the cache's signal depends on, as the manifest records it."""
    return {
        "teacher": recipe.teacher,
        "teacher_sha256": weights_sha256(recipe.teacher),
        "tokenizer_sha256": tokenizer_sha256(tokenizer),
        "data_fingerprint": data.fingerprint,
        "block_size": recipe.data.block_size,
    }


def teach(
    recipe: Recipe,
    teacher: torch.nn.Module,
    tokenizer: Any,
    data: LMData,
    *,
    directory: Path | None = None,
    log: Callable[[str], None] = lambda _: None,
) -> TeacherCache:
    """Fill the cache (continuing one a killed run left), then load and return it."""
    directory = directory or recipe.cache_dir
    source = source_of(recipe, tokenizer, data)
    vocab = teacher.get_output_embeddings().weight.shape[0]  # what the cached ids index
    fresh = Manifest(
        **source,
        vocab_size=vocab,
        top_k=min(recipe.teach.top_k, vocab),
        temperature=recipe.teach_temperature,
        bits=recipe.teach.bits,
        plan=plan_blocks(recipe, len(data.train)),
    )
    writer = CacheWriter.open(directory, fresh, log=log)
    remaining = writer.manifest.remaining()
    if remaining:
        _teach_blocks(teacher, data.train, remaining, writer, recipe)
    return TeacherCache.load(directory, source)


def _teach_blocks(
    teacher: torch.nn.Module,
    blocks: Blocks,
    remaining: list[int],
    writer: CacheWriter,
    recipe: Recipe,
) -> None:
    manifest = writer.manifest
    shard_blocks, batch_size = recipe.teach.shard_blocks, recipe.teach.batch_size
    teacher.eval()
    done = len(manifest.plan) - len(remaining)
    with bar("   teach", total=len(manifest.plan), completed=done) as progress:
        for start in range(0, len(remaining), shard_blocks):
            shard = remaining[start : start + shard_blocks]
            signals, fidelity = [], Fidelity()
            for offset in range(0, len(shard), batch_size):
                index = torch.tensor(shard[offset : offset + batch_size])
                with torch.inference_mode():
                    logits = teacher(input_ids=blocks.input_ids[index]).logits[:, :-1]
                    signal = top_k_signal(logits, manifest.top_k, manifest.temperature)
                    if offset == 0:  # a sample of every shard: its first block
                        fidelity = _fidelity(logits[:1], _first(signal), manifest)
                signals.append(_flat(signal))
                progress.advance(len(index))
            ids, logprobs, tail = (np.concatenate(parts) for parts in zip(*signals, strict=True))
            payload = codec.encode(
                ids, logprobs, tail, vocab_size=manifest.vocab_size, bits=manifest.bits
            )
            writer.write_shard(shard, payload, fidelity)


def _first(signal: SparseSignal) -> SparseSignal:
    return SparseSignal(
        signal.ids[:1], signal.logprobs[:1], signal.tail_logprob[:1], signal.temperature
    )


def _flat(signal: SparseSignal) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(B, T, K)`` signal as numpy rows ``(B·T, K)``, ``(B·T,)``."""
    k = signal.ids.shape[-1]
    return (
        signal.ids.reshape(-1, k).numpy(),
        signal.logprobs.reshape(-1, k).float().numpy(),
        signal.tail_logprob.reshape(-1).float().numpy(),
    )


def _fidelity(logits: torch.Tensor, signal: SparseSignal, manifest: Manifest) -> Fidelity:
    """``KL(teacher ‖ what the cache gives back)`` over this batch, after a codec round trip."""
    ids, logprobs, tail = _flat(signal)
    decoded = codec.decode(
        codec.encode(ids, logprobs, tail, vocab_size=manifest.vocab_size, bits=manifest.bits)
    )
    full = F.log_softmax(logits.float() / manifest.temperature, dim=-1)
    kl = codec.reconstruction_kl(full.reshape(-1, full.shape[-1]).numpy(), *decoded)
    return Fidelity(tokens=len(kl), kl_sum=float(kl.sum()), tail_mass_sum=float(np.exp(tail).sum()))
