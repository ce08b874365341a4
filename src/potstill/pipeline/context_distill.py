"""Context distillation: a prompt becomes a saved adapter.

The teacher is the recipe's model reading ``context`` (a system prompt and/or few-shot
turns) before each example's chat; the student is the same model (or ``student.model``)
with a LoRA/PiSSA adapter and no context, trained to match the teacher's next-token
distributions on the examples' responses (``data.path``: prompt/response rows, e.g. the
prompted teacher's own answers from ``potstill generate``). The report compares, on
held-out examples, the unprompted student and the unprompted base model against the
prompted teacher, and says what the context cost per call: its tokens and prefill time.
"""

from __future__ import annotations

import copy
import random
import time
from pathlib import Path
from typing import Any

from potstill.config import Recipe
from potstill.data.chat import ChatExamples
from potstill.data.sources import read_source
from potstill.evaluation.context import context_agreement, prefill_seconds
from potstill.evaluation.report import Report, build_report, write_report
from potstill.evaluation.size import count_params, size_on_disk
from potstill.models.load import load_causal_lm
from potstill.models.student import load_student_model, save_student, wrap_adapter
from potstill.pipeline.context import RunContext
from potstill.pipeline.run_dir import prepare_run_dir
from potstill.pipeline.stages import budget_decision, read_curves, train_summary
from potstill.pipeline.student_stage import Trainee, train_config, train_student
from potstill.tasks.causal_lm import CausalLM
from potstill.teachers.context import ContextTeacher
from potstill.util.errors import PotstillError
from potstill.util.log import log

SPEED_PROMPTS = 8  # held-out prompts timed for the prefill the context costs


def run_context_distillation(recipe: Recipe, *, resume: bool = False) -> tuple[Report, Path]:
    """split → train the adapter against the prompted teacher → compare → report."""
    started = time.perf_counter()
    if recipe.context is None:
        raise PotstillError("context distillation needs a context: set context.system")
    if recipe.data.path is None:
        raise PotstillError(
            "context distillation needs prompt/response rows: set data.path (for example "
            "the generations.jsonl that `potstill generate` writes)"
        )
    if not recipe.needs_teacher_logits:
        raise PotstillError(
            "context distillation matches the prompted teacher: add a KD loss term "
            "(e.g. forward_kl)"
        )
    source = read_source(recipe.data.path, recipe.data)
    if source.kind != "prompt_response":
        raise PotstillError(
            f"{recipe.data.path} holds text, not prompt/response rows; context distillation "
            "trains on answers to prompts (data.prompt_field / data.response_field)"
        )
    train_rows, heldout_rows = _split(source.documents, recipe.data.heldout, recipe.data.seed)
    run_dir = prepare_run_dir(recipe, resume=resume)
    ctx = RunContext(recipe, run_dir, started=started)
    context = recipe.context.to_context()
    limit = recipe.data.block_size
    train_set = ChatExamples.build(ctx.tokenizer, train_rows, context, max_length=limit)
    heldout = ChatExamples.build(ctx.tokenizer, heldout_rows, context, max_length=limit)
    log(
        f"context: {train_set.context_tokens():.0f} tokens the student will not read; "
        f"{len(train_set)} train and {len(heldout)} held-out examples"
    )

    info = _train_adapter(ctx, train_set)
    student, _ = load_causal_lm(str(run_dir / "student"))
    student = student.to(ctx.device)
    teacher = ContextTeacher(ctx.teacher, heldout)
    agreement = {
        "base": context_agreement(ctx.teacher, teacher, heldout),
        "student": context_agreement(student, teacher, heldout),
    }
    prompts = range(min(SPEED_PROMPTS, len(heldout)))
    with_context = prefill_seconds(
        ctx.teacher, [heldout.teacher_ids[i][: heldout.teacher_prompt[i]] for i in prompts]
    )
    without = prefill_seconds(
        ctx.teacher, [heldout.student_ids[i][: heldout.student_prompt[i]] for i in prompts]
    )
    teacher_params = count_params(ctx.teacher)
    models: dict[str, dict[str, Any]] = {
        "teacher": {"ref": f"{recipe.teacher} + context", "params": teacher_params},
        "base": {
            "ref": f"{recipe.teacher} (no context)",
            "params": teacher_params,
            "agreement": _agreement(agreement["base"]),
        },
        "student": {
            "ref": str(run_dir / "student"),
            "params": count_params(student),
            "trainable_params": info["trainable_params"],
            "size_bytes": size_on_disk(run_dir / "student" / "adapter"),
            "train_seconds": info["seconds"],
            "agreement": _agreement(agreement["student"]),
        },
    }
    report = build_report(
        kind="context",
        budget=budget_decision(run_dir),
        curves=read_curves(run_dir / "metrics.jsonl"),
        run=ctx.run_info(time.perf_counter() - started),
        data={
            "name": source.name,
            "split": f"held-out: {len(heldout)} of {len(source.documents)} examples "
            f"({agreement['student']['tokens']} response tokens)",
        },
        recipe={
            "task": "context distillation",
            "context_system": recipe.context.system,
            "context_examples": len(recipe.context.examples),
            "context_tokens_per_call": round(train_set.context_tokens(), 1),
            "prefill_ms_with_context": round(1000 * with_context, 2),
            "prefill_ms_without_context": round(1000 * without, 2),
            "adapter": recipe.student.adapter,
            **train_summary(recipe),
        },
        models=models,
    )
    write_report(run_dir, report, read_curves(run_dir / "metrics.jsonl"))
    return report, run_dir


def _split(
    rows: list[Any], fraction: float, seed: int
) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """A seeded share ``fraction`` of the examples (at least one) held out, order kept."""
    if len(rows) < 2:
        raise PotstillError(
            f"context distillation needs at least 2 prompt/response rows, got {len(rows)}"
        )
    count = min(len(rows) - 1, max(1, round(fraction * len(rows))))
    held = set(random.Random(seed).sample(range(len(rows)), count))
    train_rows = [tuple(r) for i, r in enumerate(rows) if i not in held]
    heldout_rows = [tuple(r) for i, r in enumerate(rows) if i in held]
    return train_rows, heldout_rows  # type: ignore[return-value]


def _train_adapter(ctx: RunContext, examples: ChatExamples) -> dict[str, Any]:
    """Train the student's adapter against the prompted teacher on ``examples``
    (`train_student`)."""
    recipe, folder = ctx.recipe, ctx.run_dir / "student"

    def build() -> Trainee:
        if recipe.student.model is not None:
            base, tokenizer = load_student_model(recipe.student)
            base = base.to(ctx.device)
        else:  # the teacher itself, without its context
            base, tokenizer = copy.deepcopy(ctx.teacher), ctx.tokenizer
        return Trainee(
            wrap_adapter(base, recipe.student),
            examples,
            CausalLM(recipe.terms, chunk_tokens=recipe.train.chunk_tokens),
            tokenizer,
            teacher=ContextTeacher(ctx.teacher, examples),
        )

    def save(trainee: Trainee) -> None:
        save_student(trainee.model, trainee.tokenizer, folder)

    return train_student(
        ctx,
        name="student",
        folder=folder,
        terms=recipe.terms,
        inputs={
            "student": recipe.student.model_dump(mode="json"),
            "context": recipe.context.model_dump(mode="json") if recipe.context else None,
            "data": recipe.data.model_dump(mode="json"),
            "teacher": recipe.teacher,
            "examples": examples.student_ids,
        },
        build=build,
        save=save,
        cfg=train_config(recipe, recipe.student.adapter),
        device=ctx.device,
    )


def _agreement(scores: dict[str, float]) -> dict[str, float]:
    return {"top1": scores["top1"], "kl": scores["kl"]}
