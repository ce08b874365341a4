"""write_report and the text views (report.md, the terminal table) on hand-made numbers."""

from __future__ import annotations

import pytest

from potstill.evaluation.report import Report, build_report, summary_table, write_report
from potstill.evaluation.report.format import details, headline, metrics_table
from tests.evaluation.report.numbers import DATA, RECIPE, RUN, entry, three_models


@pytest.mark.parametrize("missing", [("baseline",), ("teacher",), ("teacher", "baseline")])
def test_missing_teacher_or_baseline(tmp_path, missing):
    models = {k: v for k, v in three_models().items() if k not in missing}
    report = build_report(kind="lm", run=RUN, data=DATA, recipe=RECIPE, models=models)
    assert report.summary.gap_closed is None
    if "teacher" in missing:
        assert report.summary.student_params_fraction is None
    else:
        assert report.summary.student_params_fraction == pytest.approx(0.25)
    paths = write_report(tmp_path, report)
    markdown = paths["report.md"].read_text()
    assert "| student | 25.0M | 100 | 20.00 | 52.0% | 0.700 | 80.0 |" in markdown
    assert "- **gap closed: –.** Gap closed is not known" in markdown
    rows = [line.split() for line in summary_table(report).splitlines()]
    assert ["student", "25.0M", "20.00", "80.0"] in rows


def test_any_models_no_roles(tmp_path):
    models = {"my-model": entry(1_000, 55.0, None), "other|model": entry(2_000, None, 3.0)}
    report = build_report(kind="lm", run={"name": "eval"}, data={}, recipe={}, models=models)
    assert all(value is None for value in report.summary.model_dump().values())
    assert [label for label, _, _ in headline(report)] == ["perplexity my-model / other|model"]
    paths = write_report(tmp_path, report)
    markdown = paths["report.md"].read_text()
    assert "| my-model | 1.0K | 0.00 | 55.00 | – | – | – |" in markdown
    assert "| other\\|model | 2.0K | 0.01 | – | – | – | 3.0 |" in markdown
    assert "plots/quality_vs_size.png" in paths  # my-model has params and perplexity
    assert "plots/quality_vs_speed.png" not in paths  # nobody has both speed and perplexity
    assert "plots/training_curves.png" not in paths  # no curves given
    assert Report.load(paths["report.json"]) == report


def test_write_report_files(tmp_path):
    report = build_report(kind="lm", run=RUN, data=DATA, recipe=RECIPE, models=three_models())
    curves = {
        "student": [
            {"step": s, "loss": 3.0 - s / 100, "cross_entropy": 3.2 - s / 90} for s in range(50)
        ],
        "baseline": [{"step": s, "loss": 3.1 - s / 120} for s in range(50)],
    }
    run_dir = tmp_path / "runs" / "tiny"
    paths = write_report(run_dir, report, curves)
    assert paths == {
        key: run_dir / key
        for key in (
            "plots/training_curves.png",
            "plots/quality_vs_size.png",
            "plots/quality_vs_speed.png",
            "report.json",
            "report.md",
            "report.html",
        )
    }
    for path in paths.values():
        assert path.is_file() and path.stat().st_size > 0
        if path.suffix == ".png":
            assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    leftovers = [p for p in run_dir.rglob("*") if p.name.endswith(".tmp")]
    assert not leftovers
    markdown = paths["report.md"].read_text()
    assert markdown.endswith(
        "## Plots\n\n"
        "![training curves](plots/training_curves.png)\n"
        "![quality vs size](plots/quality_vs_size.png)\n"
        "![quality vs speed](plots/quality_vs_speed.png)\n"
    )


def test_markdown_has_the_table_and_the_headline(tmp_path):
    report = build_report(kind="lm", run=RUN, data=DATA, recipe=RECIPE, models=three_models())
    report.created = "2025-01-01T00:00:00+00:00"
    markdown = write_report(tmp_path, report)["report.md"].read_text()
    assert markdown.startswith(
        "# potstill report: tiny\n\n"
        f"_potstill {report.potstill_version} · 2025-01-01T00:00:00+00:00 · device cpu · "
        "12 s wall_\n"
    )
    header = (
        "| model | params | size (MB) | perplexity | top-1 agreement | KL (nats/token) | tokens/s |"
    )
    assert header in markdown
    assert "| teacher | 100.0M | 400 | 10.00 | – | – | 20.0 |" in markdown
    assert "| student | 25.0M | 100 | 20.00 | 52.0% | 0.700 | 80.0 |" in markdown
    assert "| baseline | 25.0M | 100 | 40.00 | 31.0% | 1.900 | 80.0 |" in markdown
    assert "closed 50% of the log-perplexity gap" in markdown
    assert "- **student size: 25% of teacher.** The student has 25.0M parameters, " in markdown
    assert "- **speed: 4.0× teacher.** The student generates 80.0 tokens/s" in markdown
    assert "- **loss**: 0.5 × forward_kl (temperature=2.0) + 0.5 × cross_entropy" in markdown
    assert "- **train_tokens**: 120,000" in markdown


def test_details_show_known_fields_in_order():
    report = build_report(
        kind="lm", run={"name": "ev", "device": "cpu"}, data=DATA, recipe={}, models={}
    )
    assert details(report) == [
        (
            "Data",
            [
                ("name", "shakespeare"),
                ("train_tokens", "120,000"),
                ("heldout_tokens", "6000"),
                ("split", "5%"),
            ],
        ),
        ("Recipe", []),
        ("Run", [("name", "ev"), ("device", "cpu")]),
    ]


def test_metrics_table_rows():
    report = build_report(kind="lm", run=RUN, data=DATA, recipe=RECIPE, models=three_models())
    header, rows = metrics_table(report)
    assert len(header) == 7
    assert rows[0] == ["teacher", "100.0M", "400", "10.00", "–", "–", "20.0"]
    assert rows[2] == ["baseline", "25.0M", "100", "40.00", "31.0%", "1.900", "80.0"]


def test_summary_table_is_fixed_width():
    report = build_report(kind="lm", run=RUN, data=DATA, recipe=RECIPE, models=three_models())
    lines = summary_table(report).splitlines()
    table, rest = lines[:4], lines[4:]
    assert table[0].split() == ["model", "params", "perplexity", "tokens/s"]
    assert [line.split()[0] for line in table[1:]] == ["teacher", "student", "baseline"]
    assert len({len(line) for line in table}) == 1
    assert table[2].split() == ["student", "25.0M", "20.00", "80.0"]
    assert rest == ["gap closed: 50%"]
