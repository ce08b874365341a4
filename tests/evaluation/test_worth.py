"""The break-even on known numbers: the arithmetic, the student that is not faster, and
the arguments refused."""

from __future__ import annotations

import math

import pytest

from potstill.evaluation.worth import (
    calls_to_repay,
    generation_break_even,
    seconds_saved_per_call,
)


def test_known_numbers():
    # 100 s of distillation; 1/10 − 1/50 = 0.08 s saved per token: repaid after 1,250.
    assert seconds_saved_per_call(10.0, 50.0) == pytest.approx(0.08)
    assert calls_to_repay(100.0, 10.0, 50.0) == pytest.approx(1250.0)
    assert calls_to_repay(0.0, 10.0, 50.0) == 0.0
    assert calls_to_repay(366.0 + 1200.0, 21.3, 52.8) == pytest.approx(
        1566.0 / (1 / 21.3 - 1 / 52.8)
    )


@pytest.mark.parametrize("student_rate", [10.0, 4.0])
def test_a_student_not_faster_never_repays(student_rate):
    assert seconds_saved_per_call(10.0, student_rate) <= 0
    assert calls_to_repay(100.0, 10.0, student_rate) is None


@pytest.mark.parametrize(
    ("distill", "teacher", "student", "message"),
    [
        (100.0, 0.0, 50.0, "teacher_per_second"),
        (100.0, -10.0, 50.0, "teacher_per_second"),
        (100.0, 10.0, 0.0, "student_per_second"),
        (100.0, 10.0, -50.0, "student_per_second"),
        (100.0, math.nan, 50.0, "teacher_per_second"),
        (100.0, 10.0, math.inf, "student_per_second"),
        (100.0, 10.0, None, "student_per_second"),
        (-1.0, 10.0, 50.0, "distill_seconds"),
        (math.nan, 10.0, 50.0, "distill_seconds"),
        ("100", 10.0, 50.0, "distill_seconds"),
    ],
)
def test_bad_arguments_are_refused(distill, teacher, student, message):
    with pytest.raises(ValueError, match=message):
        calls_to_repay(distill, teacher, student)


def entries(teacher_rate=10.0, student_rate=50.0, train_seconds=60.0) -> dict[str, dict]:
    return {
        "teacher": {"tokens_per_second": teacher_rate},
        "student": {"tokens_per_second": student_rate, "train_seconds": train_seconds},
        "baseline": {"tokens_per_second": 55.0, "train_seconds": 500.0},
    }


def test_the_report_section_from_measured_entries():
    section = generation_break_even(entries(), teach_seconds=40.0)
    assert section == {
        "student": "student",
        "unit": "generated tokens",
        "basis": "teaching 40 s + training the student 60 s; serving is batch-1 greedy "
        "generation on this machine",
        "distill_seconds": 100.0,
        "teacher_seconds_per_1k": pytest.approx(100.0),
        "student_seconds_per_1k": pytest.approx(20.0),
        "calls_to_repay": pytest.approx(1250.0),
    }
    slower = generation_break_even(entries(student_rate=8.0), teach_seconds=40.0)
    assert slower["calls_to_repay"] is None and slower["distill_seconds"] == 100.0


@pytest.mark.parametrize(
    "models",
    [
        {k: v for k, v in entries().items() if k != "teacher"},
        {k: v for k, v in entries().items() if k != "student"},
        entries(teacher_rate=None),
        entries(student_rate=0.0),
        entries(train_seconds=None),
    ],
)
def test_the_report_section_is_none_without_its_numbers(models):
    assert generation_break_even(models, teach_seconds=40.0) is None


def test_the_report_section_refuses_negative_teach_seconds():
    with pytest.raises(ValueError, match="teach_seconds"):
        generation_break_even(entries(), teach_seconds=-1.0)
