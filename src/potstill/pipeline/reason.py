"""Chain-of-thought distillation with checking (``task.kind: reason``).

The teacher writes ``generate.n`` reasoning traces for each of ``reason.train`` problems
with checkable answers (reasoning-gym); only the traces whose final answer checks are
kept (rejection sampling). The student learns them as chats (prompt masked), and a
second copy of the student learns the same problems' final answers alone, with no
reasoning. On ``reason.test`` held-out problems, everyone answers greedily: the teacher,
the student before training, the answers-only student and the trace-trained student;
the report's exact-match accuracies say what the traces bought.

The student may use another tokenizer than the teacher: it reads the traces as text.
A token-level KD term (e.g. ``forward_kl``) is added on the traces only when the two
share a vocabulary, and refused in one line when they do not.

Run folder: ``problems/train.jsonl`` and ``test.jsonl``; ``traces/generations.jsonl``
(the teacher's traces, resumable) and ``traces.jsonl`` (each trace with its check);
``teacher-test/generations.jsonl`` (the teacher's test answers); ``answers/NAME.jsonl``
(each model's test answers); ``student/`` and ``answers-student/`` (HF folders); the
report. Every stage is skipped on ``--resume`` when its inputs are unchanged.
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import Any

import torch

from potstill.config import Recipe
from potstill.data.chat import ChatRows
from potstill.data.problems import ANSWER_RULE, ProblemSet
from potstill.evaluation.reasoning import Answer, Solved, reply_kl, solve
from potstill.evaluation.report import Report, build_report, write_report
from potstill.evaluation.size import count_params, size_on_disk
from potstill.models.load import endpoint_model, load_causal_lm
from potstill.models.student import (
    build_student,
    load_student_model,
    save_student,
    wrap_adapter,
)
from potstill.pipeline.context import RunContext
from potstill.pipeline.generate import generate_only
from potstill.pipeline.markers import finished, mark_finished
from potstill.pipeline.run_dir import prepare_run_dir
from potstill.pipeline.stages import budget_decision, read_curves, train_summary
from potstill.pipeline.student_stage import Trainee, train_config, train_student
from potstill.synth.generations import read_generations
from potstill.synth.traces import Chat, Traces, check_traces
from potstill.tasks.causal_lm import CausalLM
from potstill.teachers.live import LiveTeacher
from potstill.train.onpolicy import OnPolicyChats
from potstill.util.errors import PotstillError
from potstill.util.fingerprint import fingerprint
from potstill.util.io import atomic_write_jsonl
from potstill.util.log import log

# The models of the report, in order: what each is.
ROLES = {
    "teacher": "the teacher, answering with its reasoning",
    "base": "the student before training",
    "answers": "the student trained on the final answers alone",
    "student": "the student trained on the teacher's checked traces",
    "on-policy": "the student trained on the teacher's checked traces and, in a share of its "
    "batches, on its own replies scored by the teacher (GKD)",
    "unchecked": "the student trained on every trace, checked or not",
}


def run_reasoning(recipe: Recipe, *, resume: bool = False) -> tuple[Report, Path]:
    """problems → teacher traces → check → train on traces / on answers → test → report."""
    started = time.perf_counter()
    cfg = recipe.reason
    _check_recipe(recipe)
    test = ProblemSet.generate(cfg.dataset, size=cfg.test, seed=cfg.seed + 1, options=cfg.options)
    train_set = ProblemSet.generate(
        cfg.dataset, size=cfg.train, seed=cfg.seed, options=cfg.options, exclude=test.questions()
    )
    ctx = RunContext(recipe, recipe.run_dir, resume, started=started)
    base, tokenizer = _student_base(ctx)  # refuses a KD term across tokenizers, first
    run_dir = prepare_run_dir(recipe, resume=resume)
    for split, problems in (("train", train_set), ("test", test)):
        _write_problems(run_dir / "problems" / f"{split}.jsonl", problems)

    traces = _traces(ctx, train_set)
    stats = traces.stats()
    log(
        f"traces: {stats['kept']} of {stats['traces']} check "
        f"({stats['problems_with_a_kept_trace']} of {stats['problems']} problems solved)"
    )
    if not traces.kept:
        raise PotstillError(
            f"none of the teacher's {stats['traces']} traces checks, so there is nothing to "
            "learn from; raise generate.n, give the teacher an easier reason.dataset, or a "
            "clearer reason.system"
        )
    solved: dict[str, Solved] = {"teacher": _teacher_answers(ctx, test)}
    models: dict[str, dict[str, Any]] = {"teacher": {"ref": recipe.teacher}}
    if endpoint_model(recipe.teacher) is None:
        models["teacher"]["params"] = count_params(ctx.teacher)

    models["base"] = {"ref": _student_ref(recipe), "params": count_params(base)}
    untrained = f"untrained {models['base']['ref']}"
    solved["base"] = _solve_cached(ctx, "base", base, tokenizer, test, untrained)
    # A local teacher that shares the student's vocabulary scores each model's own replies.
    scores = endpoint_model(recipe.teacher) is None and _same_vocab(ctx, tokenizer)
    if scores:
        models["base"]["reply_kl"] = _reply_kl(ctx, base, tokenizer, test, solved["base"])

    system = cfg.system
    sets: dict[str, list[Chat]] = {}
    if cfg.answers:
        sets["answers"] = traces.answer_chats(system)
    sets["student"] = traces.trace_chats(system)
    if cfg.on_policy is not None:
        sets["on-policy"] = sets["student"]
    if cfg.unchecked:
        sets["unchecked"] = traces.trace_chats(system, checked=False)
    on_policy: dict[str, int] = {}
    ctx.models_to_train = len(sets)
    for name, chats in sets.items():
        folder = run_dir / ("student" if name == "student" else f"{name}-student")
        info = _train(ctx, name, chats, folder, base, tokenizer)
        model, model_tokenizer = load_causal_lm(str(folder))
        model = model.to(ctx.device)
        models[name] = {
            "ref": str(folder),
            "params": count_params(model),
            "size_bytes": size_on_disk(folder),
            "train_seconds": info["seconds"],
        }
        if "sampled_batches" in info:
            on_policy = {k: info[k] for k in ("sampled_batches", "sampled_tokens")}
        made = info["fingerprint"]  # the marker's: what the model was trained from
        solved[name] = _solve_cached(ctx, name, model, model_tokenizer, test, made)
        if scores:
            models[name]["reply_kl"] = _reply_kl(ctx, model, tokenizer, test, solved[name])
        del model

    for name, result in solved.items():
        models[name].update(
            accuracy=result.accuracy,
            answered=result.answered,
            mean_answer_tokens=result.mean_tokens,
            truncated=result.truncated,
        )
        if result.seconds:
            models[name]["examples_per_second"] = {
                str(cfg.batch_size): len(result.answers) / result.seconds
            }
    report = build_report(
        kind="reason",
        budget=budget_decision(run_dir),
        curves=read_curves(run_dir / "metrics.jsonl"),
        run=ctx.run_info(time.perf_counter() - started),
        data={
            "name": f"reasoning-gym:{cfg.dataset}",
            "split": f"{len(train_set)} train problems (seed {cfg.seed}), {len(test)} held-out "
            f"test problems (seed {cfg.seed + 1}), no question in both",
        },
        recipe={
            "task": "chain-of-thought distillation",
            "dataset": cfg.dataset,
            "options": cfg.options,
            "system": system,
            "answer_rule": ANSWER_RULE,
            "samples_per_problem": recipe.generate.n,
            "sampling_temperature": recipe.generate.temperature,
            "trace_max_tokens": recipe.generate.max_tokens,
            "test_max_tokens": cfg.max_tokens,
            "traces": stats,
            "train_examples": {name: len(chats) for name, chats in sets.items()},
            **(
                {}
                if cfg.on_policy is None
                else {"on_policy": {**cfg.on_policy.model_dump(), **on_policy}}
            ),
            "roles": {name: ROLES[name] for name in models},
            **train_summary(recipe),
        },
        models=models,
    )
    write_report(run_dir, report, read_curves(run_dir / "metrics.jsonl"))
    return report, run_dir


def _check_recipe(recipe: Recipe) -> None:
    if recipe.generate.prompts is not None:
        raise PotstillError(
            "task.kind reason asks the teacher reason.train problems of its own; leave "
            "generate.prompts unset (generate sets only how traces are sampled)"
        )
    if recipe.reason.on_policy is not None and not recipe.needs_teacher_logits:
        raise PotstillError(
            "reason.on_policy trains on the student's own replies, which have no reference: "
            "the teacher must score them, so the loss needs a term that compares with it, "
            "e.g. loss: [{loss: cross_entropy, weight: 0.5}, {loss: forward_kl, weight: 0.5}]"
        )
    if recipe.needs_teacher_logits and endpoint_model(recipe.teacher) is not None:
        kd = ", ".join(t.loss for t in recipe.terms if t.spec.needs_teacher)
        raise PotstillError(
            f"loss: {kd} needs the teacher's logits, which an endpoint teacher does not give; "
            "learn from its traces alone: loss: [{loss: cross_entropy}]"
        )


def _student_ref(recipe: Recipe) -> str:
    student = recipe.student
    if student.model is not None:
        return student.model + ("" if student.layers is None else f" layers {student.layers}")
    if student.fresh is not None:
        return "fresh"
    assert student.from_teacher is not None
    return f"{recipe.teacher} layers {student.from_teacher.layers}"


def _write_problems(path: Path, problems: ProblemSet) -> None:
    atomic_write_jsonl(
        path, ({"question": p.question, "answer": p.answer} for p in problems.problems)
    )


def _sub_recipe(recipe: Recipe, folder: str, prompts: Path, **generate: Any) -> Recipe:
    """The recipe `generate_only` runs for one set of questions, into run_dir/folder."""
    settings = recipe.generate.model_copy(
        update={
            "prompts": str(prompts),
            "prompt_field": "question",
            "system": recipe.reason.system,
            "max_prompts": None,
            **generate,
        }
    )
    return recipe.model_copy(
        update={"name": folder, "runs_dir": str(recipe.run_dir), "generate": settings}
    )


def _traces(ctx: RunContext, problems: ProblemSet) -> Traces:
    """The teacher's traces for the train problems (generated, or finished, now), checked."""
    recipe = ctx.recipe
    sub = _sub_recipe(recipe, "traces", ctx.run_dir / "problems" / "train.jsonl")
    result = generate_only(sub, _local(ctx))
    traces = check_traces(read_generations(result.path), problems, samples=recipe.generate.n)
    atomic_write_jsonl(ctx.run_dir / "traces.jsonl", (t.__dict__ for t in traces.traces))
    return traces


def _teacher_answers(ctx: RunContext, problems: ProblemSet) -> Solved:
    """The teacher's greedy answers to the test problems, through the same generation
    path as its traces (so an endpoint teacher is tested too)."""
    cfg = ctx.recipe.reason
    sub = _sub_recipe(
        ctx.recipe,
        "teacher-test",
        ctx.run_dir / "problems" / "test.jsonl",
        n=1,
        temperature=0.0,
        max_tokens=cfg.max_tokens,
        batch_size=cfg.batch_size,
    )
    result = generate_only(sub, _local(ctx))
    answers = [
        Answer.of(
            problems,
            problems.index_of(row["prompt"]),
            row["response"],
            int(row.get("completion_tokens") or 0),
            row.get("finish_reason"),
        )
        for row in read_generations(result.path)
    ]
    answers.sort(key=lambda a: a.problem)
    seconds = result.seconds if result.generated == len(answers) else 0.0
    solved = Solved(answers, seconds)
    _write_answers(ctx.run_dir, "teacher", solved)
    log(f"teacher: {solved.accuracy:.1%} of {len(problems)} test problems")
    return solved


def _local(ctx: RunContext) -> RunContext | None:
    """The run's context to lend `generate_only` a local teacher; None for an endpoint."""
    return None if endpoint_model(ctx.recipe.teacher) is not None else ctx


def _student_base(ctx: RunContext) -> tuple[torch.nn.Module, Any]:
    """The untrained student and its tokenizer, on the run's device."""
    recipe = ctx.recipe
    if recipe.student.source == "model":
        model, tokenizer = load_student_model(recipe.student)
    else:
        model, tokenizer = build_student(
            recipe.student, ctx.teacher, ctx.tokenizer, seed=recipe.train.seed
        )
    if recipe.needs_teacher_logits:
        _check_vocab(ctx, tokenizer)
    return model.to(ctx.device), tokenizer


def _same_vocab(ctx: RunContext, tokenizer: Any) -> bool:
    return ctx.tokenizer.get_vocab() == tokenizer.get_vocab()


def _reply_kl(
    ctx: RunContext, model: Any, tokenizer: Any, problems: ProblemSet, solved: Solved
) -> float:
    """KL(teacher ‖ model) on ``model``'s own test replies (see `reply_kl`)."""
    cfg = ctx.recipe.reason
    return reply_kl(
        ctx.teacher,
        model,
        tokenizer,
        problems,
        solved,
        system=cfg.system,
        max_length=ctx.recipe.data.block_size,
    )


def _check_vocab(ctx: RunContext, tokenizer: Any) -> None:
    recipe = ctx.recipe
    kd = ", ".join(t.loss for t in recipe.terms if t.spec.needs_teacher)
    if not _same_vocab(ctx, tokenizer):
        raise PotstillError(
            f"loss: {kd} compares next-token distributions, but the student's tokenizer "
            f"({len(tokenizer.get_vocab()):,} tokens) is not the teacher's "
            f"({len(ctx.tokenizer.get_vocab()):,}); across tokenizers the student learns from "
            "the traces' text alone: loss: [{loss: cross_entropy}]"
        )


def _train(
    ctx: RunContext,
    name: str,
    chats: list[Chat],
    folder: Path,
    base: torch.nn.Module,
    tokenizer: Any,
) -> dict[str, Any]:
    """Train a copy of the untrained student ``base`` on ``chats`` (responses only) and
    save it (`train_student`); ``base`` itself is left as it is."""
    recipe = ctx.recipe
    rows = ChatRows.build(tokenizer, chats, max_length=recipe.data.block_size)
    # The answers-only student learns the answers' text: no term that needs the teacher.
    terms = [t for t in recipe.terms if name != "answers" or not t.spec.needs_teacher]
    on_policy = recipe.reason.on_policy if name == "on-policy" else None

    def build() -> Trainee:
        log(f"{name}: {len(rows)} chats, {rows.response_tokens():,} response tokens")
        model = wrap_adapter(copy.deepcopy(base), recipe.student)
        data: ChatRows | OnPolicyChats = rows
        if on_policy is not None:
            data = OnPolicyChats(
                rows,
                model,
                tokenizer,
                fraction=on_policy.fraction,
                temperature=on_policy.temperature,
                max_tokens=on_policy.max_tokens or recipe.generate.max_tokens,
                max_length=recipe.data.block_size,
                seed=recipe.train.seed,
            )
        teacher = LiveTeacher(ctx.teacher) if recipe.needs_teacher_logits else None
        task = CausalLM(terms, chunk_tokens=recipe.train.chunk_tokens)
        return Trainee(model, data, task, tokenizer, teacher=teacher)

    def save(trainee: Trainee) -> dict[str, int]:
        save_student(trainee.model, trainee.tokenizer, folder)
        data = trainee.data
        if not isinstance(data, OnPolicyChats):
            return {}
        # Counted in this process only (a resumed training: from where it resumed).
        return {"sampled_batches": data.sampled_batches, "sampled_tokens": data.sampled_tokens}

    return train_student(
        ctx,
        name=name,
        folder=folder,
        terms=terms,
        inputs={
            "student": recipe.student.model_dump(mode="json"),
            "teacher": recipe.teacher,
            "chats": rows.ids,
            "on_policy": None if on_policy is None else on_policy.model_dump(),
            "reply_tokens": None if on_policy is None else recipe.generate.max_tokens,
        },
        build=build,
        save=save,
        cfg=train_config(recipe, recipe.student.adapter),
        device=ctx.device,
    )


def _solve_cached(
    ctx: RunContext, name: str, model: Any, tokenizer: Any, problems: ProblemSet, made: str
) -> Solved:
    """``model``'s answers to the test problems; reused on resume when the model (``made``:
    its training fingerprint) and the test settings are unchanged."""
    cfg = ctx.recipe.reason
    stage = f"test-{name}"
    print_ = fingerprint(
        stage, made, cfg.model_dump(mode="json"), [p.question for p in problems.problems]
    )
    done = finished(ctx.run_dir, stage, print_)
    path = ctx.run_dir / "answers" / f"{name}.jsonl"
    if done is not None and path.is_file():
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        return Solved([Answer(**r) for r in rows], done["seconds"])
    log(f"{name}: answering {len(problems)} test problems")
    solved = solve(
        model,
        tokenizer,
        problems,
        system=cfg.system,
        max_tokens=cfg.max_tokens,
        batch_size=cfg.batch_size,
    )
    _write_answers(ctx.run_dir, name, solved)
    mark_finished(ctx.run_dir, stage, print_, seconds=solved.seconds, accuracy=solved.accuracy)
    log(f"{name}: {solved.accuracy:.1%} of {len(problems)} test problems")
    return solved


def _write_answers(run_dir: Path, name: str, solved: Solved) -> None:
    atomic_write_jsonl(run_dir / "answers" / f"{name}.jsonl", solved.to_rows())
