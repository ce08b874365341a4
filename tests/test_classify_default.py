"""The shipped classification task, for real (slow): the bundled Qwen2.5-Coder labels the
Pang-Lee polarity sentences and MiniLM students learn them."""

from __future__ import annotations

from pathlib import Path

import pytest

from potstill.evaluation.report import Report
from tests.conftest import run_cli

RECIPE = Path(__file__).parent.parent / "recipes" / "classify-polarity.yaml"


@pytest.mark.slow
def test_the_shipped_polarity_task_runs(tmp_path, capsys):
    code, out, err = run_cli(
        "run", str(RECIPE), f"runs_dir={tmp_path}", "train.steps=10", capsys=capsys
    )
    assert code == 0, err
    report = Report.load(tmp_path / "classify-polarity" / "report.json")
    assert set(report.models) == {
        "teacher",
        "student-full",
        "student-lora",
        "student-pissa",
        "baseline",
        "gold",
        "majority",  # the constant answer: a reference row, not a model
    }
    teacher = report.models["teacher"]
    assert 0.65 <= teacher.accuracy <= 0.85  # Qwen2.5-Coder-0.5B, calibrated: 75% measured
    for name, entry in report.models.items():
        assert 0.0 <= entry.accuracy <= 1.0, name
        assert name == "majority" or entry.params > 0, name
    assert report.models["majority"].accuracy < teacher.accuracy
    assert report.models["student-full"].params < teacher.params / 5
    assert report.recipe["train_texts"] == 100 and "accuracy" in out
    assert report.break_even.teacher_seconds_per_1k > report.break_even.student_seconds_per_1k
