"""A time budget for a whole run: measure this machine, then fit the step count to it.

The other kinds (classify, reason, context) fit theirs where their teacher's work is done
and their students are about to train (`student_steps`): the time the run has taken so
far is measured, not estimated, and a few throwaway steps of the first student time a step.

Machines of one kind differ by up to 3× in speed, so a fixed step count that fits 15
minutes on one can take 30 on another. With ``budget_minutes`` set (the embedded default
recipe sets it), the run times the teacher's forward pass and two training steps of the
student on this machine before teaching, estimates the whole run (teach, student,
baseline, evaluation), and lowers ``train.steps`` until the estimate fits. The decision
is kept in ``stages/budget.json`` (a resumed run reuses it, so its fingerprints do not
move) and shown in the report. A machine fast enough keeps every step: the result is
the unscaled recipe's.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import torch

from potstill.config import Recipe
from potstill.data.order import scheduled_blocks
from potstill.losses import LossTerm
from potstill.models.quantize import prepare_qat
from potstill.models.student import build_student, wrap_adapter
from potstill.pipeline.context import RunContext
from potstill.signals import SignalRequest
from potstill.tasks.causal_lm import CausalLM
from potstill.teachers import LiveTeacher
from potstill.util.distributed import on_main
from potstill.util.io import atomic_write_json
from potstill.util.log import log

# A cache-fed KD step costs this much more than a cross-entropy step (the sparse KD
# term on top of the same forward/backward; see bench/results/step.txt).
KD_STEP_FACTOR = 1.2
# Fixed costs not covered by the measurements: saving students, loading them for
# evaluation, generation-speed timing, the report.
OVERHEAD_SECONDS = 45.0
MIN_STEPS = 20
# Teaching a block costs its forward pass plus the top-k, the fidelity sample and the
# entropy coder: about a quarter more (bench/results/defaults.md).
TEACH_FACTOR = 1.25
# Teaching this much slower than estimated counts as a slower machine (below: noise).
SLOWDOWN_TOLERANCE = 1.1
# ...once teaching (or its estimate) took this long: a shorter one measures nothing.
MIN_TEACH_SAMPLE_SECONDS = 10.0


def fit_steps(requested: int, seconds: Callable[[int], float], limit: float) -> int:
    """The most steps, from ``requested`` down by 5% at a time to `MIN_STEPS`, whose
    ``seconds(steps)`` fits ``limit``; `MIN_STEPS` when none does.

    >>> fit_steps(130, lambda steps: steps * 1.0, 100.0), fit_steps(130, lambda s: 1e9, 1.0)
    (98, 20)
    """
    steps = requested
    while steps > MIN_STEPS and seconds(steps) > limit:
        steps = max(MIN_STEPS, int(steps * 0.95))
    return steps


def fit_budget(ctx: RunContext, started: float) -> Recipe:
    """The recipe to run: ``ctx.recipe`` with ``train.steps`` fitted to its budget."""
    recipe = ctx.recipe
    if recipe.budget_minutes is None:
        return recipe
    path = ctx.run_dir / "stages" / "budget.json"
    if path.is_file():
        decision = json.loads(path.read_text())
    else:
        decision = _decide(ctx, started)
        atomic_write_json(path, decision)
    steps = decision["steps"]
    if steps != recipe.train.steps:
        log(
            f"budget {recipe.budget_minutes:g} min: train.steps {recipe.train.steps} → {steps} "
            f"on this machine (estimated {decision['estimated_minutes_at_requested']:.1f} min "
            f"at {recipe.train.steps} steps)"
        )
    else:
        log(
            f"budget {recipe.budget_minutes:g} min: all {steps} steps fit (estimated "
            f"{decision['estimated_minutes']:.1f} min)"
        )
    return recipe.model_copy(update={"train": recipe.train.model_copy(update={"steps": steps})})


def _decide(ctx: RunContext, started: float) -> dict[str, Any]:
    recipe, data = ctx.recipe, ctx.data
    teacher_block = _teacher_seconds_per_block(ctx)
    step = _student_step_seconds(ctx)
    kd_step = step * (KD_STEP_FACTOR if recipe.needs_teacher_logits else 1.0)
    baseline_step = step if recipe.eval.baseline else 0.0
    heldout_blocks = len(data.heldout)
    # The held-out loss logged while training (train.eval_every), per step and model.
    watch = _heldout_seconds_per_step(recipe, step, heldout_blocks)
    trained_models = 2 if recipe.eval.baseline else 1
    # evaluation: teacher + two students forward over the held-out blocks
    evaluate = heldout_blocks * teacher_block * 1.8
    spent = time.perf_counter() - started
    cached = recipe.needs_teacher_logits and recipe.teach.enabled

    def estimate(steps: int) -> float:
        cfg = recipe.train
        blocks = len(
            scheduled_blocks(
                len(data.train),
                micro_batches=steps * cfg.grad_accum,
                batch_size=cfg.batch_size,
                seed=cfg.seed,
            )
        )
        teach = blocks * teacher_block * TEACH_FACTOR if cached else 0.0
        live = 0.0 if cached or not recipe.needs_teacher_logits else steps * cfg.batch_size
        live *= teacher_block
        train = steps * (cfg.grad_accum * (kd_step + baseline_step) + trained_models * watch)
        train += live
        return spent + teach + train + evaluate + OVERHEAD_SECONDS

    steps = fit_steps(recipe.train.steps, estimate, recipe.budget_minutes * 60)
    train_seconds_per_step = recipe.train.grad_accum * (kd_step + baseline_step)
    train_seconds_per_step += trained_models * watch
    return {
        "minutes": recipe.budget_minutes,
        "requested_steps": recipe.train.steps,
        "steps": steps,
        "estimated_minutes": estimate(steps) / 60,
        "estimated_minutes_at_requested": estimate(recipe.train.steps) / 60,
        "estimated_seconds": {
            "teach": estimate(steps)
            - spent
            - steps * train_seconds_per_step
            - evaluate
            - OVERHEAD_SECONDS,
            "train_per_step": train_seconds_per_step,
            "evaluate": evaluate,
        },
        "measured": {
            "teacher_seconds_per_block": teacher_block,
            "student_step_seconds": step,
            "seconds_before_teaching": spent,
        },
    }


def refit_after_teach(ctx: RunContext, started: float, teach_seconds: float) -> Recipe:
    """Check the budget again once teaching has really run, and lower the steps if the
    machine turned out slower than its first measurement said.

    Teaching takes minutes, a far longer sample than the first measurement. If it ran
    slower than estimated, training and evaluation are assumed to run slower by the same
    factor. Fewer steps visit a prefix of the taught blocks, so the cache still covers
    them. Done once: a resumed run reuses the decision.
    """
    recipe = ctx.recipe
    path = ctx.run_dir / "stages" / "budget.json"
    if recipe.budget_minutes is None or not path.is_file():
        return recipe
    decision = json.loads(path.read_text())
    if "refit" in decision or "estimated_seconds" not in decision:
        return recipe
    estimated = decision["estimated_seconds"]
    ratio = teach_seconds / max(estimated["teach"], 1e-9)
    # A teach that took seconds is no sample of the machine: a one-second hiccup on a
    # tiny model read as a 500x slowdown and cut a run with an hour to spare.
    long_enough = max(teach_seconds, estimated["teach"]) >= MIN_TEACH_SAMPLE_SECONDS
    slowdown = ratio if ratio > SLOWDOWN_TOLERANCE and long_enough else 1.0
    left = recipe.budget_minutes * 60 - (time.perf_counter() - started)
    per_step, evaluate = estimated["train_per_step"], estimated["evaluate"]

    def remaining(steps: int) -> float:
        return (steps * per_step + evaluate) * slowdown + OVERHEAD_SECONDS

    steps = fit_steps(recipe.train.steps, remaining, left)
    decision["refit"] = {
        "teach_seconds": teach_seconds,
        "estimated_teach_seconds": estimated["teach"],
        "ratio": ratio,
        "slowdown": slowdown,
        "steps_before": recipe.train.steps,
        "steps": steps,
    }
    decision["refit"]["estimated_minutes"] = (
        recipe.budget_minutes * 60 - left + remaining(steps)
    ) / 60
    decision["steps"] = steps
    atomic_write_json(path, decision)
    if steps != recipe.train.steps:
        log(
            f"budget: teaching ran {slowdown:.1f}x slower than measured; train.steps "
            f"{recipe.train.steps} → {steps}"
        )
    return recipe.model_copy(update={"train": recipe.train.model_copy(update={"steps": steps})})


def _heldout_seconds_per_step(recipe: Recipe, step: float, heldout_blocks: int) -> float:
    """The held-out loss's cost averaged over the steps: ``eval_blocks`` forward passes
    every ``eval_every`` steps, a forward taken as a third of a block's training step
    (forward and backward)."""
    cfg = recipe.train
    if cfg.eval_every is None:
        return 0.0
    block_forward = step / (3 * cfg.batch_size * cfg.grad_accum)
    return min(cfg.eval_blocks, heldout_blocks) * block_forward / cfg.eval_every


def _teacher_seconds_per_block(ctx: RunContext) -> float:
    """The teacher's forward pass over one teach batch, per block (second of two runs)."""
    n = min(ctx.recipe.teach.batch_size, len(ctx.data.train))
    batch = ctx.data.train.batch(torch.arange(n))
    live = LiveTeacher(ctx.teacher, autocast_dtype=ctx.autocast_dtype)
    seconds = []
    for _ in range(2):
        begin = time.perf_counter()
        live.outputs(batch, SignalRequest())
        seconds.append(time.perf_counter() - begin)
    return min(seconds) / n


def _student_step_seconds(ctx: RunContext) -> float:
    """Two forward/backward/update steps of a throwaway student with cross-entropy."""
    recipe = ctx.recipe
    student, _ = build_student(recipe.student, ctx.teacher, ctx.tokenizer, seed=recipe.train.seed)
    if ctx.qat is not None:  # fake quantization makes every step dearer
        prepare_qat(student, ctx.qat)
    model = wrap_adapter(student.to(ctx.device), recipe.student)
    task = CausalLM([LossTerm("cross_entropy")], chunk_tokens=recipe.train.chunk_tokens)
    n = min(recipe.train.batch_size, len(ctx.data.train))
    batch = ctx.data.train.batch(torch.arange(n)).to(ctx.device)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.0)
    rng = torch.get_rng_state()
    seconds = []
    model.train()
    for _ in range(3):
        begin = time.perf_counter()
        loss, _ = task.loss(model, batch, None, num_tokens=task.count(batch))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        seconds.append(time.perf_counter() - begin)
    torch.set_rng_state(rng)
    del model, student, optimizer
    return min(seconds[1:]) * recipe.train.grad_accum


# The share of the time left after the teacher's work that the kinds other than lm keep
# for scoring their models (a classifier over the test set, a reasoner generating its
# answers): not measured before training, so reserved.
EVALUATE_SHARE = 0.2


def student_steps(ctx: RunContext, step_seconds: Callable[[], float]) -> int:
    """The steps every student of a classify, reason or context run trains under
    ``budget_minutes`` (the recipe's ``train.steps`` without one), decided once, when the
    first student is about to train, and kept in ``stages/budget.json``.

    What the run has spent so far (labelling, the teacher's test scores, its traces) is
    measured; ``step_seconds()`` times a step of the first student; each of the
    ``ctx.models_to_train`` models takes as long a step (the first is the dearest: a full
    fine-tune before adapters). `EVALUATE_SHARE` of what is left is kept for scoring.
    Every student trains the same number of steps, so they stay comparable.
    """
    recipe = ctx.recipe
    requested = recipe.train.steps
    if recipe.budget_minutes is None:
        return requested
    path = ctx.run_dir / "stages" / "budget.json"
    if path.is_file():
        return int(json.loads(path.read_text())["steps"])
    step = step_seconds()  # every process: the throwaway steps are collective

    def decide() -> dict[str, Any]:
        spent = time.perf_counter() - ctx.started
        budget = recipe.budget_minutes * 60
        per_step = step * ctx.models_to_train

        def estimate(steps: int) -> float:
            return spent + (steps * per_step + OVERHEAD_SECONDS) / (1 - EVALUATE_SHARE)

        steps = fit_steps(requested, estimate, budget)
        decision = {
            "minutes": recipe.budget_minutes,
            "requested_steps": requested,
            "steps": steps,
            "estimated_minutes": estimate(steps) / 60,
            "estimated_minutes_at_requested": estimate(requested) / 60,
            "measured": {
                "seconds_before_training": spent,
                "student_step_seconds": step,
                "models": ctx.models_to_train,
            },
        }
        atomic_write_json(path, decision)
        return decision

    decision = on_main(decide)
    steps = decision["steps"]
    spent = decision["measured"]["seconds_before_training"]
    log(
        f"budget {recipe.budget_minutes:g} min: {spent:.0f} s spent before training; "
        + (
            f"all {steps} steps fit"
            if steps == requested
            else f"train.steps {requested} → {steps} for each of {ctx.models_to_train} models"
        )
        + f" (estimated {decision['estimated_minutes']:.1f} min)"
    )
    return steps
