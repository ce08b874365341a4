"""Curriculum order: the same visits, reordered by the teacher's entropy from the cache."""

from __future__ import annotations

import itertools
from collections import Counter

import pytest
import torch

from potstill.data.order import block_indices
from potstill.train.curriculum import curriculum_order


def _difficulty(blocks):
    return torch.tensor([float((b * 7) % 5) for b in blocks])


@pytest.mark.parametrize("curriculum", ["easy_first", "hard_first"])
def test_the_same_visits_in_order_of_difficulty(curriculum):
    n, micro, size = 11, 9, 3  # 27 visits of 11 blocks: some twice, some three times
    order = curriculum_order(
        n,
        micro_batches=micro,
        batch_size=size,
        seed=4,
        curriculum=curriculum,
        difficulty=_difficulty,
    )
    assert len(order) == micro and all(len(batch) == size for batch in order)
    random = [
        b for m in range(micro) for b in block_indices(n, batch_size=size, seed=4, micro_index=m)
    ]
    flat = [b for batch in order for b in batch]
    assert Counter(flat) == Counter(random)  # the cache taught for the schedule covers it
    scores = _difficulty(flat).tolist()
    pairs = list(itertools.pairwise(scores))
    if curriculum == "easy_first":
        assert all(a <= b for a, b in pairs)
    else:
        assert all(a >= b for a, b in pairs)


def test_no_curriculum_keeps_the_random_order_and_a_live_teacher_is_refused():
    assert curriculum_order(5, micro_batches=2, batch_size=2, seed=0, curriculum="none") is None
    with pytest.raises(ValueError, match="read from the teacher cache"):
        curriculum_order(5, micro_batches=2, batch_size=2, seed=0, curriculum="easy_first")
    with pytest.raises(ValueError, match="give none, easy_first or hard_first"):
        curriculum_order(5, micro_batches=2, batch_size=2, seed=0, curriculum="easiest")
    with pytest.raises(ValueError, match="float scores"):
        curriculum_order(
            5,
            micro_batches=2,
            batch_size=2,
            seed=0,
            curriculum="easy_first",
            difficulty=lambda blocks: torch.zeros(len(blocks), dtype=torch.long),
        )
