"""The order training visits blocks in: a deterministic function of the position alone.

A resumed run therefore sees exactly the batches an uninterrupted one would have, and the
teacher pass (`potstill teach`) knows in advance which blocks training will visit. Each
epoch is a fresh permutation seeded by ``(seed, epoch)``.
"""

from __future__ import annotations

import functools

import torch


def block_indices(n: int, *, batch_size: int, seed: int, micro_index: int) -> list[int]:
    """The blocks of the ``micro_index``-th micro-batch of ``batch_size`` out of ``n``.

    >>> block_indices(4, batch_size=3, seed=0, micro_index=1)[:1] == [epoch_order(4, 0, 0)[3]]
    True
    """
    start = micro_index * batch_size
    positions = [divmod(p, n) for p in range(start, start + batch_size)]
    return [int(epoch_order(n, seed, epoch)[i]) for epoch, i in positions]


def scheduled_blocks(n: int, *, micro_batches: int, batch_size: int, seed: int) -> list[int]:
    """Every block ``micro_batches`` micro-batches visit, in order of first visit.

    >>> sorted(scheduled_blocks(5, micro_batches=3, batch_size=2, seed=0))  # 6 visits
    [0, 1, 2, 3, 4]
    >>> len(scheduled_blocks(100, micro_batches=3, batch_size=2, seed=0))
    6
    """
    if micro_batches * batch_size >= n:  # epoch 0 visits every block, in its order
        return [int(i) for i in epoch_order(n, seed, 0)]
    visits = (
        b
        for m in range(micro_batches)
        for b in block_indices(n, batch_size=batch_size, seed=seed, micro_index=m)
    )
    return list(dict.fromkeys(visits))


@functools.lru_cache(maxsize=4)
def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The permutation of ``n`` blocks for ``epoch``."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=generator)
