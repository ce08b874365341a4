"""The run report: report.json as a type (`Report`), the one builder that makes it, and
the views rendered from it (report.md, report.html, plots/*.png, the terminal table).

Modules, each importing only those before it: `schema` (the types), `health` (did a
training run end healthy), `summary` (the student-against-teacher ratios), `build`,
`caveats` (a broken or budget-cut run, as text), `units` (number formats), `kinds` (the
headline and table of classify, reason and context runs), `format` (the text the
markdown and HTML views share), `terminal` (the table the CLI prints), `plots`,
`retention` (the student's retention tables), `markdown`, `html`, `write`.
"""

from potstill.evaluation.report.build import build_report
from potstill.evaluation.report.schema import (
    SCHEMA_VERSION,
    Agreement,
    BreakEven,
    DataInfo,
    Disagreement,
    FrequencyBand,
    Kind,
    ModelEntry,
    Report,
    RunInfo,
    Sample,
    Summary,
    TrainingHealth,
)
from potstill.evaluation.report.summary import gap_closed
from potstill.evaluation.report.terminal import summary_table
from potstill.evaluation.report.write import write_report

__all__ = [
    "SCHEMA_VERSION",
    "Agreement",
    "BreakEven",
    "DataInfo",
    "Disagreement",
    "FrequencyBand",
    "Kind",
    "ModelEntry",
    "Report",
    "RunInfo",
    "Sample",
    "Summary",
    "TrainingHealth",
    "build_report",
    "gap_closed",
    "summary_table",
    "write_report",
]
