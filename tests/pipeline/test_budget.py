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


def _context_with_decision(tmp_path, teach_estimate: float):
    from potstill.pipeline.context import RunContext
    from potstill.util.io import atomic_write_json

    recipe = load_recipe(None, ["budget_minutes=10", "train.steps=200"])
    run_dir = tmp_path / "run"
    decision = {
        "minutes": 10,
        "requested_steps": 200,
        "steps": 200,
        "estimated_minutes": 9.0,
        "estimated_minutes_at_requested": 9.0,
        "estimated_seconds": {"teach": teach_estimate, "train_per_step": 1.0, "evaluate": 10.0},
    }
    atomic_write_json(run_dir / "stages" / "budget.json", decision)
    return RunContext(recipe, run_dir)


def test_teaching_slower_than_measured_lowers_the_steps_once(tmp_path):
    import time

    from potstill.pipeline.budget import OVERHEAD_SECONDS, refit_after_teach

    ctx = _context_with_decision(tmp_path, teach_estimate=100.0)
    started = time.perf_counter() - 60  # a minute spent: 540 s left of 600
    fitted = refit_after_teach(ctx, started, teach_seconds=300.0)  # 3x slower
    # (steps · 1 s + 10 s) · 3 + the fixed overhead must fit the 540 s left
    assert (fitted.train.steps + 10) * 3 + OVERHEAD_SECONDS <= 540
    assert ((fitted.train.steps / 0.95) + 10) * 3 + OVERHEAD_SECONDS > 540  # no lower
    saved = json.loads((ctx.run_dir / "stages" / "budget.json").read_text())
    assert saved["steps"] == fitted.train.steps and saved["refit"]["slowdown"] == 3.0
    # done once: a resumed run keeps the decision
    ctx.recipe = fitted
    assert refit_after_teach(ctx, started, teach_seconds=900.0).train.steps == fitted.train.steps


def test_teaching_as_fast_as_measured_keeps_the_steps(tmp_path):
    import time

    from potstill.pipeline.budget import refit_after_teach

    ctx = _context_with_decision(tmp_path, teach_estimate=100.0)
    fitted = refit_after_teach(ctx, time.perf_counter() - 120, teach_seconds=105.0)
    assert fitted.train.steps == 200  # within the tolerance: noise, not a slower machine
    saved = json.loads((ctx.run_dir / "stages" / "budget.json").read_text())
    assert saved["refit"]["slowdown"] == 1.0 and saved["refit"]["ratio"] == 1.05


def test_a_teach_of_seconds_is_no_sample_of_the_machine(tmp_path):
    """A tiny run's teach, a second against an estimated hundredth, is a 100x "slowdown"
    of pure noise: the steps stay (under load this cut a one-hour budget to the floor)."""
    import time

    from potstill.pipeline.budget import refit_after_teach

    ctx = _context_with_decision(tmp_path, teach_estimate=0.01)
    fitted = refit_after_teach(ctx, time.perf_counter() - 5, teach_seconds=1.0)
    assert fitted.train.steps == 200
    saved = json.loads((ctx.run_dir / "stages" / "budget.json").read_text())
    assert saved["refit"]["ratio"] == 100.0 and saved["refit"]["slowdown"] == 1.0
