"""Layer maps: the auto maps and the one-line refusal of impossible maps."""

from __future__ import annotations

import re

import pytest

from potstill.losses import LossTerm, resolve_layers, signal_request
from potstill.losses.layers import auto_layer_map, check_layer_map


def test_a_cut_student_matches_the_inputs_its_blocks_had_in_the_teacher():
    kept = [0, 1, 2, 27, 28, 29]
    assert auto_layer_map("hidden", student_layers=6, teacher_layers=30, kept=kept) == (
        (1, 1),
        (2, 2),
        (3, 27),
        (4, 28),
        (5, 29),
    )
    assert auto_layer_map("attention", student_layers=6, teacher_layers=30, kept=kept)[3] == (3, 27)


def test_other_students_are_spread_evenly_and_end_on_the_last_block():
    assert auto_layer_map("hidden", student_layers=4, teacher_layers=8) == ((1, 2), (2, 4), (3, 6))
    assert auto_layer_map("attention", student_layers=4, teacher_layers=8) == (
        (0, 1),
        (1, 3),
        (2, 5),
        (3, 7),
    )


@pytest.mark.parametrize(
    ("kind", "pairs", "message"),
    [
        ("hidden", ((7, 3),), "layer map 7→3 is impossible: the student has hidden states 0..6"),
        ("hidden", ((1, 31),), "the teacher has hidden states 0..30 (30 blocks)"),
        ("hidden", ((-1, 3),), "the student has hidden states 0..6"),
        ("attention", ((6, 3),), "the student has attention blocks 0..5 (6 blocks)"),
        ("attention", ((1, 30),), "the teacher has attention blocks 0..29"),
        ("hidden", ((1, 3), (1, 4)), "student layer 1 is mapped twice"),
        ("hidden", (), "the layer map is empty"),
    ],
)
def test_impossible_maps_are_refused_in_one_line(kind, pairs, message):
    with pytest.raises(ValueError, match=re.escape(message)) as e:
        check_layer_map("x", kind, pairs, student_layers=6, teacher_layers=30)
    assert "\n" not in str(e.value)


def test_resolution_makes_maps_explicit_and_the_request_follows_them():
    terms = [
        LossTerm("forward_kl"),
        LossTerm("hidden_mse", layers=((2, 8),)),
        LossTerm("attention_kl"),
    ]
    with pytest.raises(ValueError, match="resolve the auto layer map"):
        signal_request(terms)
    resolved = resolve_layers(terms, student_layers=2, teacher_layers=8)
    assert resolved[0] == terms[0]
    assert resolved[1].layers == ((2, 8),)
    assert resolved[2].layers == ((0, 3), (1, 7))
    request = signal_request(resolved)
    assert request.distributions
    assert request.hidden_layers == (8,) and request.attention_layers == (3, 7)


def test_layer_maps_and_heads_only_where_they_apply():
    with pytest.raises(ValueError, match="layer map applies only to hidden and attention"):
        LossTerm("forward_kl", layers=((1, 1),))
    with pytest.raises(ValueError, match="heads applies only to attention"):
        LossTerm("hidden_mse", heads="mean")
    with pytest.raises(ValueError, match="give grouped or mean"):
        LossTerm("attention_kl", heads="some")
