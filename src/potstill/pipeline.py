"""The whole pipeline behind ``potstill run``: distil, train the baseline, evaluate, report.

Each stage leaves a finished artefact in the run folder (``student/``, ``baseline/``,
``report.json``); a rerun with ``resume`` skips finished stages and continues an
interrupted one from its last checkpoint.
"""

from __future__ import annotations

import json
import platform
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from potstill.cache.store import TeacherCache
from potstill.cache.teach import source_of, teach
from potstill.config import LossTerm, Recipe
from potstill.data import LMData, load_data
from potstill.util.errors import PotstillError
from potstill.evaluate import (
    build_report,
    count_params,
    generation_tokens_per_second,
    score_models,
    size_on_disk,
    summary_table,
    write_report,
)
from potstill.util.io import atomic_write_json, atomic_write_text
from potstill.models.load import load_causal_lm, resolve
from potstill.models.student import build_student, save_student, wrap_adapter
from potstill.util.log import bar, log
from potstill.train.loop import scheduled_blocks, train
from potstill.train.teacher import LiveTeacher, TeacherSource

CE_ONLY = [LossTerm(loss="cross_entropy", weight=1.0)]


# What `potstill teach` leaves in a run folder: a later `distill` or `run` of the same
# recipe starts from it without --resume.
TEACH_OUTPUTS = {"config.yaml", "cache"}


def prepare_run_dir(recipe: Recipe, *, resume: bool) -> Path:
    """Create the run folder, or check that resuming it is safe. Never overwrites outputs."""
    run_dir = recipe.run_dir
    saved = run_dir / "config.yaml"
    if run_dir.exists() and any(run_dir.iterdir()):
        taught_only = {p.name for p in run_dir.iterdir()} <= TEACH_OUTPUTS
        if not resume and not taught_only:
            raise PotstillError(
                f"{run_dir} already exists; pass --resume to continue or finish it, "
                "or set name=NEW for a new run"
            )
        if saved.is_file() and saved.read_text() != recipe.to_yaml():
            raise PotstillError(
                f"{run_dir} was made by a different recipe (see its config.yaml); "
                "set name=NEW to start another run"
            )
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(saved, recipe.to_yaml())
    return run_dir


def load_teacher(recipe: Recipe) -> tuple[torch.nn.Module, Any]:
    log(f"teacher {recipe.teacher}")
    return load_causal_lm(recipe.teacher, log=lambda m: log(f"  {m}"))


def teacher_source(
    recipe: Recipe,
    teacher: torch.nn.Module,
    tokenizer: Any,
    data: LMData,
    *,
    teach_now: bool,
) -> TeacherSource | None:
    """Where the student's teacher signal comes from: the cache, or the live teacher.

    With ``teach.enabled`` the cache is used; ``teach_now`` fills (or finishes) it first,
    otherwise an existing one is used and, without one, the teacher runs live.
    """
    if not recipe.needs_teacher_logits:
        return None
    if not recipe.teach.enabled:
        log("teacher: live at every step (teach.enabled=false)")
        return LiveTeacher(teacher)
    directory = recipe.cache_dir
    if teach_now:
        started = time.perf_counter()
        cache = teach(recipe, teacher, tokenizer, data, log=log)
        log(f"teacher cache {directory}: {_cache_line(cache)} ({_seconds(started)})")
    elif (directory / "manifest.json").is_file():
        cache = TeacherCache.load(directory, source_of(recipe, tokenizer, data))
        log(f"teacher cache {directory}: {_cache_line(cache)}")
    else:
        log(
            f"no teacher cache at {directory}: the teacher runs live at every step "
            "(`potstill teach` first pays it once)"
        )
        return LiveTeacher(teacher)
    cache.check_covers(scheduled_blocks(len(data.train), recipe.train))
    return cache


def _cache_line(cache: TeacherCache) -> str:
    m = cache.manifest
    return (
        f"{m.tokens:,} tokens, top {m.top_k} at T={m.temperature:g}, "
        f"{m.bytes_per_token:.1f} B/token, reconstruction KL {m.reconstruction_kl_mean:.4f}"
    )


def _seconds(started: float) -> str:
    return f"{time.perf_counter() - started:.0f} s"


def distill_stage(
    recipe: Recipe,
    run_dir: Path,
    teacher: torch.nn.Module,
    tokenizer: Any,
    data: LMData,
    *,
    name: str,
    terms: list[LossTerm],
    source: TeacherSource | None,
    resume: bool,
) -> float:
    """Train one student (``name`` = "student" or "baseline") and save it; returns seconds.

    ``teacher`` is what a ``from_teacher`` student is cut from; ``source`` gives the
    teacher's signal to the KD terms (None when there are none)."""
    out = run_dir / name
    timing = run_dir / "checkpoints" / f"{name}.done.json"
    if (out / "config.json").is_file() and timing.is_file():
        log(f"{name}: already trained, skipping ({out})")
        return float(json.loads(timing.read_text())["train_seconds"])
    student, student_tokenizer = build_student(
        recipe.student, teacher, tokenizer, seed=recipe.train.seed
    )
    model = wrap_adapter(student, recipe.student)
    result = train(
        model,
        data.train,
        terms,
        recipe.train,
        teacher=source,
        name=name,
        checkpoint_dir=run_dir / "checkpoints" / name,
        metrics_path=run_dir / "metrics.jsonl",
        resume=resume,
    )
    save_student(model, student_tokenizer, out)
    atomic_write_json(timing, {"train_seconds": result.seconds, "steps": result.steps})
    shutil.rmtree(run_dir / "checkpoints" / name, ignore_errors=True)
    return result.seconds


def evaluate_models(
    refs: dict[str, str],
    data: LMData,
    *,
    teacher_key: str | None,
    batch_size: int,
    generate_tokens: int,
    preloaded: dict[str, torch.nn.Module] | None = None,
) -> dict[str, dict[str, Any]]:
    """Score every model on the held-out split; params, size on disk and generation speed."""
    models: dict[str, torch.nn.Module] = dict(preloaded or {})
    for key, ref in refs.items():
        if key not in models:
            models[key] = load_causal_lm(ref)[0]
    heldout = data.heldout
    with bar("    eval", total=len(heldout)) as progress:
        done = [0]

        def advance_to(blocks_done: int) -> None:
            progress.advance(blocks_done - done[0])
            done[0] = blocks_done

        scores = score_models(
            models,
            heldout.input_ids,
            heldout.labels,
            teacher=teacher_key,
            batch_size=batch_size,
            progress=advance_to,
        )
    prompt = heldout.input_ids[:1, :16]
    results: dict[str, dict[str, Any]] = {}
    for key, model in models.items():
        s = scores[key]
        entry: dict[str, Any] = {
            "ref": refs[key],
            "params": count_params(model),
            "size_bytes": size_on_disk(resolve(refs[key])),
            "perplexity": s.perplexity,
            "loss": s.loss,
            "tokens_per_second": generation_tokens_per_second(
                model, prompt, new_tokens=generate_tokens
            ),
        }
        if s.top1 is not None:
            entry["agreement"] = {"top1": s.top1, "kl": s.kl}
        results[key] = entry
    return results


def _term_summary(term: LossTerm) -> dict[str, Any]:
    """A loss term as the report shows it: no temperature on cross-entropy."""
    exclude = {"temperature"} if term.loss == "cross_entropy" else set()
    return term.model_dump(exclude_none=True, exclude=exclude)


def _signal_summary(source: TeacherSource | None, teach_seconds: float) -> dict[str, Any]:
    if isinstance(source, TeacherCache):
        summary = {"from": "cache", "teach_seconds": teach_seconds, **source.summary()}
        return {k: float(f"{v:.4g}") if isinstance(v, float) else v for k, v in summary.items()}
    return {"from": "live teacher" if source is not None else "none"}


def run(recipe: Recipe, *, resume: bool = False) -> Path:
    """Distil, train the baseline, evaluate all three, write the report; return its path."""
    started = time.perf_counter()
    run_dir = prepare_run_dir(recipe, resume=resume)
    if recipe.train.threads:
        torch.set_num_threads(recipe.train.threads)
    teacher, tokenizer = load_teacher(recipe)
    data = load_data(recipe.data, tokenizer)
    log(
        f"data {data.name}: {data.train.num_tokens:,} train tokens, "
        f"{data.heldout.num_tokens:,} held-out ({data.split})"
    )
    teach_started = time.perf_counter()
    source = teacher_source(recipe, teacher, tokenizer, data, teach_now=True)
    teach_seconds = time.perf_counter() - teach_started
    seconds = {
        "student": distill_stage(
            recipe,
            run_dir,
            teacher,
            tokenizer,
            data,
            name="student",
            terms=recipe.loss,
            source=source,
            resume=resume,
        ),
    }
    if recipe.eval.baseline:
        seconds["baseline"] = distill_stage(
            recipe,
            run_dir,
            teacher,
            tokenizer,
            data,
            name="baseline",
            terms=CE_ONLY,
            source=None,
            resume=resume,
        )
    refs = {"teacher": recipe.teacher, **{k: str(run_dir / k) for k in seconds}}
    models = evaluate_models(
        refs,
        data,
        teacher_key="teacher",
        batch_size=recipe.eval.batch_size,
        generate_tokens=recipe.eval.generate_tokens,
        preloaded={"teacher": teacher},
    )
    for key, secs in seconds.items():
        models[key]["train_seconds"] = secs
    report = build_report(
        run={
            "name": recipe.name,
            "wall_seconds": time.perf_counter() - started,
            "device": recipe.device,
            "threads": torch.get_num_threads(),
            "machine": platform.processor() or platform.machine(),
        },
        data={
            "name": data.name,
            "train_tokens": data.train.num_tokens,
            "heldout_tokens": data.heldout.num_tokens,
            "split": data.split,
            "fingerprint": data.fingerprint,
        },
        recipe={
            "loss": [_term_summary(t) for t in recipe.loss],
            "student": recipe.student.model_dump(
                exclude_none=True, exclude={"lora"} if recipe.student.adapter == "full" else None
            ),
            **recipe.train.model_dump(include={"steps", "batch_size", "grad_accum", "lr"}),
            "block_size": recipe.data.block_size,
            "teacher_signal": _signal_summary(source, teach_seconds),
        },
        models=models,
    )
    curves: dict[str, list[dict]] = {}
    metrics = run_dir / "metrics.jsonl"
    if metrics.is_file():
        for line in metrics.read_text().splitlines():
            row = json.loads(line)
            curves.setdefault(row["model"], []).append(row)
    paths = write_report(run_dir, report, curves)
    print(summary_table(report))
    print(f"report: {paths['report.html']}")
    return paths["report.html"]
