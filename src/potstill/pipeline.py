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

from potstill.config import LossTerm, Recipe
from potstill.data import LMData, load_data
from potstill.errors import PotstillError
from potstill.evaluate import (
    build_report,
    count_params,
    generation_tokens_per_second,
    score_models,
    size_on_disk,
    summary_table,
    write_report,
)
from potstill.io import atomic_write_json, atomic_write_text
from potstill.models.load import load_causal_lm, resolve
from potstill.models.student import build_student, save_student, wrap_adapter
from potstill.progress import bar, log
from potstill.train.loop import train

CE_ONLY = [LossTerm(loss="cross_entropy", weight=1.0)]


def prepare_run_dir(recipe: Recipe, *, resume: bool) -> Path:
    """Create the run folder, or check that resuming it is safe. Never overwrites outputs."""
    run_dir = recipe.run_dir
    saved = run_dir / "config.yaml"
    if run_dir.exists() and any(run_dir.iterdir()):
        if not resume:
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


def distill_stage(
    recipe: Recipe,
    run_dir: Path,
    teacher: torch.nn.Module,
    tokenizer: Any,
    data: LMData,
    *,
    name: str,
    terms: list[LossTerm],
    resume: bool,
) -> float:
    """Train one student (``name`` = "student" or "baseline") and save it; returns seconds."""
    out = run_dir / name
    timing = run_dir / "checkpoints" / f"{name}.done.json"
    if (out / "config.json").is_file() and timing.is_file():
        log(f"{name}: already trained, skipping ({out})")
        return float(json.loads(timing.read_text())["train_seconds"])
    student, student_tokenizer = build_student(
        recipe.student, teacher, tokenizer, seed=recipe.train.seed
    )
    model = wrap_adapter(student, recipe.student)
    uses_teacher = any(t.loss != "cross_entropy" for t in terms)
    result = train(
        model,
        data.train,
        terms,
        recipe.train,
        teacher=teacher if uses_teacher else None,
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
    seconds = {
        "student": distill_stage(
            recipe,
            run_dir,
            teacher,
            tokenizer,
            data,
            name="student",
            terms=recipe.loss,
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
