"""Evaluation: models side by side (`lm`), what they cost (`size`, `speed`), and the typed
run report (`report`: report.json as a pydantic model, rendered to Markdown, HTML, plots)."""

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

__all__ = [
    "SCHEMA_VERSION",
    "Agreement",
    "ModelEntry",
    "Report",
    "build_report",
    "count_params",
    "gap_closed",
    "generation_tokens_per_second",
    "size_on_disk",
    "summary_table",
    "write_report",
]
