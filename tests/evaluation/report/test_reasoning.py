"""The report of a chain-of-thought run: exact-match table and a headline that says what
the traces bought over the answers alone."""

from __future__ import annotations

from potstill.evaluation.report import build_report
from potstill.evaluation.report.format import headline, metrics_table
from potstill.evaluation.report.markdown import render_markdown


def _report():
    return build_report(
        kind="reason",
        run={"name": "cot"},
        data={},
        recipe={
            "task": "chain-of-thought distillation",
            "traces": {
                "traces": 192,
                "kept": 120,
                "problems": 96,
                "problems_with_a_kept_trace": 70,
                "samples_per_problem": 2,
            },
        },
        models={
            "teacher": {"params": 630e6, "accuracy": 0.7, "examples_per_second": {"32": 0.4}},
            "base": {"params": 135e6, "accuracy": 0.0, "mean_answer_tokens": 50.0},
            "answers": {"params": 135e6, "accuracy": 0.06, "answered": 1.0, "truncated": 0.0},
            "student": {"params": 135e6, "accuracy": 0.3, "train_seconds": 90.0},
        },
    )


def test_the_headline_puts_traces_against_answers_then_the_teacher():
    report = _report()
    assert report.kind == "reason"
    lines = headline(report)
    assert [label for label, _, _ in lines] == [
        "traces vs answers only",
        "student vs teacher",
        "traces kept",
    ]
    assert lines[0][1] == "+24.0 points"
    assert "30.0% of the held-out problems" in lines[0][2] and "6.0%" in lines[0][2]
    assert lines[1][1] == "30.0% vs 70.0%"
    assert "up from 0.0% before training" in lines[1][2]
    assert lines[2][1] == "120 of 192"


def test_the_table_shows_exact_match_and_what_answers_cost():
    header, rows = metrics_table(_report())
    assert header[:3] == ["model", "params", "accuracy"]
    table = {row[0]: dict(zip(header, row, strict=True)) for row in rows}
    assert table["student"]["accuracy"] == "30.0%"
    assert table["base"]["tokens/reply"] == "50"
    assert table["teacher"]["problems/s (batched)"].endswith("@32")
    assert "exact match" in render_markdown(_report())
