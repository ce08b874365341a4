"""Few-shot examples chosen from gold-labelled texts (`task.shots`): one per label first,
deterministic by seed, texts cut to a bounded length."""

from __future__ import annotations

import pytest

from potstill.synth.prompt import SHOT_CHARS, choose_examples

NAMES = ["sport", "politics", "science"]
TEXTS = [f"text {i}" for i in range(20)]
# Imbalanced, as real data is: 15 sport, 4 politics, 1 science.
LABELS = ["sport"] * 15 + ["politics"] * 4 + ["science"]


@pytest.mark.parametrize("shots", [3, 5, 8])
def test_every_label_is_shown_once_before_any_is_shown_twice(shots):
    examples = choose_examples(TEXTS, LABELS, NAMES, shots, seed=0)
    assert len(examples) == shots
    assert {e.label for e in examples} == set(NAMES)
    assert len({e.text for e in examples}) == shots  # no text twice
    for e in examples:  # each example is a train text with its own gold label
        assert LABELS[TEXTS.index(e.text)] == e.label


def test_fewer_shots_than_labels_gives_distinct_labels():
    examples = choose_examples(TEXTS, LABELS, NAMES, 2, seed=3)
    assert len({e.label for e in examples}) == 2


def test_the_choice_is_deterministic_by_seed():
    runs = {
        seed: [(e.text, e.label) for e in choose_examples(TEXTS, LABELS, NAMES, 4, seed)]
        for seed in range(6)
    }
    assert runs[0] == [(e.text, e.label) for e in choose_examples(TEXTS, LABELS, NAMES, 4, 0)]
    assert len({tuple(v) for v in runs.values()}) > 1  # the seed chooses


def test_more_shots_than_texts_takes_them_all_and_long_texts_are_cut():
    long = "word " * 200
    examples = choose_examples([long, "short"], ["sport", "politics"], NAMES, 5, seed=0)
    assert len(examples) == 2
    cut = next(e for e in examples if e.label == "sport").text
    assert len(cut) <= SHOT_CHARS + 2 and cut.endswith(" …")
