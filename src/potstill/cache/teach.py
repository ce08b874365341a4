"""``potstill teach``: run the teacher once over the training blocks, into the cache."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from potstill.cache import codec
from potstill.cache.reader import TeacherCache
from potstill.cache.settings import TeachConfig
from potstill.cache.store import CacheWriter, Fidelity, Manifest
from potstill.data import Blocks
from potstill.losses import top_k_signal
from potstill.losses.sampled import sampled_signal
from potstill.models.load import text_config, tokenizer_sha256, weights_sha256
from potstill.signals import SignalRequest, SparseSignal
from potstill.teachers import LiveTeacher
from potstill.util.distributed import barrier, current_world, my_share, on_main
from potstill.util.log import bar


def plan_blocks(order: list[int], num_blocks: int, blocks: str | int) -> list[int]:
    """The training blocks to cache, in the order training first visits them.

    Args:
        order: the blocks the training schedule visits, in order of first visit
            (`potstill.data.order.scheduled_blocks`).
        num_blocks: how many training blocks the data has.
        blocks: ``"schedule"`` (exactly ``order``), ``"all"``, or the first N.

    >>> plan_blocks([3, 1], 4, "all"), plan_blocks([3, 1], 4, 3)
    ([3, 1, 0, 2], [3, 1, 0])
    """
    if blocks == "schedule":
        return list(order)
    every = list(dict.fromkeys([*order, *range(num_blocks)]))  # visited first, then the rest
    return every if blocks == "all" else every[: int(blocks)]


def cache_source(
    teacher_ref: str, tokenizer: Any, *, data_fingerprint: str, block_size: int
) -> dict[str, Any]:
    """What a cache's signal depends on, as its manifest records it."""
    return {
        "teacher": teacher_ref,
        "teacher_sha256": weights_sha256(teacher_ref),
        "tokenizer_sha256": tokenizer_sha256(tokenizer),
        "data_fingerprint": data_fingerprint,
        "block_size": block_size,
    }


def teach(
    teacher: LiveTeacher,
    blocks: Blocks,
    *,
    directory: Path,
    source: dict[str, Any],
    settings: TeachConfig,
    temperature: float,
    plan: list[int],
    log: Callable[[str], None] = lambda _: None,
    hidden_layers: tuple[int, ...] = (),
) -> TeacherCache:
    """Fill the cache in ``directory`` with the teacher's top-k signal for the ``plan``
    blocks (continuing one a killed run left), then load and return it.

    ``hidden_layers`` (HF ``hidden_states`` indices) are kept too, for hidden-state loss
    terms: as float16, or (``teach.hidden_error`` > 0) coded in a basis fitted on the first
    shard each process teaches (`potstill.cache.states`).

    Under ``torchrun`` / ``accelerate launch`` the blocks still to teach are cut into
    shards as in one process and dealt out in turn, shard ``i`` to rank ``i mod size``;
    each rank journals its own shards and rank 0 merges them into the manifest at the end
    (`CacheWriter.merge_journals`). The cache holds what one process would have made.
    """
    vocab = teacher.model.get_output_embeddings().weight.shape[0]  # what cached ids index
    width = text_config(teacher.model).hidden_size
    fresh = Manifest.new(
        source,
        vocab_size=vocab,
        top_k=max(0, min(settings.top_k, vocab - settings.samples)),  # k + draws fit in V
        temperature=temperature,
        bits=settings.bits,
        plan=plan,
        samples=settings.samples,
        seed=settings.seed,
        hidden_layers=tuple(hidden_layers),
        width=width,
        hidden_error=settings.hidden_error,
    )
    world = current_world()
    writer = on_main(lambda: CacheWriter.open(directory, fresh, log=log))
    remaining = writer.manifest.remaining()
    cut = settings.shard_blocks
    shards = [remaining[start : start + cut] for start in range(0, len(remaining), cut)]
    if world.distributed:
        mine = my_share(shards, world)
        _teach_blocks(teacher, blocks, mine, writer.for_rank(world.rank), settings)
        barrier()  # every rank's journal is complete
        on_main(lambda: writer.merge_journals(log=log))
    elif shards:
        _teach_blocks(teacher, blocks, shards, writer, settings)
    return TeacherCache.load(directory, source, memory_mb=settings.cache_memory_mb)


def _teach_blocks(
    teacher: LiveTeacher,
    blocks: Blocks,
    shards: list[list[int]],
    writer: CacheWriter,
    settings: TeachConfig,
) -> None:
    """Teach ``shards`` (lists of block indices), each into one shard of ``writer``."""
    manifest = writer.manifest
    batch_size = settings.batch_size
    teacher.model.eval()
    layers = manifest.hidden_layers
    request = SignalRequest(distributions=True, hidden_layers=layers)
    total = sum(len(blocks_) for blocks_ in shards)
    with bar("   teach", total=total) as progress:
        for shard in shards:
            signals, fidelity, states = [], Fidelity(), []
            # A shard's draws are fixed by the seed and its first block: a shard taught
            # again after a kill draws what it drew before.
            generator = torch.Generator().manual_seed(manifest.seed * 1_000_003 + shard[0])
            for offset in range(0, len(shard), batch_size):
                index = torch.tensor(shard[offset : offset + batch_size])
                with torch.inference_mode():
                    outputs = teacher.outputs(blocks.batch(index), request)
                    logits = outputs.distributions.logits.cpu()  # (B, L − 1, V)
                    if layers:  # (B, L − 1, layers, H): every position but the last
                        stacked = torch.stack([outputs.hidden_states[i] for i in layers], dim=2)
                        states.append(stacked[:, :-1].float().cpu().numpy())
                    signal = cache_signal(logits, manifest, generator)
                    if offset == 0:  # a sample of every shard: its first block
                        fidelity = _fidelity(logits[:1], _first(signal), manifest)
                signals.append(_flat(signal))
                progress.advance(len(index))
            ids, logprobs, tail = (np.concatenate(parts) for parts in zip(*signals, strict=True))
            payload = codec.encode(
                ids, logprobs, tail, vocab_size=manifest.vocab_size, bits=manifest.bits
            )
            hidden = None
            if layers:  # (tokens, layers, H)
                hidden = np.concatenate(states).reshape(-1, len(layers), states[0].shape[-1])
            writer.write_shard(shard, payload, fidelity, hidden)


def cache_signal(
    logits: torch.Tensor, manifest: Manifest, generator: torch.Generator | None = None
) -> SparseSignal:
    """What the cache keeps of the teacher's ``(B, T, V)`` logits: the top-k ids and a
    tail, or (with ``samples``) the top-k ids exactly and draws from the rest."""
    if manifest.samples:
        return sampled_signal(
            logits,
            manifest.samples,
            top=manifest.top_k,
            temperature=manifest.temperature,
            generator=generator,
        )
    return top_k_signal(logits, manifest.top_k, manifest.temperature)


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
    """``KL(teacher ‖ what the cache gives back)`` over this batch, after a codec round trip.

    None for a sampled cache (no tokens measured): a sampled estimate puts no mass on
    the ids it did not draw, so its KL from the teacher is infinite, though it is right
    on average.
    """
    if manifest.samples:
        return Fidelity()
    ids, logprobs, tail = _flat(signal)
    decoded = codec.decode(
        codec.encode(ids, logprobs, tail, vocab_size=manifest.vocab_size, bits=manifest.bits)
    )
    full = F.log_softmax(logits.float() / manifest.temperature, dim=-1)
    kl = codec.reconstruction_kl(full.reshape(-1, full.shape[-1]).numpy(), *decoded)
    return Fidelity(tokens=len(kl), kl_sum=float(kl.sum()), tail_mass_sum=float(np.exp(tail).sum()))
