"""``potstill teach`` across tokenizers: a teacher of another tokenizer than the data's.

The training blocks are the student's tokens. Each block is decoded to its text, the
text is tokenized by the teacher's tokenizer with character offsets, and each student
position is paired with the teacher position that has read the same text
(`potstill.data.align`). One teacher forward pass over the teacher's tokens gives, at each
paired position, its top-k log-probabilities and tail, written as the student position's
row of an ordinary top-k shard (teacher ids, ``vocab_size`` the teacher's); an unpaired
position's row keeps no mass (every log-probability at the codec's floor, the tail 1),
which `potstill.losses.universal` skips. So the cache is indexed by the student's blocks
and positions as any cache is, read by the same `TeacherCache`, and its manifest's
``source.teacher_tokenizer_sha256`` says whose ids it holds: only a recipe with the same
teacher tokenizer and data tokenizer reads it.

A top-k cache only (``teach.samples`` 0): ULD sorts the distribution, and a sorted
sample is no unbiased estimate of a sorted distribution. No hidden states (positions of
two tokenizations do not pair one to one), no reconstruction KL measured, one process.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from potstill.cache import codec
from potstill.cache.reader import TeacherCache
from potstill.cache.settings import TeachConfig
from potstill.cache.store import CacheWriter, Fidelity, Manifest
from potstill.cache.teach import cache_source
from potstill.data.align import Alignment, align
from potstill.losses import top_k_signal
from potstill.models.load import tokenizer_sha256
from potstill.util.log import bar


def cross_source(
    teacher_ref: str,
    teacher_tokenizer: Any,
    data_tokenizer: Any,
    *,
    data_fingerprint: str,
    block_size: int,
) -> dict[str, Any]:
    """What a cache taught across tokenizers depends on: the usual source (the data's
    tokenizer as ``tokenizer_sha256``) and the teacher's tokenizer."""
    source = cache_source(
        teacher_ref, data_tokenizer, data_fingerprint=data_fingerprint, block_size=block_size
    )
    return {**source, "teacher_tokenizer_sha256": tokenizer_sha256(teacher_tokenizer)}


def teach_across(
    teacher: torch.nn.Module,
    teacher_tokenizer: Any,
    data_tokenizer: Any,
    blocks: Any,
    *,
    directory: Path,
    source: dict[str, Any],
    settings: TeachConfig,
    temperature: float,
    plan: list[int],
    log: Callable[[str], None] = lambda _: None,
) -> TeacherCache:
    """Fill the cache in ``directory`` with the teacher's top-``teach.top_k`` signal at the
    aligned positions of the ``plan`` blocks (continuing one a killed run left), then load
    and return it. ``teach.batch_size`` blocks go through the teacher at once.

    Args:
        teacher: the teacher, in eval mode on its device.
        teacher_tokenizer: its fast tokenizer (offsets).
        data_tokenizer: the tokenizer ``blocks`` were cut by (the student's).
        blocks: the training blocks (`Blocks` or stored blocks), ``(N, L)`` student ids.
        source: `cross_source`.
    """
    if settings.samples or settings.top_k < 1:
        raise ValueError("a cache taught across tokenizers keeps the top k only (samples 0)")
    vocab = teacher.get_output_embeddings().weight.shape[0]
    fresh = Manifest.new(
        source,
        vocab_size=vocab,
        top_k=min(settings.top_k, vocab),
        temperature=temperature,
        bits=settings.bits,
        plan=plan,
        seed=settings.seed,
    )
    writer = CacheWriter.open(directory, fresh, log=log)
    manifest = writer.manifest
    remaining = manifest.remaining()
    cut = settings.shard_blocks
    shards = [remaining[start : start + cut] for start in range(0, len(remaining), cut)]
    aligned, positions = 0, 0
    teacher.eval()
    with bar("   teach", total=len(remaining)) as progress:
        for shard in shards:
            rows = []
            for offset in range(0, len(shard), settings.batch_size):
                index = shard[offset : offset + settings.batch_size]
                student_ids = blocks.batch(torch.tensor(index)).input_ids  # (b, L)
                alignments = [
                    align(data_tokenizer, ids.tolist(), teacher_tokenizer) for ids in student_ids
                ]
                rows.append(aligned_rows(teacher, alignments, manifest))
                aligned += sum(int(a.aligned.sum()) for a in alignments)
                positions += sum(len(a.teacher_position) for a in alignments)
                progress.advance(len(index))
            ids, logprobs, tail = (np.concatenate(parts) for parts in zip(*rows, strict=True))
            payload = codec.encode(ids, logprobs, tail, vocab_size=vocab, bits=manifest.bits)
            writer.write_shard(shard, payload, Fidelity())
    if positions:
        log(
            f"teach: {aligned:,} of {positions:,} positions aligned with the teacher's "
            f"tokenization ({aligned / positions:.1%}); the rest carry no teacher signal"
        )
    return TeacherCache.load(directory, source, memory_mb=settings.cache_memory_mb)


def aligned_rows(
    teacher: torch.nn.Module, alignments: list[Alignment], manifest: Manifest
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The cache rows of a batch of aligned blocks: one forward pass over the teacher's
    tokens (right-padded), its top-k at each paired position.

    Returns:
        ``ids`` ``(rows, K)`` int64, ``logprobs`` ``(rows, K)`` float32 (−inf where no
        signal), ``tail`` ``(rows,)`` float32 (0 where no signal), one row per student
        position of every block, block after block.
    """
    device = teacher.get_output_embeddings().weight.device
    longest = max(len(a.teacher_ids) for a in alignments)
    input_ids = torch.zeros(len(alignments), max(longest, 1), dtype=torch.long)
    mask = torch.zeros_like(input_ids, dtype=torch.bool)
    for row, a in enumerate(alignments):
        input_ids[row, : len(a.teacher_ids)] = torch.from_numpy(a.teacher_ids)
        mask[row, : len(a.teacher_ids)] = True
    k = manifest.top_k
    with torch.inference_mode():
        logits = teacher(input_ids=input_ids.to(device), attention_mask=mask.to(device)).logits
        signal = top_k_signal(logits.float().cpu(), k, manifest.temperature)  # (B, M, K)
    parts = []
    for row, a in enumerate(alignments):
        n = len(a.teacher_position)
        ids = np.tile(np.arange(k, dtype=np.int64), (n, 1))  # (n, K): distinct, unused
        logprobs = np.full((n, k), -np.inf, dtype=np.float32)
        tail = np.zeros(n, dtype=np.float32)  # all the mass outside: no signal
        at = a.teacher_position[a.aligned]
        ids[a.aligned] = signal.ids[row, at].numpy()
        logprobs[a.aligned] = signal.logprobs[row, at].numpy()
        tail[a.aligned] = signal.tail_logprob[row, at].numpy()
        parts.append((ids, logprobs, tail))
    return tuple(np.concatenate(p) for p in zip(*parts, strict=True))  # type: ignore[return-value]
