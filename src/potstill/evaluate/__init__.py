"""Evaluation: held-out metrics, generation speed, and the run report."""

from potstill.evaluate.metrics import LMScores, count_params, score_models, size_on_disk
from potstill.evaluate.report import build_report, gap_closed, summary_table, write_report
from potstill.evaluate.speed import generation_tokens_per_second

__all__ = [
    "LMScores",
    "build_report",
    "count_params",
    "gap_closed",
    "generation_tokens_per_second",
    "score_models",
    "size_on_disk",
    "summary_table",
    "write_report",
]
