"""Runs of the pipeline: the whole plan (`run`), or one stage (`teach`, `distill`)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from potstill.cache.reader import TeacherCache
from potstill.config import Recipe
from potstill.evaluation.report import Report
from potstill.pipeline.budget import fit_budget, refit_after_teach
from potstill.pipeline.classify import run_classify
from potstill.pipeline.context import RunContext
from potstill.pipeline.context_distill import run_context_distillation
from potstill.pipeline.generate import generate_only
from potstill.pipeline.reason import run_reasoning
from potstill.pipeline.run_dir import prepare_run_dir, run_dir_of
from potstill.pipeline.stages import (
    CE_ONLY,
    distill_stage,
    evaluate_stage,
    quantize_stage,
    report_stage,
    teacher_signal,
)
from potstill.util.distributed import launched_world, on_main
from potstill.util.errors import PotstillError


@dataclass(frozen=True)
class RunResult:
    """What `run` leaves: the typed report and the run folder."""

    report: Report | None
    run_dir: Path

    @property
    def html(self) -> Path:
        return self.run_dir / "report.html"


def plan(recipe: Recipe) -> list[str]:
    """The stages `run` performs for ``recipe``, in order.

    >>> plan(Recipe())
    ['teach', 'distill', 'baseline', 'evaluate', 'report']
    >>> plan(Recipe(teach={"enabled": False}, eval={"baseline": False}))
    ['distill', 'evaluate', 'report']

    With ``generate.prompts`` set, the teacher first writes its answers (the data the
    recipe's ``data.path`` then names), or finishes writing them:

    >>> plan(Recipe(generate={"prompts": "prompts.txt"}))[0]
    'generate'
    """
    stages = []
    if recipe.generate.prompts is not None:
        stages.append("generate")
    if recipe.needs_teacher_logits and recipe.teach.enabled:
        stages.append("teach")
    stages.append("distill")
    if recipe.eval.baseline:
        stages.append("baseline")
    if recipe.eval.quantize:
        stages.append("quantize")
    stages += ["evaluate", "report"]
    return [s for s in stages if recipe.wants(s)]


def run(recipe: Recipe, *, resume: bool = False) -> RunResult:
    """Run ``recipe``'s plan: teach, distil, train the baseline, evaluate, report."""
    if launched_world().distributed:
        raise PotstillError(
            "potstill run is one process; under torchrun or accelerate launch run its "
            "stages: potstill teach RECIPE, then potstill distill RECIPE (then potstill "
            "eval in one process)"
        )
    if recipe.task.kind == "classify":
        report, run_dir = run_classify(recipe, resume=resume)
        return RunResult(report, run_dir)
    if recipe.task.kind == "reason":
        report, run_dir = run_reasoning(recipe, resume=resume)
        return RunResult(report, run_dir)
    started = time.perf_counter()
    stages = plan(recipe)
    if "generate" in stages:
        # Resumable and deduplicated: rows already written (by `potstill generate` or an
        # earlier run) are kept, only missing ones are generated. A finished run is
        # refused (without --resume) before the teacher is loaded.
        prepare_run_dir(recipe, resume=resume)
        generate_only(recipe)
    if recipe.task.kind == "context":
        report, run_dir = run_context_distillation(recipe, resume=resume)
        return RunResult(report, run_dir)
    if "report" in stages and "evaluate" not in stages:
        raise PotstillError("stages: report needs evaluate; add it, or drop report")
    ctx = RunContext(recipe, prepare_run_dir(recipe, resume=resume), resume)
    _ = ctx.inside  # resolving the layer maps refuses an impossible one before teaching
    _ = ctx.qat  # and a quantization the student cannot take
    ctx.recipe = fit_budget(ctx, started)
    teaching = time.perf_counter()
    source, source_print = teacher_signal(ctx, teach_now="teach" in stages)
    if "teach" in stages:
        ctx.recipe = refit_after_teach(ctx, started, time.perf_counter() - teaching)
    trained: dict[str, tuple[float, str]] = {}
    if "distill" in stages:
        trained["student"] = distill_stage(
            ctx, name="student", terms=recipe.terms, source=source, source_print=source_print
        )
    if "baseline" in stages:
        trained["baseline"] = distill_stage(
            ctx, name="baseline", terms=CE_ONLY, source=None, source_print="none"
        )
    if "quantize" in stages:
        if "student" not in trained:
            raise PotstillError("stages: quantize needs distill (the student it quantizes)")
        trained |= quantize_stage(ctx, trained["student"])
    report = None
    if "evaluate" in stages:
        models, samples = evaluate_stage(ctx, trained)
        if "report" in stages:
            report = report_stage(
                ctx,
                models,
                source=source,
                wall_seconds=time.perf_counter() - started,
                samples=samples,
            )
    return RunResult(report, ctx.run_dir)


def _lm_only(recipe: Recipe, verb: str) -> None:
    """``teach`` and ``distill`` are the language-model flow's stages; another kind's
    stages are planned by its own flow, which ``potstill run`` performs."""
    if recipe.task.kind != "lm":
        raise PotstillError(
            f"potstill {verb} is for task.kind lm; this recipe is task.kind "
            f"{recipe.task.kind}: run it with potstill run RECIPE (and --resume to go on)"
        )


def teach_only(recipe: Recipe) -> TeacherCache:
    """Fill (or finish) the recipe's teacher cache; return it. Under ``torchrun`` each
    process teaches its share of the shards (`potstill.cache.teach.teach`)."""
    _lm_only(recipe, "teach")
    # An existing cache of the same recipe is always continued: it is verified shard by
    # shard, and teaching is deterministic, so that is the same as starting again.
    if not recipe.needs_teacher_logits:
        raise PotstillError("this recipe has no distillation loss term: nothing to teach")
    ctx = RunContext(recipe, run_dir_of(recipe))
    _ = ctx.data  # bad data is refused before the run folder's config.yaml is touched
    on_main(lambda: prepare_run_dir(recipe, resume=True))
    source, _ = teacher_signal(ctx, teach_now=True)
    if not isinstance(source, TeacherCache):
        raise PotstillError("teach.enabled is false: set teach.enabled=true to teach a cache")
    return source


def distill_only(recipe: Recipe, *, resume: bool = False) -> Path:
    """Train the recipe's student from its cache (or a live teacher); return its folder.
    Under ``torchrun`` / ``accelerate launch`` it trains data parallel (`potstill.train`)."""
    _lm_only(recipe, "distill")
    ctx = RunContext(recipe, on_main(lambda: prepare_run_dir(recipe, resume=resume)), resume)
    source, source_print = teacher_signal(ctx, teach_now=False)
    distill_stage(ctx, name="student", terms=recipe.terms, source=source, source_print=source_print)
    return ctx.run_dir / "student"
