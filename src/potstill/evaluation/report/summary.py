"""The report's summary: what the student kept of the teacher, and what it gained over the
baseline trained without distillation."""

from __future__ import annotations

import math
from collections.abc import Mapping

from potstill.evaluation.report.schema import ROLES, ModelEntry, Summary


def gap_closed(
    teacher_perplexity: float | None,
    student_perplexity: float | None,
    baseline_perplexity: float | None,
) -> float | None:
    """Share of the log-perplexity gap between baseline and teacher that the student closed.

    (ln ppl_baseline − ln ppl_student) / (ln ppl_baseline − ln ppl_teacher): 1 means the
    student matches the teacher, 0 means it is no better than the baseline; it can be
    negative or above 1. None when a perplexity is missing or the gap is zero.

    >>> round(gap_closed(10.0, 20.0, 40.0), 3)
    0.5
    >>> gap_closed(10.0, 20.0, None) is None
    True
    """
    values = (teacher_perplexity, student_perplexity, baseline_perplexity)
    if any(not _positive(v) for v in values):
        return None
    log_teacher, log_student, log_baseline = (math.log(v) for v in values)
    gap = log_baseline - log_teacher
    if gap == 0:
        return None
    return (log_baseline - log_student) / gap


def summarize(models: Mapping[str, ModelEntry]) -> Summary:
    """Student-against-teacher and student-against-baseline ratios (None where unknown).

    The gap closed is None when the student's or the baseline's training broke
    (`broken_runs`): it would measure the breakage, not the distillation.
    """
    missing = ModelEntry()
    teacher, student, baseline = (models.get(role, missing) for role in ROLES)
    closed = gap_closed(teacher.perplexity, student.perplexity, baseline.perplexity)
    return Summary(
        gap_closed=None if broken_runs(models) else closed,
        student_params_fraction=_ratio(student.params, teacher.params),
        student_size_fraction=_ratio(student.size_bytes, teacher.size_bytes),
        student_vs_baseline_perplexity=_ratio(student.perplexity, baseline.perplexity),
        student_vs_teacher_perplexity=_ratio(student.perplexity, teacher.perplexity),
        student_speedup=_ratio(student.tokens_per_second, teacher.tokens_per_second),
    )


def broken_runs(models: Mapping[str, ModelEntry]) -> dict[str, str]:
    """The student and baseline whose training did not end healthy: role -> why."""
    return {
        role: entry.training.reason
        for role in ("student", "baseline")
        if (entry := models.get(role)) is not None
        and entry.training is not None
        and entry.training.status != "ok"
    }


def _positive(value: float | None) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or not _positive(denominator):
        return None
    return numerator / denominator
