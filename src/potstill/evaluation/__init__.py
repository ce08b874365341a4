"""Evaluation: models side by side (`lm`), what they cost (`size`, `speed`), whether the
distillation paid for itself (`worth`), and the typed run report (`report`: report.json as
a pydantic model, rendered to Markdown, HTML, plots)."""

from potstill.evaluation.report import (
    SCHEMA_VERSION,
    Agreement,
    ModelEntry,
    Report,
    build_report,
    gap_closed,
    summary_table,
    write_report,
)
from potstill.evaluation.size import count_params, size_on_disk
from potstill.evaluation.speed import generation_tokens_per_second
from potstill.evaluation.worth import calls_to_repay, seconds_saved_per_call

__all__ = [
    "SCHEMA_VERSION",
    "Agreement",
    "ModelEntry",
    "Report",
    "build_report",
    "calls_to_repay",
    "count_params",
    "gap_closed",
    "generation_tokens_per_second",
    "seconds_saved_per_call",
    "size_on_disk",
    "summary_table",
    "write_report",
]
