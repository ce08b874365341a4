"""What the report says, as text: the headline findings, the metrics table, the details,
and the number formats they share. The markdown, HTML and terminal views all read these,
so they never disagree; each picks its text by `report.kind`, never by what the numbers
look like."""

from __future__ import annotations

import json
from typing import Any

from potstill.evaluation.report.caveats import (
    RERUN_FULL,
    broken_line,
    budget_cut,
    budget_line,
    gap_caveat,
    skipped_line,
)
from potstill.evaluation.report.schema import Agreement, ModelEntry, Report

DASH = "–"
METRICS_NOTE = (
    "Perplexity is on the held-out split; top-1 agreement and KL(teacher ‖ model) are "
    "measured against the teacher on the same tokens; tokens/s is batch-1 greedy "
    "generation on this machine."
)
CLASSIFICATION_NOTE = (
    "Accuracy, macro-F1 and ECE (15 bins) are on the labelled test set; agreement is the "
    "share of test texts where the model's answer is the teacher's; examples/s is measured "
    "on this machine (the teacher scores every label's full token sequence)."
)


REASONING_NOTE = (
    "Accuracy is exact match on the held-out problems: each model answers greedily, its final "
    "answer is read from its reply and checked by the problem generator's scorer; problems/s "
    "is the batched generation rate on this machine."
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
    """The findings in a few (label, value, sentence) triples, most important first."""
    if report.kind == "reason":
        return reasoning_headline(report)
    if report.kind == "classify":
        return classification_headline(report)
    if report.kind == "context":
        return context_headline(report)
    return lm_headline(report)


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


def reasoning_headline(report: Report) -> list[tuple[str, str, str]]:
    """The findings of a chain-of-thought run: what the traces bought over the answers
    alone, the student against the teacher and itself before, and how many traces checked."""
    models = report.models
    student, answers = models.get("student"), models.get("answers")
    lines = []
    if student and answers and student.accuracy is not None and answers.accuracy is not None:
        gain = (student.accuracy - answers.accuracy) * 100
        lines.append(
            (
                "traces vs answers only",
                f"{gain:+.1f} points",
                f"Trained on the teacher's checked reasoning, the student solves "
                f"{fmt_percent(student.accuracy)} of the held-out problems; trained on the same "
                f"problems' final answers alone, {fmt_percent(answers.accuracy)}.",
            )
        )
    on_policy = models.get("on-policy")
    if student and on_policy and student.accuracy is not None and on_policy.accuracy is not None:
        settings = report.recipe.get("on_policy") or {}
        share = settings.get("fraction")
        lam = "" if share is None else f"λ = {share:g} of its batches"
        lines.append(
            (
                "on-policy vs off-policy",
                f"{(on_policy.accuracy - student.accuracy) * 100:+.1f} points",
                f"Trained on its own replies scored by the teacher ({lam or 'GKD'}) as well as "
                f"the traces, the student solves {fmt_percent(on_policy.accuracy)}; trained on "
                f"the traces alone, {fmt_percent(student.accuracy)}.",
            )
        )
    teacher, base = models.get("teacher"), models.get("base")
    if student and student.accuracy is not None and teacher and teacher.accuracy is not None:
        before = "" if base is None else f", up from {fmt_percent(base.accuracy)} before training"
        size = ""
        if student.params and teacher.params:
            size = f", with {fmt_percent(student.params / teacher.params)} of its parameters"
        lines.append(
            (
                "student vs teacher",
                f"{fmt_percent(student.accuracy)} vs {fmt_percent(teacher.accuracy)}",
                f"The student solves {fmt_percent(student.accuracy)} against the teacher's "
                f"{fmt_percent(teacher.accuracy)}{size}{before}.",
            )
        )
    traces = report.recipe.get("traces") or {}
    if traces.get("traces"):
        lines.append(
            (
                "traces kept",
                f"{traces['kept']} of {traces['traces']}",
                f"The teacher wrote {traces['samples_per_problem']} trace(s) for each of "
                f"{traces['problems']} problems; {traces['kept']} checked (a correct final "
                f"answer) and were kept, covering {traces['problems_with_a_kept_trace']} "
                "problems.",
            )
        )
    return lines


def reasoning_table(report: Report) -> tuple[list[str], list[list[str]]]:
    """The per-model table of a chain-of-thought run: (header, rows)."""
    header = [
        "model",
        "params",
        "accuracy",
        "answered",
        "cut off",
        "tokens/reply",
        "problems/s (batched)",
        "train s",
    ]
    rows = [
        [
            name,
            fmt_params(entry.params),
            fmt_percent(entry.accuracy, digits=1),
            fmt_percent(entry.answered, digits=0),
            fmt_percent(entry.truncated, digits=0),
            fmt_number(entry.mean_answer_tokens, digits=0),
            _batched_speed(entry),
            fmt_rate(entry.train_seconds),
        ]
        for name, entry in report.models.items()
    ]
    if any(entry.reply_kl is not None for entry in report.models.values()):
        header.insert(3, "KL on own replies")
        for row, entry in zip(rows, report.models.values(), strict=True):
            row.insert(3, fmt_number(entry.reply_kl, digits=3))
    return header, rows


def context_headline(report: Report) -> list[tuple[str, str, str]]:
    """The findings of a context-distillation run: how close the unprompted student and
    the unprompted base model come to the prompted teacher, and what the prompt cost."""
    student = (report.models.get("student") or ModelEntry()).agreement or Agreement()
    base = (report.models.get("base") or ModelEntry()).agreement or Agreement()
    if student.top1 is None or base.top1 is None:
        return []
    lines = [
        (
            "agreement with the prompted teacher",
            f"{fmt_percent(student.top1)} vs {fmt_percent(base.top1)}",
            f"Without the context, the student's next token is the prompted teacher's on "
            f"{fmt_percent(student.top1)} of held-out response tokens, the base model's on "
            f"{fmt_percent(base.top1)}; KL(teacher ‖ model) {fmt_number(student.kl)} against "
            f"{fmt_number(base.kl)} nats/token.",
        )
    ]
    tokens = report.recipe.get("context_tokens_per_call")
    with_ms = report.recipe.get("prefill_ms_with_context")
    without_ms = report.recipe.get("prefill_ms_without_context")
    if tokens is not None and with_ms is not None and without_ms is not None:
        lines.append(
            (
                "saved per call",
                f"{tokens:g} tokens",
                f"Each call without the context reads {tokens:g} fewer prompt tokens (beyond "
                "what the chat template adds anyway); its batch-1 prefill took "
                f"{without_ms:g} ms against {with_ms:g} ms with the context.",
            )
        )
    return lines


def best_student(report: Report) -> tuple[str, ModelEntry] | None:
    """The most accurate ``student-*`` model of a classification run (None without one)."""
    students = [
        (name, entry)
        for name, entry in report.models.items()
        if name.startswith("student") and entry.accuracy is not None
    ]
    return max(students, key=lambda item: item[1].accuracy) if students else None


def classification_headline(report: Report) -> list[tuple[str, str, str]]:
    """The findings of a classification run: the best student against the teacher (accuracy,
    size, speed), soft against hard labels, and when the distillation pays for itself."""
    best = best_student(report)
    teacher = report.models.get("teacher")
    if best is None or teacher is None or teacher.accuracy is None:
        return []
    name, student = best
    points = (student.accuracy - teacher.accuracy) * 100
    lines = [
        (
            "best student",
            f"{fmt_percent(student.accuracy)} vs {fmt_percent(teacher.accuracy)}",
            f"The best student ({name}) scores {fmt_percent(student.accuracy)} accuracy on "
            f"the test set, {abs(points):.1f} points {'above' if points >= 0 else 'below'} "
            f"the teacher's zero-shot {fmt_percent(teacher.accuracy)} (macro-F1 "
            f"{fmt_percent(student.f1)} against {fmt_percent(teacher.f1)}).",
        )
    ]
    if student.params and teacher.params:
        fraction = student.params / teacher.params
        lines.append(
            (
                "student size",
                f"{fmt_percent(fraction, digits=1)} of teacher",
                f"{name} has {fmt_params(student.params)} parameters, "
                f"{fmt_percent(fraction, digits=1)} of the teacher's {fmt_params(teacher.params)}.",
            )
        )
    student_rate = (student.examples_per_second or {}).get("1")
    teacher_rate = (teacher.examples_per_second or {}).get("1")
    if student_rate and teacher_rate:
        lines.append(
            (
                "speed",
                f"{student_rate / teacher_rate:.0f}× teacher",
                f"{name} classifies {fmt_rate(student_rate)} texts/s, "
                f"{student_rate / teacher_rate:.0f}× the teacher's {fmt_rate(teacher_rate)} "
                "(batch 1, this machine).",
            )
        )
    baseline = report.models.get("baseline")
    if baseline is not None and baseline.accuracy is not None:
        gain = (student.accuracy - baseline.accuracy) * 100
        lines.append(
            (
                "soft vs hard labels",
                f"{gain:+.1f} points",
                f"Trained on the teacher's soft labels, {name} scores {abs(gain):.1f} points "
                f"{'more' if gain >= 0 else 'less'} than the same student trained on its hard "
                f"labels only ({fmt_percent(baseline.accuracy)}).",
            )
        )
    repay = break_even_line(report)
    if repay is not None:
        lines.append(("break-even", *repay))
    return lines


def break_even_line(report: Report) -> tuple[str, str] | None:
    """(value, sentence): after how many calls the student has repaid the distillation."""
    even = report.break_even
    if even is None or even.distill_seconds is None:
        return None
    unit = even.unit or "texts"
    cost = (
        f"Distilling took {even.distill_seconds:.0f} s ({even.basis}); the teacher takes "
        f"{fmt_rate(even.teacher_seconds_per_1k)} s per 1,000 {unit} and {even.student} "
        f"{fmt_rate(even.student_seconds_per_1k)} s"
    )
    if even.calls_to_repay is None:
        return "never", cost + ", so the student is not faster and never repays it."
    calls = f"{even.calls_to_repay:,.0f} {unit}"
    return calls, cost + f", so the student has paid for itself after {calls}."


def _speed(entry: ModelEntry, batch: str) -> str:
    rate = (entry.examples_per_second or {}).get(batch)
    return fmt_rate(rate)


def _batched_speed(entry: ModelEntry) -> str:
    """The rate at the largest batch measured above 1, as ``134.0 @32``."""
    rates = {int(b): r for b, r in (entry.examples_per_second or {}).items() if int(b) > 1}
    if not rates:
        return DASH
    batch = max(rates)
    return f"{fmt_rate(rates[batch])} @{batch}"


def classification_table(report: Report) -> tuple[list[str], list[list[str]]]:
    """The per-model table of a classification run: (header, rows)."""
    header = [
        "model",
        "params",
        "trainable",
        "size (MB)",
        "accuracy",
        "macro-F1",
        "ECE",
        "agreement",
        "examples/s (batch 1)",
        "examples/s (batched)",
        "train s",
    ]
    rows = []
    for name, entry in report.models.items():
        agreement = entry.agreement or Agreement()
        rows.append(
            [
                name,
                fmt_params(entry.params),
                fmt_params(entry.trainable_params),
                fmt_megabytes(entry.size_bytes),
                fmt_percent(entry.accuracy, digits=1),
                fmt_percent(entry.f1, digits=1),
                fmt_number(entry.ece, digits=3),
                fmt_percent(agreement.top1, digits=1),
                _speed(entry, "1"),
                _batched_speed(entry),
                fmt_rate(entry.train_seconds),
            ]
        )
    return header, rows


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


def summary_table(report: Report) -> str:
    """A short fixed-width table for the terminal, its columns by `report.kind`, then the
    summary lines: gap closed (with its caveats, or why it is not given), break-even and
    time budget."""
    header, rows = _summary_columns(report)
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(
            cell.ljust(width) if i == 0 else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        )
        for row in [header, *rows]
    ]
    return "\n".join(lines + _summary_lines(report))


def _summary_columns(report: Report) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of the terminal table: the numbers each kind is judged by."""
    models = report.models.items()
    if report.kind == "classify":
        return ["model", "params", "accuracy", "macro-F1", "examples/s"], [
            [
                name,
                fmt_params(entry.params, missing="-"),
                fmt_percent(entry.accuracy, digits=1, missing="-"),
                fmt_percent(entry.f1, digits=1, missing="-"),
                fmt_rate(
                    (entry.examples_per_second or {}).get("1")
                    or (entry.examples_per_second or {}).get("8"),
                    missing="-",
                ),
            ]
            for name, entry in models
        ]
    if report.kind == "reason":
        return ["model", "params", "accuracy", "answered", "tokens/reply"], [
            [
                name,
                fmt_params(entry.params, missing="-"),
                fmt_percent(entry.accuracy, digits=1, missing="-"),
                fmt_percent(entry.answered, digits=0, missing="-"),
                fmt_number(entry.mean_answer_tokens, digits=0, missing="-"),
            ]
            for name, entry in models
        ]
    if report.kind == "context":
        return ["model", "params", "top-1 agreement", "KL (nats/token)"], [
            [
                name,
                fmt_params(entry.params, missing="-"),
                fmt_percent((entry.agreement or Agreement()).top1, digits=1, missing="-"),
                fmt_number((entry.agreement or Agreement()).kl, digits=3, missing="-"),
            ]
            for name, entry in models
        ]
    return ["model", "params", "perplexity", "tokens/s"], [
        [
            name,
            fmt_params(entry.params, missing="-"),
            fmt_perplexity(entry.perplexity, missing="-"),
            fmt_rate(entry.tokens_per_second, missing="-"),
        ]
        for name, entry in models
    ]


def _summary_lines(report: Report) -> list[str]:
    """The terminal's lines under the table: a broken run instead of the gap closed, a
    budget-cut run's caveat beside it, then break-even, time budget and skipped updates."""
    lines = []
    broken = broken_line(report)
    if broken is not None:
        lines.append(f"training broke: {broken[0]}. {broken[1]}")
    elif report.summary.gap_closed is not None:
        caveat = gap_caveat(report)
        gap = fmt_percent(report.summary.gap_closed, digits=0)
        lines.append(f"gap closed: {gap}" + ("" if caveat is None else f" ({caveat})"))
    repay = break_even_line(report)
    if repay is not None:
        lines.append(f"break-even: {repay[0]}")
    budget = budget_line(report)
    if budget is not None:
        cut = budget_cut(report) is not None
        lines.append(f"time budget: {budget[0]}" + (f"; {RERUN_FULL}" if cut else ""))
    skipped = skipped_line(report)
    if skipped is not None:
        lines.append(f"skipped updates: {skipped[0]}")
    return lines


# ---- numbers ------------------------------------------------------------------------


def fmt_params(n: float | None, missing: str = DASH) -> str:
    """134515008 -> '134.5M'.

    >>> fmt_params(134_515_008), fmt_params(None)
    ('134.5M', '–')
    """
    if n is None:
        return missing
    for scale, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= scale:
            return f"{n / scale:.1f}{suffix}"
    return f"{n:.0f}"


def fmt_megabytes(size_bytes: float | None, missing: str = DASH) -> str:
    """Three significant figures or so: 538 / 19.8 / 0.54 (MB, 10^6 bytes)."""
    if size_bytes is None:
        return missing
    mb = size_bytes / 1e6
    return f"{mb:.0f}" if mb >= 100 else f"{mb:.1f}" if mb >= 10 else f"{mb:.2f}"


def fmt_perplexity(ppl: float | None, missing: str = DASH) -> str:
    if ppl is None:
        return missing
    return f"{ppl:.0f}" if ppl >= 1000 else f"{ppl:.2f}"


def fmt_percent(fraction: float | None, digits: int = 1, missing: str = DASH) -> str:
    return missing if fraction is None else f"{fraction * 100:.{digits}f}%"


def fmt_rate(rate: float | None, missing: str = DASH) -> str:
    return missing if rate is None else f"{rate:.1f}"


def fmt_number(value: float | None, digits: int = 3, missing: str = DASH) -> str:
    return missing if value is None else f"{value:.{digits}f}"


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
