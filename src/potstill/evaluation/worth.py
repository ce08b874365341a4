"""Was the distillation worth it: the calls after which the student has paid for itself.

Distilling costs compute once (the teacher's pass, the student's training); every call
the student then serves instead of the teacher saves the difference of their times per
call. The break-even is the number of calls (generated tokens, texts classified) after
which the savings equal the cost.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any


def _number(value: Any) -> bool:
    """A finite int or float (not a bool)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _positive(value: Any) -> bool:
    return _number(value) and value > 0


def _check_rate(name: str, rate: float) -> None:
    if not _positive(rate):
        raise ValueError(f"{name} must be a finite number > 0 (calls per second), got {rate!r}")


def seconds_saved_per_call(teacher_per_second: float, student_per_second: float) -> float:
    """1/teacher − 1/student: the seconds one call costs less on the student (negative
    when the student is slower). Both rates are calls per second, > 0.

    >>> round(seconds_saved_per_call(10.0, 50.0), 6)
    0.08
    """
    _check_rate("teacher_per_second", teacher_per_second)
    _check_rate("student_per_second", student_per_second)
    return 1.0 / teacher_per_second - 1.0 / student_per_second


def calls_to_repay(
    distill_seconds: float, teacher_per_second: float, student_per_second: float
) -> float | None:
    """distill_seconds / (1/teacher − 1/student): the calls after which the student has
    saved as much time as distilling it took; None when it is not faster.

    >>> calls_to_repay(100.0, 10.0, 50.0)  # 0.08 s saved per call
    1250.0
    >>> calls_to_repay(100.0, 50.0, 50.0) is None
    True
    """
    if not _number(distill_seconds) or distill_seconds < 0:
        raise ValueError(f"distill_seconds must be a finite number >= 0, got {distill_seconds!r}")
    saving = seconds_saved_per_call(teacher_per_second, student_per_second)
    return distill_seconds / saving if saving > 0 else None


def generation_break_even(
    models: Mapping[str, Mapping[str, Any]],
    *,
    teach_seconds: float,
    student: str = "student",
) -> dict[str, Any] | None:
    """The report's ``break_even`` section of a causal-LM run, from measured numbers.

    ``models`` are the evaluated entries (``tokens_per_second``: batch-1 greedy generation;
    ``train_seconds`` of ``student``); the cost is ``teach_seconds`` (the teacher's pass
    into the cache, 0 when it ran live inside training) plus the student's training. None
    when the teacher, the student or one of those numbers is missing (or, for a speed,
    not above 0: nothing to compare).

    >>> models = {"teacher": {"tokens_per_second": 10.0},
    ...           "student": {"tokens_per_second": 50.0, "train_seconds": 60.0}}
    >>> generation_break_even(models, teach_seconds=40.0)["calls_to_repay"]
    1250.0
    """
    if not _number(teach_seconds) or teach_seconds < 0:
        raise ValueError(f"teach_seconds must be a finite number >= 0, got {teach_seconds!r}")
    teacher_entry, student_entry = models.get("teacher"), models.get(student)
    if teacher_entry is None or student_entry is None:
        return None
    teacher_rate = teacher_entry.get("tokens_per_second")
    student_rate = student_entry.get("tokens_per_second")
    train_seconds = student_entry.get("train_seconds")
    if not (_positive(teacher_rate) and _positive(student_rate)) or train_seconds is None:
        return None
    distill_seconds = teach_seconds + train_seconds
    repay = calls_to_repay(distill_seconds, teacher_rate, student_rate)
    return {
        "student": student,
        "unit": "generated tokens",
        "basis": (
            f"teaching {_seconds(teach_seconds)} + training the student "
            f"{_seconds(train_seconds)}; serving is batch-1 greedy generation on this machine"
        ),
        "distill_seconds": distill_seconds,
        "teacher_seconds_per_1k": 1000.0 / teacher_rate,
        "student_seconds_per_1k": 1000.0 / student_rate,
        "calls_to_repay": repay,
    }


def _seconds(seconds: float) -> str:
    """``366 s``, ``2.5 s``, ``0.035 s``: whole seconds once there are ten or more."""
    return f"{seconds:.0f} s" if abs(seconds) >= 10 else f"{seconds:.2g} s"
