"""The README's cross-tokenizer table is the measured one (bench/results/cross_tokenizer.json
at 40 steps, cross_tokenizer_130.json at 130)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text(encoding="utf-8")
PROSE = " ".join(README.split())  # the wrapped lines as one
RESULTS = [
    json.loads((ROOT / "bench" / "results" / name).read_text())
    for name in ("cross_tokenizer.json", "cross_tokenizer_130.json")
]


def row(result: dict, arm: dict) -> str:
    start = f"| {result['steps']} | {arm['what']} |"
    return next(line for line in README.splitlines() if line.startswith(start))


@pytest.mark.parametrize("result", RESULTS, ids=lambda r: f"{r['steps']} steps")
def test_every_arm_row_is_the_measured_one(result):
    ce = result["arms"]["ce"]["perplexities"]
    for key, arm in result["arms"].items():
        if key == "start":
            continue
        line = row(result, arm)
        for seed in map(str, result["seeds"]):
            value = arm["perplexities"].get(seed)
            assert (f"| {value:.2f} |" if value else "| – |") in line, (key, seed)
        assert f"| {arm['perplexity']:.2f} |" in line, key
        same = [ce[seed] for seed in arm["perplexities"]]  # cross-entropy on the arm's seeds
        versus = "–" if key == "ce" else f"{arm['perplexity'] / (sum(same) / len(same)) - 1:+.1%}"
        assert f"| {versus} |" in line, key
        total = arm["teacher_seconds"] + arm["train_seconds"]
        assert line.endswith(f"| {arm['teacher_seconds']:.0f} | {total:.0f} |"), key


def test_the_commands_and_the_teachers_bits_per_character_are_the_measured_ones():
    for result in RESULTS:
        assert f"--steps {result['steps']}" in PROSE
    teacher = f"{RESULTS[0]['teacher_bits_per_char']:.3f}"
    assert f"The teacher reads the held-out text at {teacher} bits per character" in PROSE
    trained = [
        arm["bits_per_char"]
        for result in RESULTS
        for key, arm in result["arms"].items()
        if key != "start"
    ]
    assert f"the students at {min(trained):.3f} to {max(trained):.3f}" in PROSE
