"""The report's continuations side by side: stored in report.json, shown as a table in
report.md and report.html, their text escaped."""

from __future__ import annotations

import json

from potstill.evaluation.report import SCHEMA_VERSION, Report, build_report, write_report
from potstill.evaluation.report.units import DASH
from tests.evaluation.report.numbers import DATA, RECIPE, RUN, three_models

SAMPLES = [
    {
        "prompt": "ROMEO:\nBut soft, what light",
        "continuations": {
            "baseline": " through | yonder",
            "teacher": " through yonder window breaks?",
            "student": '<script>alert("x")</script>',
        },
    },
    {"prompt": "JULIET:", "continuations": {"teacher": "\nO Romeo", "student": None}},
]


def report_with_samples(samples=SAMPLES) -> Report:
    return build_report(
        kind="lm", run=RUN, data=DATA, recipe=RECIPE, models=three_models(), samples=samples
    )


def test_samples_are_stored_in_report_json_within_schema_3(tmp_path):
    report = report_with_samples()
    paths = write_report(tmp_path, report)
    saved = json.loads(paths["report.json"].read_text())
    assert saved["schema_version"] == SCHEMA_VERSION == 3
    assert saved["samples"][0]["continuations"]["student"] == '<script>alert("x")</script>'
    assert Report.load(paths["report.json"]) == report
    # an older report.json without them still reads
    del saved["samples"]
    paths["report.json"].write_text(json.dumps(saved))
    assert Report.load(paths["report.json"]).samples is None


def test_markdown_and_html_show_the_continuations_side_by_side(tmp_path):
    paths = write_report(tmp_path, report_with_samples())
    markdown = paths["report.md"].read_text()
    assert "## Continuations of held-out prompts" in markdown
    # roles in order, one row per prompt, text as JSON strings ("|" escaped for the table)
    assert "| prompt | teacher | student | baseline |" in markdown
    assert (
        '| "ROMEO:\\nBut soft, what light" | " through yonder window breaks?" | '
        '"<script>alert(\\"x\\")</script>" | " through \\| yonder" |'
    ) in markdown
    assert f'| "JULIET:" | "\\nO Romeo" | {DASH} | {DASH} |' in markdown
    page = paths["report.html"].read_text()
    assert 'id="continuations-of-held-out-prompts"' in page
    assert "<script>alert" not in page
    assert "&quot;&lt;script&gt;alert(\\&quot;x\\&quot;)&lt;/script&gt;&quot;" in page


def test_no_samples_no_table(tmp_path):
    paths = write_report(tmp_path, report_with_samples(samples=None))
    assert "Continuations" not in paths["report.md"].read_text()
    assert "continuations-of" not in paths["report.html"].read_text()
