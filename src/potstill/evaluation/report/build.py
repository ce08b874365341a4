"""The one way to make a `Report`: the caller's sections plus version, time, each trained
model's training health and the summary."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

from potstill import __version__
from potstill.evaluation.report.health import training_health
from potstill.evaluation.report.schema import (
    BreakEven,
    DataInfo,
    Kind,
    ModelEntry,
    Report,
    RunInfo,
    Sample,
    json_ready,
)
from potstill.evaluation.report.summary import summarize


def build_report(
    *,
    kind: Kind,
    run: RunInfo | Mapping[str, Any],
    data: DataInfo | Mapping[str, Any],
    recipe: Mapping[str, Any],
    models: Mapping[str, ModelEntry | Mapping[str, Any]],
    budget: Mapping[str, Any] | None = None,
    seeds: Mapping[str, Any] | None = None,
    break_even: BreakEven | Mapping[str, Any] | None = None,
    curves: Mapping[str, list[dict]] | None = None,
    samples: Sequence[Sample | Mapping[str, Any]] | None = None,
) -> Report:
    """The report of a run, from typed sections or plain dicts.

    `kind` is the run's task (`lm`, `classify`, `reason`, `context`); the views render by
    it. `models` maps a model's name to its entry (`params`, `size_bytes`, `perplexity`,
    `loss`, `tokens_per_second`, and for students `agreement` and `train_seconds`); the
    roles `teacher`, `student`, `baseline` come first. Tensors, paths and dataclasses
    are unpacked and non-finite floats become None. An unknown key in a typed section
    raises `pydantic.ValidationError`. `curves` maps a trained model's name to its
    metrics.jsonl rows: each such model gets its `training` health, and a broken student
    or baseline leaves the gap closed unknown (`summarize`). `samples` are held-out
    prompts with each model's continuation (`potstill.evaluation.lm.continuations`).

    >>> report = build_report(
    ...     kind="lm",
    ...     run={"name": "tiny"},
    ...     data={},
    ...     recipe={},
    ...     models={"student": {"params": 25}, "teacher": {"params": 100}},
    ... )
    >>> list(report.models), report.summary.student_params_fraction
    (['teacher', 'student'], 0.25)
    """
    entries = {
        str(name): ModelEntry.model_validate(json_ready(entry)) for name, entry in models.items()
    }
    for name, rows in (curves or {}).items():
        if name in entries and rows:
            entries[name].training = training_health(rows)
    return Report(
        potstill_version=__version__,
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        kind=kind,
        run=RunInfo.model_validate(json_ready(run)),
        data=DataInfo.model_validate(json_ready(data)),
        recipe=json_ready(recipe),
        models=entries,
        summary=summarize(entries),
        budget=json_ready(budget),
        seeds=json_ready(seeds),
        break_even=json_ready(break_even),
        samples=json_ready(samples),
    )
