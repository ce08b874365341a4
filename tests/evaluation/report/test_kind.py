"""Every view renders by `report.kind`: per kind, report.md, report.html, the plots and the
terminal table show that kind's numbers and no other's; a report.json from before schema
3 gets its kind inferred once, at load."""

from __future__ import annotations

import json

import pytest

from potstill.evaluation.report import Report, build_report, summary_table, write_report
from potstill.evaluation.report.format import headline
from potstill.evaluation.report.schema import KINDS
from tests.evaluation.report.numbers import DATA, RECIPE, RUN, three_models

LABELS = ["positive", "negative"]
CLASSIFIED = {
    "accuracy": 0.8,
    "f1": 0.79,
    "params": 22_000_000,
    "examples_per_second": {"1": 50.0},
    "confusion": [[40, 10], [10, 40]],
}
# Accuracy and a confusion matrix on a reasoning model: only `kind` may decide the views.
REASONED = {**CLASSIFIED, "answered": 0.9, "mean_answer_tokens": 40.0}


def report_of(kind: str) -> Report:
    """A small report of `kind`, with numbers the other kinds' views would pick up."""
    models = {
        "lm": three_models(),
        "classify": {"teacher": {**CLASSIFIED, "accuracy": 0.7}, "student-full": CLASSIFIED},
        "reason": {"teacher": {**REASONED, "accuracy": 0.7}, "student": REASONED},
        "context": {
            "teacher": {"params": 1_000},
            "base": {"params": 1_000, "agreement": {"top1": 0.4, "kl": 1.2}},
            "student": {"params": 1_000, "agreement": {"top1": 0.8, "kl": 0.3}},
        },
    }[kind]
    recipe = {"lm": RECIPE, "classify": {"task": "classify", "labels": LABELS}}
    return build_report(
        kind=kind,
        run=RUN,
        data=DATA,
        recipe=recipe.get(kind, {"labels": LABELS}),
        models=models,
    )


@pytest.fixture(params=KINDS)
def rendered(request, tmp_path) -> tuple[str, str, str, dict]:
    """(kind, report.md, report.html, written paths) of a report of each kind."""
    report = report_of(request.param)
    paths = write_report(tmp_path, report)
    return request.param, paths["report.md"].read_text(), paths["report.html"].read_text(), paths


def test_markdown_and_html_show_only_their_kinds_table(rendered):
    kind, markdown, html, paths = rendered
    for text in (markdown, html):
        assert ("macro-F1" in text) == (kind == "classify")
        assert ("perplexity" in text) == (kind in ("lm", "context"))
        assert ("exact match" in text) == (kind == "reason")
    assert ("plots/confusion.png" in paths) == (kind == "classify")
    assert ("| teacher | 100.0M | 400 | 10.00 |" in markdown) == (kind == "lm")  # perplexity
    assert ('<figure id="confusion"' in html) == (kind == "classify")


@pytest.mark.parametrize(
    ("kind", "first", "columns"),
    [
        ("lm", "gap closed", ["model", "params", "perplexity", "tokens/s"]),
        ("classify", "best student", ["model", "params", "accuracy", "macro-F1", "examples/s"]),
        ("reason", "student vs teacher", ["model", "params", "accuracy", "answered"]),
        ("context", "agreement with the prompted teacher", ["model", "params", "top-1"]),
    ],
)
def test_headline_and_terminal_table_follow_the_kind(kind, first, columns):
    report = report_of(kind)
    assert headline(report)[0][0] == first
    assert summary_table(report).splitlines()[0].split()[: len(columns)] == columns


@pytest.mark.parametrize("kind", KINDS)
def test_a_schema_2_report_gets_the_kind_the_views_guessed(tmp_path, kind):
    """Schema 2 had no `kind`: the views guessed it from the recipe's task and from
    whether any model had an accuracy. Report.load makes that guess once."""
    report = report_of(kind)
    raw = json.loads(report.model_dump_json())
    del raw["kind"]
    raw["schema_version"] = 2
    raw["recipe"]["task"] = {
        "lm": None,
        "classify": "classify",
        "reason": "chain-of-thought distillation",
        "context": "context distillation",
    }[kind]
    path = tmp_path / "report.json"
    path.write_text(json.dumps(raw))
    loaded = Report.load(path)
    assert loaded.kind == kind and loaded.schema_version == 2
    assert loaded.model_copy(update={"recipe": report.recipe, "schema_version": 3}) == report


def test_a_current_report_without_a_kind_is_refused(tmp_path):
    raw = json.loads(report_of("lm").model_dump_json())
    del raw["kind"]
    path = tmp_path / "report.json"
    path.write_text(json.dumps(raw))
    with pytest.raises(ValueError, match="kind"):
        Report.load(path)
