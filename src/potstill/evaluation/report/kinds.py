"""The headline and the per-model table of each task kind but the language model's:
classification (the best student against the teacher, soft against hard labels), chain of
thought (traces against answers alone) and context distillation (agreement with the
prompted teacher); and the break-even line that the language-model headline shares."""

from __future__ import annotations

from potstill.evaluation.report.schema import Agreement, ModelEntry, Report
from potstill.evaluation.report.units import (
    DASH,
    fmt_megabytes,
    fmt_number,
    fmt_params,
    fmt_percent,
    fmt_rate,
)

CLASSIFICATION_NOTE = (
    "Accuracy, macro-F1 and ECE (15 bins) are on the labelled test set; agreement is the "
    "share of test texts where the model's answer is the teacher's; examples/s is measured "
    "on this machine (the teacher scores every label's full token sequence). The majority "
    "row is a reference, not a model: always answering the commonest label of the train "
    "gold labels (of the test labels when the train texts have none)."
)
# A student more than this many points below its teacher is said, with the likely cause.
STUDENT_SHORTFALL_POINTS = 2.0
FEW_TEXTS_PER_LABEL = 50  # fewer train texts a label than this is "few"
LOW_AGREEMENT = 0.8  # a student agreeing with its teacher less often has not learned it


REASONING_NOTE = (
    "Accuracy is exact match on the held-out problems: each model answers greedily, its final "
    "answer is read from its reply and checked by the problem generator's scorer; problems/s "
    "is the batched generation rate on this machine."
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
    """The findings of a classification run: a teacher no better than a constant answer,
    the best student against the teacher (accuracy, size, speed; why, when it is well
    below), soft against hard labels, and when the distillation pays for itself."""
    best = best_student(report)
    teacher = report.models.get("teacher")
    if best is None or teacher is None or teacher.accuracy is None:
        return []
    name, student = best
    points = (student.accuracy - teacher.accuracy) * 100
    lines = [] if (floor := majority_line(report)) is None else [floor]
    lines += [
        (
            "best student",
            f"{fmt_percent(student.accuracy)} vs {fmt_percent(teacher.accuracy)}",
            f"The best student ({name}) scores {fmt_percent(student.accuracy)} accuracy on "
            f"the test set, {abs(points):.1f} points {'above' if points >= 0 else 'below'} "
            f"the teacher's zero-shot {fmt_percent(teacher.accuracy)} (macro-F1 "
            f"{fmt_percent(student.f1)} against {fmt_percent(teacher.f1)}).",
        )
    ]
    shortfall = shortfall_line(report, name, student, teacher)
    if shortfall is not None:
        lines.append(shortfall)
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


def majority_line(report: Report) -> tuple[str, str, str] | None:
    """(label, value, sentence) when the teacher's zero-shot accuracy is not above always
    answering the commonest label (the report's ``majority`` row); None otherwise."""
    teacher, majority = report.models.get("teacher"), report.models.get("majority")
    if teacher is None or majority is None or None in (teacher.accuracy, majority.accuracy):
        return None
    if teacher.accuracy > majority.accuracy:
        return None
    about = report.recipe.get("majority") or {}
    answer = f"{about['label']!r}" if about.get("label") else "the commonest label"
    source = f", the commonest of the {about['from']}" if about.get("from") else ""
    calibrate = report.recipe.get("calibrate")
    prior = (
        ""
        if calibrate in (None, "prior")
        else f"; task.calibrate: prior (this run: {calibrate}) stops assuming balanced classes"
    )
    return (
        "teacher vs a constant answer",
        f"{fmt_percent(teacher.accuracy)} vs {fmt_percent(majority.accuracy)}",
        f"The teacher's zero-shot accuracy {fmt_percent(teacher.accuracy)} (macro-F1 "
        f"{fmt_percent(teacher.f1)}) is not above always answering {answer} "
        f"({fmt_percent(majority.accuracy)}{source}): its labels teach the students less "
        "than a constant answer would. Give labelled examples (task.examples, or task.shots "
        f"with task.train_label_field) or a stronger teacher{prior}.",
    )


def shortfall_line(
    report: Report, name: str, student: ModelEntry, teacher: ModelEntry
) -> tuple[str, str, str] | None:
    """(label, value, sentence) when the best student ``name`` is more than
    `STUDENT_SHORTFALL_POINTS` below its teacher: the numbers and the likely causes the
    report holds (few train texts, little agreement, too few steps, a diverged run)."""
    if student.accuracy is None or teacher.accuracy is None:
        return None
    points = (teacher.accuracy - student.accuracy) * 100
    if points <= STUDENT_SHORTFALL_POINTS:
        return None
    recipe = report.recipe
    causes = []
    texts, labels = recipe.get("train_texts"), recipe.get("labels") or []
    steps, batch = recipe.get("steps"), recipe.get("batch_size")
    if isinstance(texts, int) and labels and texts < FEW_TEXTS_PER_LABEL * len(labels):
        causes.append(
            f"few train texts ({texts:,} for {len(labels)} labels, under "
            f"{FEW_TEXTS_PER_LABEL} a label: give more in task.train)"
        )
    seen = steps * batch if isinstance(steps, int) and isinstance(batch, int) else None
    if isinstance(texts, int) and seen is not None and seen < texts:
        causes.append(
            f"less than one pass over the train texts ({steps} steps × {batch} = "
            f"{seen:,} of {texts:,}: raise train.steps)"
        )
    top1 = (student.agreement or Agreement()).top1
    if top1 is not None and top1 < LOW_AGREEMENT:
        causes.append(
            f"low agreement with the teacher ({fmt_percent(top1)} of test texts: the student "
            "has not learned its labels)"
        )
    if student.training is not None and student.training.status == "diverged":
        causes.append(f"its training diverged ({student.training.reason})")
    why = (
        "likely " + "; ".join(causes)
        if causes
        else "nothing the report holds explains it; try more train texts or train.steps"
    )
    return (
        "students below teacher",
        f"{points:.1f} points",
        f"The best student ({name}) scores {fmt_percent(student.accuracy)}, {points:.1f} "
        f"points below the teacher's {fmt_percent(teacher.accuracy)}: {why}.",
    )


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
    about = report.recipe.get("majority") or {}
    for name, entry in report.models.items():
        agreement = entry.agreement or Agreement()
        shown = name
        if name == "majority" and about.get("label"):  # which constant, from which labels
            source = f", {about['from']}" if about.get("from") else ""
            shown = f"majority ({about['label']!r}{source})"
        rows.append(
            [
                shown,
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
