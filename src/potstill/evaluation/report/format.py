"""What the report says, as text: the headline findings, the metrics table and the
details. The markdown and HTML views read these, so they never disagree; each picks its
text by `report.kind` (the other kinds' text is in `kinds`), never by what the numbers
look like."""

from __future__ import annotations

import json
from typing import Any

from potstill.evaluation.report.caveats import (
    broken_line,
    budget_cut,
    budget_line,
    gap_caveat,
    rollback_line,
    skipped_line,
)
from potstill.evaluation.report.kinds import (
    CLASSIFICATION_NOTE,
    REASONING_NOTE,
    break_even_line,
    classification_headline,
    classification_table,
    context_headline,
    reasoning_headline,
    reasoning_table,
)
from potstill.evaluation.report.schema import Agreement, ModelEntry, Report
from potstill.evaluation.report.units import (
    DASH,
    fmt_megabytes,
    fmt_number,
    fmt_params,
    fmt_percent,
    fmt_perplexity,
    fmt_rate,
)

METRICS_NOTE = (
    "Perplexity is on the held-out split; top-1 agreement and KL(teacher ‖ model) are "
    "measured against the teacher on the same tokens; tokens/s is batch-1 greedy "
    "generation on this machine."
)
ECE_NOTE = (
    " ECE is the expected calibration error of the next-token prediction: the top "
    "probability against how often the top token is the true one, in 15 equal-width bins."
)


def metrics_note(report: Report) -> str:
    """The sentence under the metrics table."""
    if report.kind == "reason":
        return REASONING_NOTE
    if report.kind == "classify":
        return CLASSIFICATION_NOTE
    return METRICS_NOTE + (ECE_NOTE if has_ece(report) else "")


def has_ece(report: Report) -> bool:
    """True when some model has an expected calibration error."""
    return any(entry.ece is not None for entry in report.models.values())


def title(report: Report) -> str:
    return f"potstill report: {report.run.name}" if report.run.name else "potstill report"


def subtitle(report: Report) -> str:
    """Version, time, device and wall time on one line."""
    parts = [f"potstill {report.potstill_version}", report.created]
    if report.run.device:
        parts.append(f"device {report.run.device}")
    if report.run.wall_seconds is not None:
        parts.append(f"{report.run.wall_seconds:.0f} s wall")
    return " · ".join(part for part in parts if part)


def headline(report: Report) -> list[tuple[str, str, str]]:
    """The findings in a few (label, value, sentence) triples, most important first. A
    time budget that cut training to under half its steps comes first in every kind;
    one that did not, last."""
    if report.kind == "lm":
        return lm_headline(report)
    kinds = {
        "reason": reasoning_headline,
        "classify": classification_headline,
        "context": context_headline,
    }
    lines = kinds[report.kind](report)
    budget = budget_line(report)
    if budget is None:
        return lines
    if budget_cut(report) is not None:
        return [("time budget", *budget), *lines]
    return [*lines, ("time budget", *budget)]


def lm_headline(report: Report) -> list[tuple[str, str, str]]:
    """The findings of a language-model run. What makes its comparison unfair comes
    first: a broken student or baseline (then no gap closed is given at all), a time
    budget that cut training to under half its steps (then the gap closed carries that)."""
    models, summary = report.models, report.summary
    teacher, student = models.get("teacher", ModelEntry()), models.get("student", ModelEntry())
    lines = []
    broken = broken_line(report)
    cut = budget_line(report) if budget_cut(report) is not None else None
    if broken is not None:
        lines.append(("training broke", *broken))
    if cut is not None:
        lines.append(("time budget", *cut))
    if broken is None:
        lines += gap_line(report)
    fraction = summary.student_params_fraction
    if fraction is not None:
        lines.append(
            (
                "student size",
                f"{fmt_percent(fraction, digits=0)} of teacher",
                f"The student has {fmt_params(student.params)} parameters, "
                f"{fmt_percent(fraction, digits=1)} of the teacher's "
                f"{fmt_params(teacher.params)}.",
            )
        )
    named = [(role, models[role]) for role in ("student", "baseline", "teacher") if role in models]
    if not named:
        named = list(models.items())
    if any(entry.perplexity is not None for _, entry in named):
        value = " / ".join(fmt_perplexity(entry.perplexity) for _, entry in named)
        parts = ", ".join(f"{name} {fmt_perplexity(entry.perplexity)}" for name, entry in named)
        lines.append(
            (
                "perplexity " + " / ".join(name for name, _ in named),
                value,
                f"Held-out perplexity (lower is better): {parts}.",
            )
        )
    speedup = summary.student_speedup
    if speedup is not None:
        lines.append(
            (
                "speed",
                f"{speedup:.1f}× teacher",
                f"The student generates {fmt_rate(student.tokens_per_second)} tokens/s, "
                f"{speedup:.1f}× the teacher's {fmt_rate(teacher.tokens_per_second)} "
                "(batch 1, greedy, this machine).",
            )
        )
    repay = break_even_line(report)
    if repay is not None:
        lines.append(("break-even", *repay))
    calibration = calibration_line(named)
    if calibration is not None:
        lines.append(("calibration (ECE) " + calibration[0], *calibration[1:]))
    budget = budget_line(report)
    if budget is not None and cut is None:
        lines.append(("time budget", *budget))
    skipped = skipped_line(report)
    if skipped is not None:
        lines.append(("skipped updates", *skipped))
    rolled = rollback_line(report)
    if rolled is not None:
        lines.append(("rollbacks", *rolled))
    return lines


def gap_line(report: Report) -> list[tuple[str, str, str]]:
    """The gap closed, with the budget's caveat beside it when training was cut short; a
    dash when a number it needs is missing. Callers leave it out when a run broke."""
    if report.summary.gap_closed is None:
        if "student" not in report.models:
            return []
        return [
            (
                "gap closed",
                DASH,
                "Gap closed is not known: it needs the perplexity of the teacher, the student "
                "and the baseline, and a teacher that differs from the baseline.",
            )
        ]
    gap = fmt_percent(report.summary.gap_closed, digits=0)
    caveat = gap_caveat(report)
    return [
        (
            "gap closed",
            gap if caveat is None else f"{gap} ({caveat})",
            f"Distillation closed {gap} of the log-perplexity gap "
            "between the no-distillation baseline and the teacher "
            "(100% = as good as the teacher, 0% = no better than the baseline)"
            + ("." if caveat is None else f", {caveat}."),
        )
    ]


def calibration_line(named: list[tuple[str, ModelEntry]]) -> tuple[str, str, str] | None:
    """(names, value, sentence) on the next-token ECE of the models that have one."""
    known = [(name, entry.ece) for name, entry in named if entry.ece is not None]
    if not known:
        return None
    parts = ", ".join(f"{name} {fmt_number(ece, digits=3)}" for name, ece in known)
    return (
        " / ".join(name for name, _ in known),
        " / ".join(fmt_number(ece, digits=3) for _, ece in known),
        "Expected calibration error of the next-token prediction (0 = the top probability "
        f"is exactly how often the top token is right; lower is better): {parts}.",
    )


def metrics_table(report: Report) -> tuple[list[str], list[list[str]]]:
    """The per-model table as formatted strings: (header, rows)."""
    if report.kind == "reason":
        return reasoning_table(report)
    if report.kind == "classify":
        return classification_table(report)
    header = [
        "model",
        "params",
        "size (MB)",
        "perplexity",
        "top-1 agreement",
        "KL (nats/token)",
        "tokens/s",
    ]
    rows = []
    for name, entry in report.models.items():
        agreement = entry.agreement or Agreement()
        rows.append(
            [
                name,
                fmt_params(entry.params),
                fmt_megabytes(entry.size_bytes),
                fmt_perplexity(entry.perplexity),
                fmt_percent(agreement.top1, digits=1),
                fmt_number(agreement.kl, digits=3),
                fmt_rate(entry.tokens_per_second),
            ]
        )
    if has_ece(report):
        header.insert(6, "ECE")
        for row, entry in zip(rows, report.models.values(), strict=True):
            row.insert(6, fmt_number(entry.ece, digits=3))
    return header, rows


def details(report: Report) -> list[tuple[str, list[tuple[str, str]]]]:
    """The data, recipe and run sections as (section, [(key, value)]) for display.

    Typed sections show the fields that are known; the recipe shows every key it has.
    """
    sections = {
        "Data": report.data.model_dump(exclude_none=True),
        "Recipe": report.recipe,
        "Run": report.run.model_dump(exclude_none=True),
    }
    if report.break_even is not None:
        sections["Break-even"] = report.break_even.model_dump(exclude_none=True)
    return [
        (section, [(str(key), _describe(key, value)) for key, value in content.items()])
        for section, content in sections.items()
    ]


def _describe(key: str, value: Any) -> str:
    """One readable line for a data/recipe/run value; loss terms read as a sum."""
    if key == "loss" and isinstance(value, list) and all(isinstance(t, dict) for t in value):
        terms = []
        for term in value:
            text = f"{term.get('weight', 1)} × {term.get('loss', term.get('name', '?'))}"
            extra = {k: v for k, v in term.items() if k not in ("loss", "name", "weight")}
            if extra:
                text += " (" + ", ".join(f"{k}={v}" for k, v in extra.items()) + ")"
            terms.append(text)
        return " + ".join(terms) if terms else DASH
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10_000:
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.6g}"  # measured seconds and rates: no 17-digit noise
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return DASH if value is None else str(value)
