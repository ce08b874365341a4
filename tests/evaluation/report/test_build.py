"""build_report and the summary on hand-made numbers, from dicts and from typed sections."""

from __future__ import annotations

import dataclasses
import math
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pydantic
import pytest
import torch

from potstill import __version__
from potstill.evaluation.report import (
    SCHEMA_VERSION,
    Agreement,
    ModelEntry,
    Report,
    RunInfo,
    build_report,
    gap_closed,
)
from potstill.evaluation.report.summary import summarize
from tests.evaluation.report.numbers import DATA, RECIPE, RUN, entry, three_models


def test_gap_closed_formula():
    assert gap_closed(10.0, 20.0, 40.0) == pytest.approx(0.5)
    assert gap_closed(10.0, 10.0, 40.0) == pytest.approx(1.0)
    assert gap_closed(10.0, 40.0, 40.0) == pytest.approx(0.0)
    assert gap_closed(10.0, 80.0, 40.0) == pytest.approx(-0.5)
    assert gap_closed(10.0, 5.0, 40.0) == pytest.approx(1.5)
    expected = (math.log(30.0) - math.log(17.0)) / (math.log(30.0) - math.log(12.0))
    assert gap_closed(12.0, 17.0, 30.0) == pytest.approx(expected)
    assert gap_closed(10.0, 20.0, 10.0) is None  # no gap to close
    assert gap_closed(None, 20.0, 40.0) is None
    assert gap_closed(10.0, 20.0, float("nan")) is None
    assert gap_closed(10.0, 0.0, 40.0) is None


def test_build_from_dicts_fills_version_time_and_summary():
    before = datetime.now(timezone.utc).replace(microsecond=0)
    report = build_report(kind="lm", run=RUN, data=DATA, recipe=RECIPE, models=three_models())
    assert isinstance(report, Report)
    assert report.schema_version == SCHEMA_VERSION == 3
    assert report.potstill_version == __version__
    created = datetime.fromisoformat(report.created)
    assert created.utcoffset() == timedelta(0)
    assert before <= created <= datetime.now(timezone.utc)

    assert list(report.models) == ["teacher", "student", "baseline"]
    student = report.models["student"]
    assert student == ModelEntry(
        ref="local",
        params=25_000_000,
        size_bytes=100_000_000,
        perplexity=20.0,
        loss=math.log(20.0),
        tokens_per_second=80.0,
        train_seconds=150.0,
        agreement=Agreement(top1=0.52, kl=0.7),
    )
    assert report.models["teacher"].agreement is None
    assert report.run == RunInfo(name="tiny", wall_seconds=12.5, device="cpu", threads=2)
    assert report.data.train_tokens == 120_000 and report.data.split == "5%"
    assert report.recipe == RECIPE
    assert (report.budget, report.seeds, report.break_even) == (None, None, None)

    summary = report.summary
    assert summary.gap_closed == pytest.approx(0.5)
    assert summary.student_params_fraction == pytest.approx(0.25)
    assert summary.student_size_fraction == pytest.approx(0.25)
    assert summary.student_vs_baseline_perplexity == pytest.approx(0.5)
    assert summary.student_vs_teacher_perplexity == pytest.approx(2.0)
    assert summary.student_speedup == pytest.approx(4.0)


def test_build_from_typed_sections_equals_build_from_dicts():
    models = three_models()
    typed = build_report(
        kind="lm",
        run=RunInfo(**RUN),
        data=DATA,
        recipe=RECIPE,
        models={name: ModelEntry(**entry) for name, entry in models.items()},
    )
    plain = build_report(kind="lm", run=RUN, data=DATA, recipe=RECIPE, models=models)
    assert typed.model_copy(update={"created": plain.created}) == plain


def test_build_unpacks_tensors_paths_and_dataclasses():
    @dataclasses.dataclass
    class Scores:
        perplexity: float
        loss: float

    report = build_report(
        kind="lm",
        run={"name": "t", "threads": torch.tensor(4)},
        data={},
        recipe={"lr": torch.tensor(0.5), "cache": Path("runs/t/cache"), "ks": (64, 256)},
        models={
            "student": {"ref": Path("runs/t/student"), "params": torch.tensor(7)},
            "other": Scores(perplexity=float("nan"), loss=2.5),
        },
    )
    assert report.run.threads == 4
    assert report.recipe == {"lr": 0.5, "cache": "runs/t/cache", "ks": [64, 256]}
    assert report.models["student"].ref == "runs/t/student"
    assert report.models["student"].params == 7
    assert report.models["other"].perplexity is None
    assert report.models["other"].loss == 2.5


def test_build_keeps_budget_seeds_and_break_even():
    report = build_report(
        kind="lm",
        run={},
        data={},
        recipe={},
        models={},
        budget={"steps": 300, "seconds": float("inf")},
        seeds={"0": {"gap_closed": 0.4}, "1": {"gap_closed": 0.6}, "mean": 0.5, "sd": 0.141},
        break_even={
            "distill_seconds": 600.0,
            "teacher_seconds_per_1k": 40.0,
            "student_seconds_per_1k": 10.0,
            "calls_to_repay": 20.0,
        },
    )
    assert report.budget == {"steps": 300, "seconds": None}
    assert report.seeds["mean"] == 0.5
    assert report.break_even.calls_to_repay == 20.0


@pytest.mark.parametrize(
    ("section", "bad"),
    [
        ("models", {"student": {"perplexty": 3.0}}),
        ("models", {"student": {"agreement": {"top1": 0.5, "kl_div": 0.1}}}),
        ("run", {"nmae": "x"}),
        ("data", {"train_token": 5}),
    ],
)
def test_build_refuses_unknown_keys_in_typed_sections(section, bad):
    sections = {"run": {}, "data": {}, "recipe": {}, "models": {}, section: bad}
    with pytest.raises(pydantic.ValidationError, match="Extra inputs are not permitted"):
        build_report(kind="lm", **sections)


def test_summary_missing_teacher_or_baseline():
    models = {name: ModelEntry(**e) for name, e in three_models().items()}
    no_baseline = summarize({k: v for k, v in models.items() if k != "baseline"})
    assert no_baseline.gap_closed is None
    assert no_baseline.student_vs_baseline_perplexity is None
    assert no_baseline.student_params_fraction == pytest.approx(0.25)
    no_teacher = summarize({k: v for k, v in models.items() if k != "teacher"})
    assert no_teacher.gap_closed is None and no_teacher.student_speedup is None
    assert no_teacher.student_vs_baseline_perplexity == pytest.approx(0.5)
    no_roles = summarize({"my-model": ModelEntry(**entry(1_000, 55.0, 3.0))}).model_dump()
    assert len(no_roles) == 6 and all(value is None for value in no_roles.values())


def test_the_time_budget_is_said_in_the_table_and_the_headline():
    from potstill.evaluation.report import build_report, summary_table
    from potstill.evaluation.report.format import headline

    budget = {
        "minutes": 14,
        "steps": 78,
        "requested_steps": 130,
        "estimated_minutes": 13.9,
        "estimated_minutes_at_requested": 21.0,
    }
    report = build_report(
        kind="lm",
        run={"name": "x"},
        data={},
        recipe={},
        models={"student": {"perplexity": 10.0}},
        budget=budget,
    )
    assert summary_table(report).splitlines()[-1] == "time budget: 78 of 130 steps"
    label, value, sentence = headline(report)[-1]
    assert (label, value) == ("time budget", "78 of 130 steps")
    assert "14-minute budget" in sentence and "21.0 min at 130 steps" in sentence
    fits = build_report(
        kind="lm", run={}, data={}, recipe={}, models={}, budget={**budget, "steps": 130}
    )
    assert summary_table(fits).splitlines()[-1] == "time budget: all 130 steps"
    no_budget = build_report(kind="lm", run={}, data={}, recipe={}, models={})
    assert "time budget" not in summary_table(no_budget)
