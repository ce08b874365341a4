"""The order training visits blocks in: deterministic, epoch by epoch, and known ahead."""

from __future__ import annotations

import itertools

import pytest
import torch

from potstill.data.order import block_indices, epoch_order, scheduled_blocks


def visits(n: int, *, micro_batches: int, batch_size: int, seed: int) -> list[int]:
    """Every block the first ``micro_batches`` micro-batches hold, in order, repeats kept."""
    return [
        b
        for m in range(micro_batches)
        for b in block_indices(n, batch_size=batch_size, seed=seed, micro_index=m)
    ]


def test_an_epoch_is_the_documented_seeded_permutation():
    # Pinned: a teacher cache lists the blocks it holds by this order.
    for n, seed, epoch in [(10, 0, 0), (10, 0, 1), (7, 3, 2)]:
        generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        assert torch.equal(epoch_order(n, seed, epoch), torch.randperm(n, generator=generator))
    assert sorted(epoch_order(10, 0, 0).tolist()) == list(range(10))
    assert not torch.equal(epoch_order(10, 0, 0), epoch_order(10, 0, 1))
    assert not torch.equal(epoch_order(10, 0, 0), epoch_order(10, 1, 0))


def test_one_epoch_of_micro_batches_visits_every_block_once():
    seen = visits(12, micro_batches=4, batch_size=3, seed=5)
    assert seen == epoch_order(12, 5, 0).tolist()


def test_a_micro_batch_crossing_an_epoch_takes_the_next_permutation():
    first, second = epoch_order(5, 0, 0).tolist(), epoch_order(5, 0, 1).tolist()
    assert block_indices(5, batch_size=2, seed=0, micro_index=2) == [first[4], second[0]]
    assert block_indices(5, batch_size=2, seed=0, micro_index=3) == second[1:3]


def test_the_order_is_a_function_of_the_position_alone():
    # A resumed run asks for micro-batch 7 without having asked for 0..6.
    fresh = block_indices(9, batch_size=4, seed=2, micro_index=7)
    epoch_order.cache_clear()
    assert block_indices(9, batch_size=4, seed=2, micro_index=7) == fresh
    assert visits(9, micro_batches=8, batch_size=4, seed=2)[28:] == fresh


@pytest.mark.parametrize(
    ("n", "micro_batches", "batch_size", "seed"),
    list(itertools.product([1, 5, 16, 100], [1, 3, 8], [1, 2, 7], [0, 4])),
)
def test_scheduled_blocks_are_exactly_the_visited_ones_in_first_visit_order(
    n, micro_batches, batch_size, seed
):
    seen = visits(n, micro_batches=micro_batches, batch_size=batch_size, seed=seed)
    scheduled = scheduled_blocks(n, micro_batches=micro_batches, batch_size=batch_size, seed=seed)
    assert scheduled == list(dict.fromkeys(seen))
    assert all(isinstance(b, int) for b in scheduled)
