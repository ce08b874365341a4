"""Curriculum: the blocks a run visits, reordered by how hard the teacher finds them.

The run visits the same blocks as without a curriculum (so a cache taught for the
schedule covers them), the same number of times; only the order changes. A block's
difficulty is the teacher's mean next-token entropy over it, read from the cache
(`TeacherCache.block_entropy`): ``easy_first`` visits low-entropy blocks first (Bengio et
al. 2009), ``hard_first`` the reverse (anti-curriculum). Ties keep the random order.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import torch

from potstill.data.order import block_indices

Curriculum = Literal["none", "easy_first", "hard_first"]


def curriculum_order(
    n: int,
    *,
    micro_batches: int,
    batch_size: int,
    seed: int,
    curriculum: Curriculum,
    difficulty: Callable[[Sequence[int]], torch.Tensor] | None = None,
) -> list[list[int]] | None:
    """Every micro-batch's blocks, in curriculum order; None for ``"none"`` (the random
    order of `potstill.data.order`).

    Args:
        n: blocks in the training split.
        micro_batches, batch_size, seed: the run's schedule.
        difficulty: blocks → ``(len(blocks),)`` float scores (higher = harder).

    >>> hard = lambda blocks: torch.tensor([float(b) for b in blocks])
    >>> curriculum_order(4, micro_batches=2, batch_size=2, seed=0, curriculum="easy_first",
    ...                  difficulty=hard)
    [[0, 1], [2, 3]]
    """
    if curriculum not in ("none", "easy_first", "hard_first"):
        raise ValueError(f"curriculum = {curriculum!r}: give none, easy_first or hard_first")
    if curriculum == "none":
        return None
    if difficulty is None:
        raise ValueError(
            f"train.curriculum={curriculum} orders blocks by the teacher's entropy, read from "
            "the teacher cache: train from a cache (teach.enabled=true)"
        )
    visits = [
        b
        for m in range(micro_batches)
        for b in block_indices(n, batch_size=batch_size, seed=seed, micro_index=m)
    ]
    unique = list(dict.fromkeys(visits))
    scores = difficulty(unique)
    if scores.shape != (len(unique),) or not scores.is_floating_point():
        raise ValueError(
            f"difficulty must give ({len(unique)},) float scores, got {tuple(scores.shape)} "
            f"{scores.dtype}"
        )
    score = dict(zip(unique, scores.tolist(), strict=True))
    sign = 1.0 if curriculum == "easy_first" else -1.0
    ordered = sorted(visits, key=lambda b: sign * score[b])  # stable: ties keep the order
    return [ordered[i : i + batch_size] for i in range(0, len(ordered), batch_size)]
