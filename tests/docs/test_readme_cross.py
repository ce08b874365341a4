"""The README's cross-tokenizer table is the measured one (bench/results/cross_tokenizer.json)."""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text(encoding="utf-8")
PROSE = " ".join(README.split())  # the wrapped lines as one
RESULT = json.loads((ROOT / "bench" / "results" / "cross_tokenizer.json").read_text())


def test_every_arm_row_is_the_measured_one():
    arms = RESULT["arms"]
    for key in ("ce", "uld", "sequence", "start"):
        arm = arms[key]
        row = next(line for line in README.splitlines() if line.startswith(f"| {arm['what']} |"))
        assert f"| {arm['perplexity']:.2f} |" in row, key
        if key != "start":
            assert f"| {arm['teacher_tokens']:,} |" in row, key
            total = arm["teacher_seconds"] + arm["train_seconds"]
            assert f"| {total:.0f} |" in row, key


def test_the_shares_the_readme_states_are_computed_from_the_result():
    arms = RESULT["arms"]
    behind = arms["uld"]["perplexity"] / arms["ce"]["perplexity"] - 1
    sequence = arms["sequence"]["perplexity"] / arms["ce"]["perplexity"] - 1
    assert f"ULD + CE ended {behind:.1%} behind" in PROSE
    assert f"generated text {sequence:.0%} behind" in PROSE
    assert f"--steps {RESULT['steps']}" in PROSE


def test_bits_per_character_are_the_measured_ones():
    arms = RESULT["arms"]
    for key in ("ce", "uld", "sequence", "start"):
        row = next(
            line for line in README.splitlines() if line.startswith(f"| {arms[key]['what']} |")
        )
        assert f"| {arms[key]['bits_per_char']:.3f} |" in row, key
    teacher = f"{RESULT['teacher_bits_per_char']:.3f}"
    assert f"| the teacher, in its own tokens | – | {teacher} |" in README
    trained = [arms[key]["bits_per_char"] for key in ("ce", "uld", "sequence")]
    assert f"at {teacher} bits per character against the students' {min(trained):.3f} to" in PROSE
    assert f"{max(trained):.3f}" in PROSE
