"""The time budget: measured on this machine, it lowers train.steps only when needed."""

from __future__ import annotations

import json

import pytest

import potstill
from potstill.config import load_recipe
from potstill.config.load import DEFAULT_BUDGET_MINUTES


@pytest.fixture
def tiny(tmp_path, tiny_teacher_dir, corpus_file):
    return {
        "name": "tiny",
        "runs_dir": str(tmp_path / "runs"),
        "teacher": str(tiny_teacher_dir),
        "student": {"from_teacher": {"layers": [0, 3]}},
        "data": {"path": str(corpus_file), "block_size": 16, "heldout": 0.1},
        "train": {"steps": 30, "batch_size": 2, "warmup": 1},
        "eval": {"batch_size": 4, "generate_tokens": 4},
    }


def test_only_the_embedded_default_has_a_budget(tmp_path):
    assert load_recipe().budget_minutes == DEFAULT_BUDGET_MINUTES
    path = tmp_path / "r.yaml"
    path.write_text("train: {steps: 3}\n")
    assert load_recipe(path).budget_minutes is None
    assert load_recipe(None, ["budget_minutes=null"]).budget_minutes is None


def test_a_budget_that_fits_keeps_every_step(tiny):
    result = potstill.run({**tiny, "budget_minutes": 60})
    decision = json.loads((result.run_dir / "stages" / "budget.json").read_text())
    assert decision["steps"] == decision["requested_steps"] == 30
    assert 0 < decision["measured"]["student_step_seconds"] < 5
    assert decision["estimated_minutes"] < 60
    assert result.report.recipe["steps"] == 30
    assert result.report.budget["steps"] == 30


def test_a_tight_budget_lowers_the_steps_and_says_so(tiny):
    # 0.005 minutes cannot hold even the measurement: the floor of 20 steps is taken
    result = potstill.run({**tiny, "budget_minutes": 0.005})
    decision = json.loads((result.run_dir / "stages" / "budget.json").read_text())
    assert decision["requested_steps"] == 30 and decision["steps"] == 20
    assert decision["estimated_minutes_at_requested"] > decision["estimated_minutes"]
    assert result.report.recipe["steps"] == 20 and result.report.budget["steps"] == 20
    rows = (result.run_dir / "metrics.jsonl").read_text().splitlines()
    assert max(json.loads(r)["step"] for r in rows) == 20
    # resumed, the decision is reused: nothing is retrained
    again = potstill.run({**tiny, "budget_minutes": 0.005}, resume=True)
    assert again.report.recipe["steps"] == 20
    assert (result.run_dir / "metrics.jsonl").read_text().splitlines() == rows
