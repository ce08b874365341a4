"""The stages of a run: teach, distill, baseline, quantize, evaluate, report.

Each leaves a finished artefact (the cache, ``student/``, ``baseline/``, the evaluation,
the report files) and a marker with the fingerprint of its inputs (`markers`), so a
resumed run skips what is done and redoes what changed.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from potstill.cache.reader import TeacherCache
from potstill.cache.teach import cache_source, plan_blocks, teach
from potstill.config import Recipe
from potstill.data import Blocks
from potstill.data.order import scheduled_blocks
from potstill.evaluation.lm import continuations, evaluate_models
from potstill.evaluation.report import Report, build_report, write_report
from potstill.evaluation.report.schema import ROLES, json_ready
from potstill.evaluation.worth import generation_break_even
from potstill.losses import LossTerm
from potstill.models.load import load_causal_lm
from potstill.models.quantize import (
    QuantizationSpec,
    convert_qat,
    prepare_qat,
    quantize_model,
    save_quantized,
)
from potstill.models.student import build_student, save_student, wrap_adapter
from potstill.pipeline.context import RunContext, kept_layers
from potstill.pipeline.cross import across_source, read_in_student_ids, teach_across_stage
from potstill.pipeline.markers import finished, forget, mark_finished
from potstill.pipeline.served_teach import (
    check_served_teach,
    served_cache_source,
    served_model,
    teach_served,
)
from potstill.pipeline.student_stage import Trainee, train_config, train_student
from potstill.tasks.causal_lm import CausalLM, heldout_loss, prepare_inside
from potstill.teachers import LiveTeacher, TeacherSource
from potstill.train.loop import read_metrics
from potstill.train.settings import TrainConfig
from potstill.util.distributed import launched_world, on_main
from potstill.util.errors import PotstillError
from potstill.util.fingerprint import fingerprint
from potstill.util.log import log

CE_ONLY = [LossTerm("cross_entropy")]


# --- teach -------------------------------------------------------------------------------


def schedule(ctx: RunContext) -> list[int]:
    """The blocks training visits, in order of first visit (the cache must hold them)."""
    cfg = ctx.recipe.train
    return scheduled_blocks(
        len(ctx.data.train),
        micro_batches=cfg.steps * cfg.grad_accum,
        batch_size=cfg.batch_size,
        seed=cfg.seed,
    )


def cache_plan(ctx: RunContext) -> list[int]:
    """The blocks to teach: the schedule's, or more with `teach.blocks`."""
    return plan_blocks(schedule(ctx), len(ctx.data.train), ctx.recipe.teach.blocks)


def _source(ctx: RunContext) -> dict[str, Any]:
    return cache_source(
        ctx.recipe.teacher,
        ctx.tokenizer,
        data_fingerprint=ctx.data.fingerprint,
        block_size=ctx.recipe.data.block_size,
    )


def teacher_signal(ctx: RunContext, *, teach_now: bool) -> tuple[TeacherSource | None, str]:
    """Where the student's teacher signal comes from, and that source's fingerprint.

    With ``teach.enabled`` the cache is used; ``teach_now`` fills (or finishes) it first,
    otherwise an existing one is used and, without one, the teacher runs live.
    """
    recipe = ctx.recipe
    if not recipe.needs_teacher_logits:
        return None, "none"
    served = served_model(recipe)  # the teacher pass runs on a server that serves it
    if served is not None:
        check_served_teach(recipe)
    live = LiveTeacher(ctx.teacher, autocast_dtype=ctx.autocast_dtype)
    live_print = fingerprint("live", ctx.teacher_sha256, recipe.teacher)
    if not recipe.teach.enabled:
        log("teacher: live at every step (teach.enabled=false)")
        return live, live_print
    directory = recipe.cache_dir
    if not teach_now and not (directory / "manifest.json").is_file():
        if ctx.across:
            raise PotstillError(
                f"no teacher cache at {directory}, and a student of another tokenizer learns "
                "from a cache taught across tokenizers: run potstill teach RECIPE first"
            )
        log(
            f"no teacher cache at {directory}: the teacher runs live at every step "
            "(`potstill teach` first pays it once)"
        )
        return live, live_print
    if ctx.across:  # the cache holds the teacher's ids at the aligned positions
        source = across_source(ctx)
    else:
        source = _source(ctx) if served is None else served_cache_source(ctx)
    plan = cache_plan(ctx)
    # Teaching through a server: its model's name is in the source, and how it is reached
    # changes no signal. Teaching here: fingerprinted as before the server's keys existed.
    served_keys = True if served is not None else {"model", "max_logprobs", "token_ids"}
    settings = recipe.teach.model_dump(
        exclude={"cache": True, "batch_size": True, "shard_blocks": True, "blocks": True}
        | {"cache_memory_mb": True, "endpoint": served_keys}
    )
    hidden_layers = ctx.inside.hidden_layers
    if not hidden_layers or not settings["hidden_error"]:  # as before the key existed
        settings.pop("hidden_error")
    # What each block's cached signal depends on; the plan only says which blocks.
    content = fingerprint(source, settings, recipe.teach_temperature, *hidden_layers)
    print_ = fingerprint(content, plan)
    if teach_now:
        on_main(lambda: _drop_stale_cache(ctx, content))
        started = time.perf_counter()
        if ctx.across:
            cache = teach_across_stage(ctx, source=source, plan=plan)
        elif served is not None:
            cache = teach_served(ctx, source=source, plan=plan)
        else:
            cache = teach(
                live,
                ctx.data.train,
                directory=directory,
                source=source,
                settings=recipe.teach,
                temperature=recipe.teach_temperature,
                plan=plan,
                log=log,
                hidden_layers=hidden_layers,
            )
        seconds = time.perf_counter() - started

        def record() -> None:  # first time (or changed): how long teaching took
            if finished(ctx.run_dir, "teach", print_) is None:
                mark_finished(ctx.run_dir, "teach", print_, content=content, seconds=seconds)

        on_main(record)
        log(f"teacher cache {directory}: {cache.manifest.describe()} ({seconds:.0f} s)")
    else:
        cache = TeacherCache.load(directory, source, memory_mb=recipe.teach.cache_memory_mb)
        log(f"teacher cache {directory}: {cache.manifest.describe()}")
    if ctx.across:
        read_in_student_ids(ctx, cache)
    cache.check_covers(schedule(ctx))
    return cache, print_


def _drop_stale_cache(ctx: RunContext, content: str) -> None:
    """A resumed run whose teacher signal changed (teacher, data, k, temperature, bits)
    teaches again: the run's own cache, made from the old inputs, is removed first. A
    cache named by ``teach.cache`` belongs to someone else and is never removed (a
    mismatch there is refused by the cache itself)."""
    marker = ctx.run_dir / "stages" / "teach.json"
    if ctx.recipe.teach.cache is not None or not marker.is_file():
        return
    old = json.loads(marker.read_text()).get("content")
    directory = ctx.recipe.cache_dir
    if old is not None and old != content and directory.exists():
        log(f"teach: the teacher signal's inputs changed; teaching {directory} again")
        shutil.rmtree(directory)
        forget(ctx.run_dir, "teach")


def teach_seconds(ctx: RunContext) -> float:
    path = ctx.run_dir / "stages" / "teach.json"
    return float(json.loads(path.read_text()).get("seconds", 0.0)) if path.is_file() else 0.0


# --- distill / baseline ---------------------------------------------------------------------


def distill_stage(
    ctx: RunContext,
    *,
    name: str,
    terms: list[LossTerm],
    source: TeacherSource | None,
    source_print: str,
) -> tuple[float, str]:
    """Train one student (``name`` = "student" or "baseline") and save it
    (`train_student`); returns the training seconds and the stage's fingerprint."""
    recipe, out = ctx.recipe, ctx.run_dir / name
    cfg = train_config(recipe, recipe.student.adapter)
    if source is None:  # no teacher (the baseline): no entropy to order by, random order
        cfg = cfg.model_copy(update={"curriculum": "none"})

    def build() -> Trainee:
        student, tokenizer = build_student(
            recipe.student,
            ctx.teacher,
            ctx.tokenizer,
            seed=recipe.train.seed,
            loss_names=[t.loss for t in terms if t.weight > 0],
        )
        # Hidden-state and attention terms: layer maps resolved, projections trained beside
        # the student (checkpointed with it, never saved in student/).
        inside, projections = prepare_inside(terms, student, ctx.teacher, kept=kept_layers(recipe))
        # Under FSDP the whole student stays on the host; only its shards go to the device.
        fsdp = recipe.train.parallel == "fsdp" and launched_world().distributed
        home = "cpu" if fsdp else ctx.device
        projections.to(home)
        if ctx.qat is not None:  # quantization-aware: trains through fake-quantized weights
            prepare_qat(student, ctx.qat)
        return Trainee(
            wrap_adapter(student.to(home), recipe.student),
            ctx.data.train,
            CausalLM(inside, chunk_tokens=recipe.train.chunk_tokens, projections=projections),
            tokenizer,
            teacher=source,
            extra=projections or None,
            evaluate=heldout_check(ctx.data.heldout, cfg, ctx.recipe.eval.batch_size),
        )

    def save(trainee: Trainee) -> None:
        if ctx.qat is not None:  # saved as the integers it trained towards
            model = convert_qat(trainee.model, ctx.qat)
            save_quantized(model, trainee.tokenizer, out, ctx.qat)
        else:
            save_student(trainee.model, trainee.tokenizer, out)

    marker = train_student(
        ctx,
        name=name,
        folder=out,
        terms=terms,
        inputs={
            "student": recipe.student.model_dump(mode="json"),
            "data": recipe.data.model_dump(mode="json"),
            "teacher": recipe.teacher,
            "teacher_signal": source_print,
        },
        build=build,
        save=save,
        cfg=cfg,
        device=ctx.device,
        autocast_dtype=ctx.autocast_dtype,
    )
    return float(marker["seconds"]), marker["fingerprint"]


def heldout_check(
    heldout: Blocks, cfg: TrainConfig, batch_size: int
) -> Callable[[torch.nn.Module], float] | None:
    """The student's loss on the first ``train.eval_blocks`` blocks of ``heldout``, logged
    as it trains and what its rollbacks check; None when ``train.eval_every`` is null or
    there is no held-out block. Anything that trains as the lm flow does passes it."""
    count = min(cfg.eval_blocks, len(heldout))
    if cfg.eval_every is None or count == 0:
        return None
    return heldout_loss(heldout.input_ids[:count], heldout.labels[:count], batch_size=batch_size)


# --- quantize -----------------------------------------------------------------------------------


def quantize_stage(ctx: RunContext, student: tuple[float, str]) -> dict[str, tuple[float, str]]:
    """The trained student quantized after training, once per ``eval.quantize`` entry, into
    ``runs/NAME/student-TAG/`` (``student-int4``, ``student-int8-a8``, ...); returns them as
    trained models (the student's training seconds, a fingerprint of student and spec)."""
    made: dict[str, tuple[float, str]] = {}
    for spec in ctx.recipe.eval.quantize:
        name = f"student-{spec.weights}" + ("-a8" if spec.activations == "int8" else "")
        if spec.group_size not in (None, QuantizationSpec(spec.weights).group_size):
            name += f"-g{spec.group_size}"
        if name in made:
            raise PotstillError(f"eval.quantize names {name} twice; list each quantization once")
        print_ = fingerprint(student[1], spec.model_dump())
        folder = ctx.run_dir / name
        if finished(ctx.run_dir, name, print_) is None or not folder.is_dir():
            forget(ctx.run_dir, name)
            shutil.rmtree(folder, ignore_errors=True)  # another spec's leftovers
            model, tokenizer = load_causal_lm(str(ctx.run_dir / "student"))
            save_quantized(quantize_model(model, spec), tokenizer, folder, spec)
            mark_finished(ctx.run_dir, name, print_)
            log(f"{name}: {spec.describe()} ({folder})")
        made[name] = (student[0], print_)
    return made


# --- evaluate / report ------------------------------------------------------------------------


def evaluate_stage(
    ctx: RunContext, trained: dict[str, tuple[float, str]]
) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]]]:
    """Score the teacher and every trained model; cached in the stage marker. Returns the
    models' entries and the report's ``samples``.

    Besides perplexity and agreement, each entry holds the next-token ECE, the scores by
    training-split frequency band and (students) the worst disagreements with the teacher.
    The samples are the teacher's, the student's and the baseline's greedy continuations
    of three held-out prompts (`continuations`).
    """
    recipe = ctx.recipe
    print_ = fingerprint(
        recipe.eval.model_dump(exclude={"baseline"}),
        recipe.data.model_dump(mode="json"),
        recipe.teacher,
        {name: p for name, (_, p) in trained.items()},
        # an evaluation made without one of them is redone
        "ece, frequency bands, worst disagreements, continuations",
    )
    done = finished(ctx.run_dir, "evaluate", print_)
    if done is not None:
        log("evaluate: already done for these models, skipping")
        return done["models"], done.get("samples", [])
    # Across tokenizers the teacher reads other tokens: the students are scored alone.
    teacher = {} if ctx.across else {"teacher": recipe.teacher}
    refs = {**teacher, **{k: str(ctx.run_dir / k) for k in trained}}
    loaded = {
        **({} if ctx.across else {"teacher": ctx.teacher}),
        **{k: load_causal_lm(refs[k])[0].to(ctx.device) for k in trained},
    }
    models = evaluate_models(
        refs,
        ctx.data,
        teacher_key=None if ctx.across else "teacher",
        batch_size=recipe.eval.batch_size,
        generate_tokens=recipe.eval.generate_tokens,
        preloaded=loaded,
        device=ctx.device,
        tokenizer=ctx.data_tokenizer,
    )
    for key, (seconds, _) in trained.items():
        models[key]["train_seconds"] = seconds
    samples = continuations(
        {name: loaded[name] for name in ROLES if name in loaded},
        ctx.data.heldout,
        ctx.data_tokenizer,
        new_tokens=recipe.eval.generate_tokens,
    )
    mark_finished(
        ctx.run_dir, "evaluate", print_, models=json_ready(models), samples=json_ready(samples)
    )
    return models, samples


def report_stage(
    ctx: RunContext,
    models: dict[str, dict[str, Any]],
    *,
    source: TeacherSource | None,
    wall_seconds: float,
    samples: list[dict[str, Any]] | None = None,
) -> Report:
    """Build the report from the evaluation and write it: the break-even weighs the
    teacher's pass into the cache plus the student's training against the student's
    saving per generated token."""
    recipe, data = ctx.recipe, ctx.data
    taught = teach_seconds(ctx)
    curves = read_curves(ctx.run_dir / "metrics.jsonl")
    report = build_report(
        kind="lm",
        run={
            **ctx.run_info(wall_seconds),
            "precision": str(ctx.autocast_dtype or torch.float32).removeprefix("torch."),
        },
        data={
            "name": data.name,
            "train_tokens": data.train.num_tokens,
            "heldout_tokens": data.heldout.num_tokens,
            "split": data.split,
            "fingerprint": data.fingerprint,
        },
        recipe={
            "loss": [_term_summary(t) for t in recipe.terms],
            "student": recipe.student.model_dump(
                exclude_none=True, exclude={"lora"} if recipe.student.adapter == "full" else None
            ),
            **recipe.train.model_dump(include={"steps", "batch_size", "grad_accum", "lr"}),
            "block_size": recipe.data.block_size,
            "teacher_signal": _signal_summary(source, taught),
            **_teacher_run(recipe.teacher, ctx.run_dir),
        },
        models=models,
        budget=budget_decision(ctx.run_dir),
        break_even=generation_break_even(models, teach_seconds=taught),
        curves=curves,
        samples=samples,
    )
    write_report(ctx.run_dir, report, curves)
    return report


def _teacher_run(teacher: str, run_dir: Path) -> dict[str, Any]:
    """Multi-stage distillation: when the teacher is another run's ``student/`` (teacher →
    assistant → student), the report links that run's report."""
    folder = Path(teacher).expanduser()
    report = folder.parent / "report.html"
    if folder.name != "student" or not report.is_file():
        return {}
    try:
        link = os.path.relpath(report.resolve(), run_dir.resolve())
    except ValueError:  # another drive (Windows)
        link = str(report.resolve())
    return {"teacher_run": {"name": folder.parent.name, "report": link}}


def budget_decision(run_dir: Path) -> dict[str, Any] | None:
    """The run's ``stages/budget.json`` (`potstill.pipeline.budget`), or None."""
    path = run_dir / "stages" / "budget.json"
    return json.loads(path.read_text()) if path.is_file() else None


def read_curves(metrics: Path) -> dict[str, list[dict]]:
    curves: dict[str, list[dict]] = {}
    for row in read_metrics(metrics):
        curves.setdefault(row["model"], []).append(row)
    return curves


def train_summary(recipe: Recipe) -> dict[str, Any]:
    """The report's loss terms and training settings, for the task pipelines."""
    return {
        "loss": [_term_summary(t) for t in recipe.terms],
        **recipe.train.model_dump(include={"steps", "batch_size", "lr", "seed"}),
    }


def _term_summary(term: LossTerm) -> dict[str, Any]:
    """A loss term as the report shows it: no temperature on cross-entropy."""
    summary: dict[str, Any] = {"loss": term.loss, "weight": term.weight}
    if term.spec.tempered:
        summary["temperature"] = term.temperature
    return {**summary, **term.params}


def _signal_summary(source: TeacherSource | None, seconds: float) -> dict[str, Any]:
    if isinstance(source, TeacherCache):
        summary = {"from": "cache", "teach_seconds": seconds, **source.summary()}
        return {k: float(f"{v:.4g}") if isinstance(v, float) else v for k, v in summary.items()}
    return {"from": "live teacher" if source is not None else "none"}
