"""The terminal's view of a report: a fixed-width table of the numbers the run's kind is
judged by, then the summary lines (the gap closed or why it is not given, break-even,
time budget, skipped updates)."""

from __future__ import annotations

from potstill.evaluation.report.caveats import (
    RERUN_FULL,
    broken_line,
    budget_cut,
    budget_line,
    gap_caveat,
    rollback_line,
    skipped_line,
)
from potstill.evaluation.report.kinds import break_even_line
from potstill.evaluation.report.schema import Agreement, Report
from potstill.evaluation.report.units import (
    fmt_number,
    fmt_params,
    fmt_percent,
    fmt_perplexity,
    fmt_rate,
)


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
    rolled = rollback_line(report)
    if rolled is not None:
        lines.append(f"rollbacks: {rolled[0]}")
    return lines
