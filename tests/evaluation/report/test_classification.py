"""The report of a classification run on hand-made numbers: the headline, the table, the
break-even, and the plots (confusion matrices, accuracy against size and speed)."""

from __future__ import annotations

import pytest

from potstill.evaluation.report import Report, build_report, write_report
from potstill.evaluation.report.format import headline, metrics_table
from potstill.evaluation.report.plots import make_plots

LABELS = ["positive", "negative"]


def _model(accuracy: float, params: int, rates: dict[str, float], **extra) -> dict:
    return {
        "accuracy": accuracy,
        "f1": accuracy - 0.01,
        "ece": 0.05,
        "params": params,
        "size_bytes": params * 4,
        "examples_per_second": rates,
        "confusion": [[40, 10], [12, 38]],
        "per_class_f1": [0.78, 0.76],
        **extra,
    }


def _report(student_rate: float = 100.0) -> Report:
    models = {
        "teacher": _model(0.75, 500_000_000, {"1": 4.0, "8": 5.0}),
        "student-full": _model(0.77, 22_000_000, {"1": student_rate, "32": 400.0}),
        "student-lora": _model(0.71, 22_000_000, {"1": student_rate, "32": 400.0}),
        "baseline": _model(0.73, 22_000_000, {"1": student_rate, "32": 400.0}),
    }
    call_saving = 1 / 4.0 - 1 / student_rate
    return build_report(
        kind="classify",
        run={"name": "polarity"},
        data={"name": "test"},
        recipe={"task": "classify", "labels": LABELS},
        models=models,
        break_even={
            "student": "student-full",
            "basis": "labelling at batch 8 + training; serving at batch 1",
            "distill_seconds": 60.0,
            "teacher_seconds_per_1k": 250.0,
            "student_seconds_per_1k": 1000 / student_rate,
            "calls_to_repay": 60.0 / call_saving if call_saving > 0 else None,
        },
    )


def test_the_headline_compares_the_best_student_with_the_teacher_and_the_baseline():
    lines = {label: (value, sentence) for label, value, sentence in headline(_report())}
    assert lines["best student"][0] == "77.0% vs 75.0%"
    assert (
        "(student-full)" in lines["best student"][1]
        and "2.0 points above" in lines["best student"][1]
    )
    assert lines["student size"][0] == "4.4% of teacher"
    assert lines["speed"][0] == "25× teacher"
    assert lines["soft vs hard labels"][0] == "+4.0 points"
    # 60 s of distillation, 0.25 - 0.01 s saved per text: repaid after 250 texts.
    assert lines["break-even"][0] == "250 texts"


def test_a_student_no_faster_than_the_teacher_never_repays():
    lines = {label: value for label, value, _ in headline(_report(student_rate=2.0))}
    assert lines["break-even"] == "never"


def test_the_table_has_size_both_speeds_and_no_perplexity():
    header, rows = metrics_table(_report())
    assert "size (MB)" in header and "perplexity" not in header
    by_name = {row[0]: dict(zip(header, row, strict=True)) for row in rows}
    assert by_name["teacher"]["examples/s (batched)"] == "5.0 @8"
    assert by_name["student-full"]["examples/s (batched)"] == "400.0 @32"
    assert by_name["student-full"]["size (MB)"] == "88.0"


def test_the_plots_show_accuracy_and_every_confusion_matrix(tmp_path):
    plots = {plot.name: plot for plot in make_plots(_report(), {})}
    assert set(plots) == {"quality_vs_size", "quality_vs_speed", "confusion"}
    assert "student-full: 22.0M params, accuracy 77.0%" in plots["quality_vs_size"].alt
    assert "teacher: 4.0 examples/s, accuracy 75.0%" in plots["quality_vs_speed"].alt
    assert "student-lora: 78 of 100 on the diagonal" in plots["confusion"].alt
    for plot in plots.values():
        assert plot.png.startswith(b"\x89PNG")
    paths = write_report(tmp_path, _report())
    assert "plots/confusion.png" in paths
    assert Report.load(paths["report.json"]).models["baseline"].confusion == [[40, 10], [12, 38]]


@pytest.mark.parametrize("labels", [None, "positive"])
def test_no_confusion_plot_without_the_label_names(labels):
    report = _report()
    report.recipe["labels"] = labels
    assert "confusion" not in {plot.name for plot in make_plots(report, {})}
