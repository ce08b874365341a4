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


def _floor_report(teacher: float, majority: float, student: float, **recipe) -> Report:
    """A classify report with a ``majority`` row and hand-set accuracies."""
    models = {
        "teacher": _model(teacher, 500_000_000, {"1": 4.0, "8": 5.0}),
        "student-full": _model(student, 22_000_000, {"1": 100.0}, agreement={"top1": 0.6}),
        "majority": {"accuracy": majority, "f1": 0.1, "ref": "always 'politics'"},
    }
    return build_report(
        kind="classify",
        run={"name": "news"},
        data={"name": "test"},
        recipe={
            "task": "classify",
            "labels": [f"topic{i}" for i in range(8)],
            "train_texts": 200,
            "steps": 60,
            "batch_size": 8,
            "calibrate": "content_free",
            "majority": {"label": "politics", "from": "train gold labels"},
            **recipe,
        },
        models=models,
    )


def test_a_teacher_no_better_than_the_constant_answer_is_said_first():
    lines = headline(_floor_report(teacher=0.32, majority=0.65, student=0.30))
    label, value, sentence = lines[0]
    assert label == "teacher vs a constant answer" and value == "32.0% vs 65.0%"
    assert "zero-shot accuracy 32.0%" in sentence
    assert "not above always answering 'politics' (65.0%, the commonest of the train gold" in (
        sentence
    )
    assert "task.examples, or task.shots" in sentence and "a stronger teacher" in sentence
    assert "task.calibrate: prior (this run: content_free)" in sentence
    # A teacher above the floor has no such line.
    above = headline(_floor_report(teacher=0.70, majority=0.65, student=0.71))
    assert "teacher vs a constant answer" not in {label for label, _, _ in above}


def test_the_majority_row_names_its_answer_and_its_labels():
    header, rows = metrics_table(_floor_report(teacher=0.32, majority=0.65, student=0.30))
    row = next(dict(zip(header, r, strict=True)) for r in rows if r[0].startswith("majority"))
    assert row["model"] == "majority ('politics', train gold labels)"
    assert row["accuracy"] == "65.0%" and row["params"] == "–"


def test_a_student_well_below_its_teacher_is_said_with_the_likely_causes():
    lines = {label: (v, s) for label, v, s in headline(_floor_report(0.80, 0.5, 0.70))}
    value, sentence = lines["students below teacher"]
    assert value == "10.0 points"
    assert "(student-full) scores 70.0%, 10.0 points below the teacher's 80.0%" in sentence
    assert "few train texts (200 for 8 labels" in sentence
    assert "low agreement with the teacher (60.0%" in sentence
    # 60 steps of 8 is 480 examples: more than one pass over 200 texts, not a cause.
    assert "less than one pass" not in sentence
    short = _floor_report(0.80, 0.5, 0.70, steps=10)
    assert (
        "less than one pass"
        in dict((label, s) for label, _, s in headline(short))["students below teacher"]
    )
    # Within 2 points, nothing is said.
    close = {label for label, _, _ in headline(_floor_report(0.80, 0.5, 0.785))}
    assert "students below teacher" not in close
