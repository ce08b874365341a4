"""report.md: the same findings, table and details as the HTML page, for a terminal or a
repository viewer; plots are linked, not inlined."""

from __future__ import annotations

from pathlib import Path

from potstill.evaluation.report.docs import docs_page
from potstill.evaluation.report.format import (
    details,
    headline,
    metrics_note,
    metrics_table,
    subtitle,
    title,
)
from potstill.evaluation.report.retention import retention_tables
from potstill.evaluation.report.schema import Report


def render_markdown(report: Report, plot_files: list[str] | None = None) -> str:
    """report.md: headline, the metrics table, the student's retention profile (by token
    frequency, worst disagreements), data, recipe and run, and the plots.

    `plot_files` are paths relative to report.md (``plots/NAME.png``).
    """
    lines = [f"# {title(report)}", "", f"_{subtitle(report)}_", "", *summary_lines(report)]
    lines += ["", f"What each number means, and how to change the run: {docs_page(report.kind)}"]
    for table in retention_tables(report):
        body = _table(table.header, table.rows, table.text_columns)
        lines += ["", f"## {table.title}", "", *body, "", table.note]
    for section, pairs in details(report):
        if pairs:
            lines += ["", f"## {section}", ""]
            lines += [f"- **{key}**: {_cell(value)}" for key, value in pairs]
    if plot_files:
        lines += ["", "## Plots", ""]
        lines += [f"![{Path(file).stem.replace('_', ' ')}]({file})" for file in plot_files]
    return "\n".join(lines) + "\n"


def summary_lines(report: Report, heading: str = "## Models") -> list[str]:
    """The headline's findings and the metrics table with its note: what a reader needs
    first (the docs' task pages show these for their recipes' measured runs)."""
    lines = [f"- **{label}: {value}.** {sentence}" for label, value, sentence in headline(report)]
    header, rows = metrics_table(report)
    return [*lines, "", heading, "", *_table(header, rows), "", metrics_note(report)]


def _table(header: list[str], rows: list[list[str]], text_columns: int = 1) -> list[str]:
    """A markdown table: the first `text_columns` columns aligned left, the rest right."""
    align = ["---" if i < text_columns else "---:" for i in range(len(header))]
    return [_row(header), "|" + "|".join(align) + "|", *map(_row, rows)]


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(_cell(cell) for cell in cells) + " |"
