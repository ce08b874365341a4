"""Where the student kept the teacher and where not, as tables: by how often the true next
token occurs in the training split, the held-out positions of largest KL(teacher ‖
student), and what each model writes after the same held-out prompts. The markdown and
HTML views both render these."""

from __future__ import annotations

import json
from dataclasses import dataclass

from potstill.evaluation.report.schema import FrequencyBand, ModelEntry, Report
from potstill.evaluation.report.units import DASH, fmt_number, fmt_percent

BANDS_NOTE = (
    "Held-out positions grouped by how often their true next token occurs in the training "
    "split (rank 1 = the most frequent token; the last band also holds tokens never seen "
    "there). NLL is the mean negative log-likelihood of the true token in nats (lower is "
    "better); agreement is the share of positions where the student's top token is the "
    "teacher's."
)
WORST_NOTE = (
    "The held-out positions where the student's next-token distribution is furthest from "
    "the teacher's (largest KL(teacher ‖ student), nats), each after the tokens just before "
    "it; text is shown as a JSON string, so spaces and newlines are visible."
)

SAMPLES_NOTE = (
    "Each model's greedy continuation (up to eval.generate_tokens new tokens; shorter where "
    "it ended the text) of the first 32 tokens of held-out blocks spread over the held-out "
    "set; text is shown as a JSON string, so spaces and newlines are visible."
)


@dataclass
class TextTable:
    """A table of the report as text; its first ``text_columns`` columns are words, the
    rest numbers (aligned right)."""

    title: str
    header: list[str]
    rows: list[list[str]]
    note: str
    text_columns: int = 1


def retention_tables(report: Report) -> list[TextTable]:
    """The retention profile of a language-model run's student, where the report has one:
    the band table, the worst disagreements and the continuations side by side (any may
    be missing)."""
    if report.kind != "lm":
        return []
    tables = [band_table(report), worst_table(report), samples_table(report)]
    return [table for table in tables if table is not None]


def band_table(report: Report) -> TextTable | None:
    """Per frequency band: share of positions, the student's top-1 agreement with the
    teacher, and the mean NLL of the teacher, the student and (if present) the baseline."""
    student = report.models.get("student")
    if student is None or not student.frequency_bands:
        return None
    losses = {
        name: _losses(report.models[name])
        for name in ("teacher", "student", "baseline")
        if name in report.models and report.models[name].frequency_bands
    }
    header = ["true next token's frequency rank (train)", "share of positions"]
    header += ["student top-1 agreement"] + [f"NLL {name}" for name in losses]
    rows = [
        [
            band.band or DASH,
            fmt_percent(band.share, digits=1),
            fmt_percent(band.top1, digits=1),
            *(fmt_number(by_band.get(band.band), digits=2) for by_band in losses.values()),
        ]
        for band in student.frequency_bands
    ]
    return TextTable("Retention by token frequency", header, rows, BANDS_NOTE)


def worst_table(report: Report) -> TextTable | None:
    """The student's worst disagreements with the teacher, largest KL first."""
    student = report.models.get("student")
    if student is None or not student.worst_disagreements:
        return None
    header = ["context", "teacher's top token", "student's top token", "true next token"]
    rows = [
        [
            *(_quoted(text) for text in (d.context, d.teacher_top, d.model_top, d.target)),
            fmt_number(d.kl, digits=2),
        ]
        for d in student.worst_disagreements
    ]
    return TextTable(
        "Where the student disagrees most", [*header, "KL"], rows, WORST_NOTE, text_columns=4
    )


def samples_table(report: Report) -> TextTable | None:
    """A row per held-out prompt: the prompt, then each model's continuation (the roles
    first, in the report's order)."""
    if not report.samples:
        return None
    names = [name for name in report.models if any(name in s.continuations for s in report.samples)]
    names += sorted({n for s in report.samples for n in s.continuations} - set(names))
    rows = [
        [_quoted(sample.prompt), *(_quoted(sample.continuations.get(n)) for n in names)]
        for sample in report.samples
    ]
    header = ["prompt", *names]
    return TextTable("Continuations of held-out prompts", header, rows, SAMPLES_NOTE, len(header))


def _losses(entry: ModelEntry) -> dict[str | None, float | None]:
    bands: list[FrequencyBand] = entry.frequency_bands or []
    return {band.band: band.loss for band in bands}


def _quoted(text: str | None) -> str:
    """Text as a JSON string: quoted, with newlines and tabs escaped."""
    return DASH if text is None else json.dumps(text, ensure_ascii=False)
