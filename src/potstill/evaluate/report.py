"""The run report: report.json (the numbers), report.md, report.html and plots/*.png.

The JSON schema is fixed in DESIGN.md ("Run folder"). Models are keyed by role:
`teacher`, `student`, `baseline` (the same student trained on hard labels only), and any
other name; every key is optional, so the report works for 1..n models.
"""

from __future__ import annotations

import dataclasses
import json
import math
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from potstill import __version__
from potstill.util.io import atomic_write_bytes, atomic_write_json, atomic_write_text

ROLES = ("teacher", "student", "baseline")
DASH = "–"


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


def build_report(*, run: dict, data: dict, recipe: dict, models: dict[str, dict]) -> dict:
    """The report as a JSON-ready dict: the given sections plus version, time and summary.

    `models` maps a model's name to its entry (`params`, `size_bytes`, `perplexity`,
    `loss`, `tokens_per_second`, and for students `agreement` and `train_seconds`).
    Non-finite floats become null so the file stays valid JSON.
    """
    ordered = {name: models[name] for name in ROLES if name in models}
    ordered.update((name, entry) for name, entry in models.items() if name not in ordered)
    report = {
        "potstill_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "run": run,
        "data": data,
        "recipe": recipe,
        "models": ordered,
    }
    report = _jsonable(report)
    report["summary"] = summarize(report["models"])
    return report


def summarize(models: dict[str, dict]) -> dict[str, float | None]:
    """Student-against-teacher and student-against-baseline ratios (None where unknown)."""
    teacher, student, baseline = (models.get(role, {}) for role in ROLES)
    return {
        "gap_closed": gap_closed(
            teacher.get("perplexity"), student.get("perplexity"), baseline.get("perplexity")
        ),
        "student_params_fraction": _ratio(student.get("params"), teacher.get("params")),
        "student_size_fraction": _ratio(student.get("size_bytes"), teacher.get("size_bytes")),
        "student_vs_baseline_perplexity": _ratio(
            student.get("perplexity"), baseline.get("perplexity")
        ),
        "student_vs_teacher_perplexity": _ratio(
            student.get("perplexity"), teacher.get("perplexity")
        ),
        "student_speedup": _ratio(
            student.get("tokens_per_second"), teacher.get("tokens_per_second")
        ),
    }


def write_report(
    run_dir: Path, report: dict, curves: dict[str, list[dict]] | None = None
) -> dict[str, Path]:
    """Write report.json, report.md, report.html and plots/*.png into `run_dir`.

    `curves` maps a training run ("student", "baseline") to its metrics.jsonl rows: dicts
    with "step" and "loss", optionally "lr", "tokens_per_second", "heldout_loss" and one
    value per loss term ("cross_entropy", "forward_kl", ...). Every file is written
    atomically. Returns the written paths keyed by their path relative to `run_dir`.
    """
    from potstill.evaluate.html import render_html
    from potstill.evaluate.plots import make_plots

    run_dir = Path(run_dir)
    report = _jsonable(report)
    plots = make_plots(report, curves or {})
    written: dict[str, Path] = {}
    for plot in plots:
        key = f"plots/{plot.name}.png"
        atomic_write_bytes(run_dir / key, plot.png)
        written[key] = run_dir / key
    plot_files = list(written)
    header, rows = metrics_table(report)
    page = render_html(
        title=_title(report),
        subtitle=_subtitle(report),
        headline=headline(report),
        header=header,
        rows=rows,
        details=details(report),
        plots=plots,
    )
    atomic_write_json(run_dir / "report.json", report)
    atomic_write_text(run_dir / "report.md", render_markdown(report, plot_files=plot_files))
    atomic_write_text(run_dir / "report.html", page)
    for key in ("report.json", "report.md", "report.html"):
        written[key] = run_dir / key
    return written


# ---- what the documents say -------------------------------------------------------


def headline(report: dict) -> list[tuple[str, str, str]]:
    """The findings in a few (label, value, sentence) triples, most important first."""
    models, summary = report.get("models", {}), report.get("summary", {})
    teacher, student = models.get("teacher", {}), models.get("student", {})
    lines = []
    gap = summary.get("gap_closed")
    if gap is not None:
        lines.append(
            (
                "gap closed",
                fmt_percent(gap, digits=0),
                f"Distillation closed {fmt_percent(gap, digits=0)} of the log-perplexity gap "
                "between the no-distillation baseline and the teacher "
                "(100% = as good as the teacher, 0% = no better than the baseline).",
            )
        )
    elif "student" in models:
        lines.append(
            (
                "gap closed",
                DASH,
                "Gap closed is not known: it needs the perplexity of the teacher, the student "
                "and the baseline, and a teacher that differs from the baseline.",
            )
        )
    fraction = summary.get("student_params_fraction")
    if fraction is not None:
        lines.append(
            (
                "student size",
                f"{fmt_percent(fraction, digits=0)} of teacher",
                f"The student has {fmt_params(student.get('params'))} parameters, "
                f"{fmt_percent(fraction, digits=1)} of the teacher's "
                f"{fmt_params(teacher.get('params'))}.",
            )
        )
    named = [(role, models[role]) for role in ("student", "baseline", "teacher") if role in models]
    if not named:
        named = list(models.items())
    if any(entry.get("perplexity") is not None for _, entry in named):
        value = " / ".join(fmt_perplexity(entry.get("perplexity")) for _, entry in named)
        parts = ", ".join(f"{name} {fmt_perplexity(e.get('perplexity'))}" for name, e in named)
        lines.append(
            (
                "perplexity " + " / ".join(name for name, _ in named),
                value,
                f"Held-out perplexity (lower is better): {parts}.",
            )
        )
    speedup = summary.get("student_speedup")
    if speedup is not None:
        lines.append(
            (
                "speed",
                f"{speedup:.1f}× teacher",
                f"The student generates {fmt_rate(student.get('tokens_per_second'))} tokens/s, "
                f"{speedup:.1f}× the teacher's {fmt_rate(teacher.get('tokens_per_second'))} "
                "(batch 1, greedy, this machine).",
            )
        )
    return lines


def metrics_table(report: dict) -> tuple[list[str], list[list[str]]]:
    """The per-model table as formatted strings: (header, rows)."""
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
    for name, entry in report.get("models", {}).items():
        agreement = entry.get("agreement") or {}
        rows.append(
            [
                name,
                fmt_params(entry.get("params")),
                fmt_megabytes(entry.get("size_bytes")),
                fmt_perplexity(entry.get("perplexity")),
                fmt_percent(agreement.get("top1"), digits=1),
                fmt_number(agreement.get("kl"), digits=3),
                fmt_rate(entry.get("tokens_per_second")),
            ]
        )
    return header, rows


def details(report: dict) -> list[tuple[str, list[tuple[str, str]]]]:
    """The data, recipe and run sections as (section, [(key, value)]) for display."""
    sections = []
    for section in ("data", "recipe", "run"):
        content = report.get(section) or {}
        pairs = [(str(key), _describe(key, value)) for key, value in content.items()]
        sections.append((section.capitalize(), pairs))
    return sections


def render_markdown(report: dict, plot_files: list[str] | None = None) -> str:
    """report.md: headline, the metrics table, data, recipe and run, and the plots."""
    lines = [f"# {_title(report)}", "", f"_{_subtitle(report)}_", ""]
    lines += [f"- **{label}: {value}.** {sentence}" for label, value, sentence in headline(report)]
    header, rows = metrics_table(report)
    lines += ["", "## Models", "", _markdown_row(header)]
    lines.append("|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|")
    lines += [_markdown_row(row) for row in rows]
    lines += [
        "",
        "Perplexity is on the held-out split; top-1 agreement and KL(teacher ‖ model) are "
        "measured against the teacher on the same tokens; tokens/s is batch-1 greedy "
        "generation on this machine.",
    ]
    for section, pairs in details(report):
        if pairs:
            lines += ["", f"## {section}", ""]
            lines += [f"- **{key}**: {_markdown_cell(value)}" for key, value in pairs]
    if plot_files:
        lines += ["", "## Plots", ""]
        lines += [f"![{Path(file).stem.replace('_', ' ')}]({file})" for file in plot_files]
    return "\n".join(lines) + "\n"


def summary_table(report: dict) -> str:
    """A short fixed-width table for the terminal: params, perplexity, tokens/s per model."""
    header = ["model", "params", "perplexity", "tokens/s"]
    rows = [
        [
            name,
            fmt_params(entry.get("params"), missing="-"),
            fmt_perplexity(entry.get("perplexity"), missing="-"),
            fmt_rate(entry.get("tokens_per_second"), missing="-"),
        ]
        for name, entry in report.get("models", {}).items()
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(
            cell.ljust(width) if i == 0 else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        )
        for row in [header, *rows]
    ]
    gap = report.get("summary", {}).get("gap_closed")
    if gap is not None:
        lines.append(f"gap closed: {fmt_percent(gap, digits=0)}")
    return "\n".join(lines)


# ---- formatting ----------------------------------------------------------------------


def fmt_params(n: float | None, missing: str = DASH) -> str:
    """134515008 -> '134.5M'."""
    if n is None:
        return missing
    for scale, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= scale:
            return f"{n / scale:.1f}{suffix}"
    return f"{n:.0f}"


def fmt_megabytes(size_bytes: float | None, missing: str = DASH) -> str:
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


# ---- helpers -----------------------------------------------------------------------


def _title(report: dict) -> str:
    name = (report.get("run") or {}).get("name")
    return f"potstill report: {name}" if name else "potstill report"


def _subtitle(report: dict) -> str:
    run = report.get("run") or {}
    parts = [f"potstill {report.get('potstill_version', '?')}", report.get("created", "")]
    if run.get("device"):
        parts.append(f"device {run['device']}")
    if isinstance(run.get("wall_seconds"), (int, float)):
        parts.append(f"{run['wall_seconds']:.0f} s wall")
    return " · ".join(part for part in parts if part)


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
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return DASH if value is None else str(value)


def _markdown_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _markdown_row(cells: list[str]) -> str:
    return "| " + " | ".join(_markdown_cell(cell) for cell in cells) + " |"


def _positive(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def _ratio(numerator: Any, denominator: Any) -> float | None:
    if not isinstance(numerator, (int, float)) or not _positive(denominator):
        return None
    return numerator / denominator


def _jsonable(value: Any) -> Any:
    """Plain JSON types: dataclasses and tensors unpacked, paths as text, NaN/inf as None."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    if isinstance(value, dict):
        return {str(key): _jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(item) for item in value]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item") and callable(value.item):  # torch / numpy scalars
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
