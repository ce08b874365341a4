"""Alignment of two tokenizations by character boundaries (`potstill.data.align`)."""

from __future__ import annotations

import numpy as np
import pytest

from potstill.data.align import UNALIGNED, align, context_ends, pair_positions
from tests.conftest import TEXT, make_tokenizer


@pytest.fixture(scope="module")
def coarse():
    return make_tokenizer(300)


@pytest.fixture(scope="module")
def fine():
    return make_tokenizer(120)  # fewer merges: the same text in more, shorter tokens


def test_pairs_equal_boundaries_by_hand():
    # student "To| be|,| or" ends at 2, 5, 6, 9; teacher "To |be, |or" ends at 3, 7, 9
    student, teacher = np.array([2, 5, 6, 9]), np.array([3, 7, 9])
    assert pair_positions(student, teacher).tolist() == [UNALIGNED, UNALIGNED, UNALIGNED]
    # teacher "To| be|, or": position 1 (after " be") predicts what student position 1 does
    assert pair_positions(student, np.array([2, 5, 9])).tolist() == [0, 1, UNALIGNED]


def test_the_teachers_last_position_and_broken_boundaries_are_never_paired():
    assert pair_positions(np.array([2, 4, 6]), np.array([2, 4])).tolist() == [0, UNALIGNED]
    assert pair_positions(np.array([-1, 4, 6]), np.array([2, 4, 6])).tolist() == [UNALIGNED, 1]


def test_a_token_of_no_text_gives_way_to_the_later_position():
    # teacher: "ab", a special token of no text, "cd": positions 0 and 1 both end at 2
    assert pair_positions(np.array([2, 4]), np.array([2, 2, 4])).tolist() == [1]


def test_the_same_tokenizer_aligns_every_position(coarse):
    ids = coarse(TEXT)["input_ids"][:40]
    alignment = align(coarse, ids, coarse)
    assert alignment.share == 1.0
    assert alignment.teacher_position.tolist() == list(range(len(ids) - 1))
    assert alignment.teacher_ids.tolist() == ids


def test_two_tokenizers_pair_positions_that_read_the_same_text(coarse, fine):
    ids = fine(TEXT)["input_ids"][:60]  # the student splits finer than the teacher
    alignment = align(fine, ids, coarse)
    text, student_ends = context_ends(fine, ids)
    assert len(alignment.teacher_ids) < len(ids)
    assert 0.2 < alignment.share < 1.0
    assert coarse.decode(alignment.teacher_ids.tolist()) == text
    paired = alignment.teacher_position[alignment.aligned]
    assert len(set(paired.tolist())) == len(paired)  # one student position per teacher's
    for i, j in enumerate(alignment.teacher_position.tolist()):
        if j != UNALIGNED:  # both have read exactly the same text
            assert coarse.decode(alignment.teacher_ids[: j + 1].tolist()) == text[: student_ends[i]]


def test_bad_input_is_refused(coarse):
    with pytest.raises(ValueError, match="empty"):
        align(coarse, [], coarse)
    with pytest.raises(ValueError, match="1-D integer"):
        pair_positions(np.array([1.0, 2.0]), np.array([1, 2]))
    with pytest.raises(ValueError, match="fast tokenizer"):
        align(coarse, [1, 2], object())
