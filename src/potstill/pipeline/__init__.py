"""The pipeline: a recipe becomes a plan of stages (teach, distill, baseline, evaluate,
report) run in one folder; each stage leaves a finished artefact and a fingerprint of its
inputs, so a resumed run skips what is done and redoes what changed."""

from potstill.pipeline.generate import generate_only
from potstill.pipeline.label import label_only
from potstill.pipeline.run import RunResult, distill_only, plan, run, teach_only
from potstill.pipeline.run_dir import prepare_run_dir, run_dir_of

__all__ = [
    "RunResult",
    "distill_only",
    "generate_only",
    "label_only",
    "plan",
    "prepare_run_dir",
    "run",
    "run_dir_of",
    "teach_only",
]
