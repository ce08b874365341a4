"""A time budget that kept under half the recipe's steps: the headline says the result is
not comparable to a full run and how to rerun, and the gap closed carries that beside it
in every view."""

from __future__ import annotations

import pytest

from potstill.evaluation.report import build_report, summary_table, write_report
from potstill.evaluation.report.format import headline
from tests.evaluation.report.numbers import DATA, RECIPE, RUN, three_models


def budgeted(steps: int, asked: int = 300):
    budget = {
        "minutes": 10,
        "steps": steps,
        "requested_steps": asked,
        "estimated_minutes": 9.5,
        "estimated_minutes_at_requested": 10 * asked / steps,
    }
    return build_report(
        kind="lm", run=RUN, data=DATA, recipe=RECIPE, models=three_models(), budget=budget
    )


def test_under_half_the_steps_leads_the_headline_and_says_how_to_rerun(tmp_path):
    report = budgeted(steps=120)
    (label, value, sentence), gap = headline(report)[:2]
    assert (label, value) == ("time budget", "120 of 300 steps")
    assert "not comparable to a full run" in sentence
    assert "rerun with budget_minutes=null (or a longer budget_minutes)" in sentence
    caveat = "50% (after 120 of 300 steps, not comparable to a full run)"
    assert gap[:2] == ("gap closed", caveat)
    assert [label for label, _, _ in headline(report)].count("time budget") == 1
    paths = write_report(tmp_path, report)
    assert f"- **gap closed: {caveat}.**" in paths["report.md"].read_text()
    assert f'<div class="value">{caveat}</div>' in paths["report.html"].read_text()
    assert summary_table(report).splitlines()[-2:] == [
        f"gap closed: {caveat}",
        "time budget: 120 of 300 steps; rerun with budget_minutes=null "
        "(or a longer budget_minutes)",
    ]


@pytest.mark.parametrize("steps", [150, 299, 300])
def test_half_the_steps_or_more_needs_no_caveat(steps):
    report = budgeted(steps=steps)
    lines = {label: (value, sentence) for label, value, sentence in headline(report)}
    assert lines["gap closed"][0] == "50%"
    assert "not comparable" not in lines["time budget"][1]
    assert [label for label, _, _ in headline(report)][-1] == "time budget"
    assert summary_table(report).splitlines()[-2] == "gap closed: 50%"
