"""A language-model report that says whether distilling was worth it, on hand-made numbers:
the break-even, the calibration, and the student's retention profile (by token frequency,
worst disagreements) in report.json, report.md, report.html and the terminal table."""

from __future__ import annotations

import json

import pytest

from potstill.evaluation.report import Report, build_report, summary_table, write_report
from potstill.evaluation.report.format import headline, metrics_note, metrics_table
from potstill.evaluation.report.retention import band_table, worst_table
from potstill.evaluation.worth import generation_break_even
from tests.evaluation.report.numbers import DATA, RECIPE, RUN, three_models

BAND_NAMES = ["1–100", "101–1,000", "1,001–10,000", ">10,000 or unseen"]


def bands(losses: list[float], top1: list[float] | None) -> list[dict]:
    shares = [0.55, 0.3, 0.1, 0.05]
    return [
        {
            "band": name,
            "share": share,
            "tokens": int(share * 1000),
            "loss": loss,
            "top1": None if top1 is None else top1[i],
        }
        for i, (name, share, loss) in enumerate(zip(BAND_NAMES, shares, losses, strict=True))
    ]


WORST = [
    {
        "context": "To be, or not\n",
        "target": " to",
        "teacher_top": " to",
        "model_top": "|",
        "kl": 4.25,
    },
    {"context": "<b>bold</b>", "target": " &", "teacher_top": " &", "model_top": ",", "kl": 3.5},
]


def lm_report(student_rate: float = 50.0) -> Report:
    """Teacher 10 tok/s, student ``student_rate``; 40 s teaching + 60 s training."""
    models = three_models()
    models["teacher"].update(tokens_per_second=10.0, ece=0.021)
    models["teacher"]["frequency_bands"] = bands([1.5, 3.0, 4.5, 6.0], None)
    models["student"].update(tokens_per_second=student_rate, train_seconds=60.0, ece=0.034)
    models["student"]["frequency_bands"] = bands([2.0, 3.9, 5.8, 7.7], [0.8, 0.6, 0.4, 0.2])
    models["student"]["worst_disagreements"] = WORST
    models["baseline"].update(ece=0.052)
    models["baseline"]["frequency_bands"] = bands([2.2, 4.3, 6.4, 8.5], [0.7, 0.5, 0.3, 0.1])
    return build_report(
        kind="lm",
        run=RUN,
        data=DATA,
        recipe=RECIPE,
        models=models,
        break_even=generation_break_even(models, teach_seconds=40.0),
    )


def test_the_headline_says_when_the_student_has_paid_for_itself():
    lines = {label: (value, sentence) for label, value, sentence in headline(lm_report())}
    value, sentence = lines["break-even"]
    # 100 s of distillation, 1/10 − 1/50 = 0.08 s saved per generated token.
    assert value == "1,250 generated tokens"
    assert "Distilling took 100 s (teaching 40 s + training the student 60 s;" in sentence
    assert "100.0 s per 1,000 generated tokens and student 20.0 s" in sentence
    assert "paid for itself after 1,250 generated tokens" in sentence
    assert summary_table(lm_report()).splitlines()[-1] == "break-even: 1,250 generated tokens"


def test_a_student_that_is_not_faster_is_said_to_be_so():
    report = lm_report(student_rate=8.0)
    assert report.break_even.calls_to_repay is None
    lines = {label: (value, sentence) for label, value, sentence in headline(report)}
    value, sentence = lines["break-even"]
    assert value == "never" and "the student is not faster and never repays it" in sentence
    raw = json.loads(report.model_dump_json())
    assert raw["break_even"]["calls_to_repay"] is None
    assert raw["break_even"]["unit"] == "generated tokens"


def test_calibration_is_in_the_headline_and_the_table():
    report = lm_report()
    lines = {label: value for label, value, _ in headline(report)}
    assert lines["calibration (ECE) student / baseline / teacher"] == "0.034 / 0.052 / 0.021"
    header, rows = metrics_table(report)
    assert header[6] == "ECE" and len(header) == 8
    assert [row[6] for row in rows] == ["0.021", "0.034", "0.052"]
    assert "ECE is the expected calibration error" in metrics_note(report)


def test_the_band_table_has_share_agreement_and_every_nll():
    table = band_table(lm_report())
    assert table.header == [
        "true next token's frequency rank (train)",
        "share of positions",
        "student top-1 agreement",
        "NLL teacher",
        "NLL student",
        "NLL baseline",
    ]
    assert table.rows[0] == ["1–100", "55.0%", "80.0%", "1.50", "2.00", "2.20"]
    assert table.rows[3] == [">10,000 or unseen", "5.0%", "20.0%", "6.00", "7.70", "8.50"]
    models = three_models()
    models["student"]["frequency_bands"] = bands([2.0] * 4, [0.5] * 4)
    no_baseline = build_report(kind="lm", run=RUN, data=DATA, recipe=RECIPE, models=models)
    assert band_table(no_baseline).header[-1] == "NLL student"  # only the student has bands
    assert band_table(build_report(kind="lm", run=RUN, data=DATA, recipe=RECIPE, models={})) is None


def test_the_worst_table_shows_the_text_visibly():
    table = worst_table(lm_report())
    assert table.rows[0] == ['"To be, or not\\n"', '" to"', '"|"', '" to"', "4.25"]
    assert table.text_columns == 4


def test_markdown_and_html_show_the_retention_profile(tmp_path):
    report = lm_report()
    paths = write_report(tmp_path, report)
    assert Report.load(paths["report.json"]) == report
    markdown = paths["report.md"].read_text()
    assert "## Retention by token frequency" in markdown
    assert "| 1–100 | 55.0% | 80.0% | 1.50 | 2.00 | 2.20 |" in markdown
    assert "## Where the student disagrees most" in markdown
    assert '| "To be, or not\\n" | " to" | "\\|" | " to" | 4.25 |' in markdown
    assert "|---|---|---|---|---:|" in markdown
    assert "- **break-even: 1,250 generated tokens.**" in markdown

    page = paths["report.html"].read_text()
    assert '<table id="retention-by-token-frequency">' in page
    assert '<table id="where-the-student-disagrees-most">' in page
    assert '<td class="text">&quot;&lt;b&gt;bold&lt;/b&gt;&quot;</td>' in page
    assert "<b>bold" not in page


@pytest.mark.parametrize("role", ["student", "teacher"])
def test_reports_without_the_new_numbers_render_as_before(tmp_path, role):
    models = {k: v for k, v in three_models().items() if k != role}
    report = build_report(kind="lm", run=RUN, data=DATA, recipe=RECIPE, models=models)
    markdown = write_report(tmp_path, report)["report.md"].read_text()
    assert "Retention" not in markdown and "break-even" not in markdown
    assert "ECE" not in markdown
