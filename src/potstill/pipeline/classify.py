"""``task: classify``: the teacher labels the texts, classifier students learn its soft
labels (one per adapter: full, LoRA, PiSSA), a baseline learns its hard labels only, and
every model is scored on the user's labelled test set.
"""

from __future__ import annotations

import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from potstill.config import Recipe
from potstill.data.examples import ClassExamples
from potstill.data.texts import read_texts
from potstill.evaluation.classify import ClassScores, class_scores, score_classifiers
from potstill.evaluation.report import Report, build_report, write_report
from potstill.evaluation.size import size_on_disk
from potstill.losses import LossTerm
from potstill.models.classifier import save_classifier, trainable_params, wrap_classifier_adapter
from potstill.models.load import load_sequence_classifier
from potstill.pipeline.context import RunContext
from potstill.pipeline.label import label_only
from potstill.pipeline.markers import fingerprint, finished, mark_finished
from potstill.pipeline.run_dir import prepare_run_dir
from potstill.pipeline.stages import read_curves
from potstill.synth.label import apply_calibration, score_labels
from potstill.synth.prompt import build_prompt
from potstill.tasks.classify import Classify
from potstill.teachers.labels import SoftLabels
from potstill.train.loop import train
from potstill.util.errors import PotstillError
from potstill.util.log import log

DEFAULT_CLASSIFIER = "bundled:all-minilm-l6-v2"
ADAPTERS = ("full", "lora", "pissa")
CE_ONLY = [LossTerm("cross_entropy")]


def run_classify(recipe: Recipe, *, resume: bool = False) -> tuple[Report, Path]:
    """label → one student per adapter → hard-label baseline → test-set scores → report."""
    started = time.perf_counter()
    task = recipe.task
    if task.test is None or task.label_field is None:
        raise PotstillError(
            "task: classify needs a labelled test set: set task.test to its file and "
            "task.label_field to the field holding each text's label"
        )
    names = task.label_names
    test = read_texts(task.test, task.text_field, task.label_field)
    unknown = sorted({label for label in test.labels or [] if label not in names})
    if unknown:
        raise PotstillError(
            f"task.test {test.name}: label {unknown[0]!r} is not one of task.labels "
            f"({', '.join(names)}); fix the file or add the label"
        )
    gold = torch.tensor([names.index(label) for label in test.labels or []])
    run_dir = prepare_run_dir(recipe, resume=resume)
    ctx = RunContext(recipe, run_dir)
    labelling = time.perf_counter()
    table = label_only(recipe, ctx)
    label_seconds = time.perf_counter() - labelling
    train_texts = read_texts(task.train, task.text_field)
    soft = np.asarray(table.probs, dtype=np.float64)  # calibrated by `label` when asked
    hard = soft.argmax(-1)

    teacher_started = time.perf_counter()
    prompt = build_prompt(ctx.tokenizer, task.to_spec())
    teacher_scores = score_labels(
        ctx.teacher, prompt, test.texts, batch_size=task.batch_size, max_length=task.max_length
    )
    teacher_seconds = time.perf_counter() - teacher_started
    teacher_probs = torch.as_tensor(
        _soft_labels(teacher_scores.softmax(), table.prior if task.calibrate else None)
    )

    ref = recipe.student.model or DEFAULT_CLASSIFIER
    if recipe.student.model is None:
        log(f"student: {ref} (set student.model to choose another classifier)")
    adapters = recipe.student.adapters or list(ADAPTERS)
    trained: dict[str, dict[str, Any]] = {}
    for adapter in adapters:
        trained[f"student-{adapter}"] = _train_student(
            ctx,
            ref,
            adapter,
            train_texts.texts,
            hard,
            soft,
            recipe.terms,
            name=f"student-{adapter}",
        )
    if recipe.eval.baseline:
        trained["baseline"] = _train_student(
            ctx, ref, "full", train_texts.texts, hard, None, CE_ONLY, name="baseline"
        )

    loaded = {
        name: load_sequence_classifier(str(run_dir / name), len(names), label_names=names)
        for name in trained
    }
    models = {name: model for name, (model, _) in loaded.items()}
    tokenizer = next(iter(loaded.values()))[1]
    test_examples = ClassExamples(tokenizer, test.texts, gold)
    scores = score_classifiers(
        models, test_examples, gold, teacher_probs=teacher_probs, batch_size=32
    )
    entries: dict[str, dict[str, Any]] = {
        "teacher": _teacher_entry(recipe, ctx, teacher_probs, gold, len(test) / teacher_seconds)
    }
    for name, info in trained.items():
        entries[name] = {
            **_entry(scores[name]),
            "ref": str(run_dir / name),
            "params": sum(p.numel() for p in models[name].parameters()),
            "trainable_params": info["trainable_params"],
            "size_bytes": size_on_disk(run_dir / name),
            "train_seconds": info["seconds"],
        }
    report = build_report(
        run={
            "name": recipe.name,
            "wall_seconds": time.perf_counter() - started,
            "device": str(ctx.device),
            "threads": torch.get_num_threads(),
            "machine": platform.processor() or platform.machine(),
        },
        data={"name": test.name, "split": f"test: {len(test)} labelled texts"},
        recipe={
            "task": "classify",
            "labels": names,
            "train_texts": len(train_texts),
            "label_seconds": round(label_seconds, 1),
            "teacher_prior": [round(float(p), 4) for p in table.prior],
            "calibrated": task.calibrate,
            "truncated": int(sum(table.truncated_rows)),
            "student": ref,
            "adapters": adapters,
            "loss": [
                {"loss": t.loss, "weight": t.weight, "temperature": t.temperature}
                for t in recipe.terms
            ],
            **recipe.train.model_dump(include={"steps", "batch_size", "lr"}),
            "confusion": {name: s.confusion for name, s in scores.items()},
        },
        models=entries,
    )
    write_report(run_dir, report, read_curves(run_dir / "metrics.jsonl"))
    return report, run_dir


def _soft_labels(probs: np.ndarray, prior: np.ndarray | None) -> np.ndarray:
    """The teacher's label distributions, with the prior divided out when calibrating."""
    if prior is None:
        return np.asarray(probs, dtype=np.float64)
    return np.exp(apply_calibration(np.log(np.clip(probs, 1e-300, None)), prior))


def _train_student(
    ctx: RunContext,
    ref: str,
    adapter: str,
    texts: list[str],
    hard: np.ndarray,
    soft: np.ndarray | None,
    terms: list[LossTerm],
    *,
    name: str,
) -> dict[str, Any]:
    recipe, run_dir = ctx.recipe, ctx.run_dir
    print_ = fingerprint(
        name,
        ref,
        adapter,
        [[t.loss, t.weight, t.temperature] for t in terms],
        recipe.train.model_dump(exclude={"threads", "log_every", "checkpoint_every"}),
        recipe.student.lora.model_dump(),
        hard.tolist(),
        None if soft is None else soft.round(6).tolist(),
    )
    done = finished(run_dir, name, print_)
    if done is not None and (run_dir / name / "config.json").is_file():
        log(f"{name}: already trained, skipping")
        return done
    names = recipe.task.label_names
    torch.manual_seed(recipe.train.seed)  # the new head's initialisation, whatever ran before
    model, tokenizer = load_sequence_classifier(ref, len(names), label_names=names)
    lora = recipe.student.lora
    model = wrap_classifier_adapter(
        model,
        adapter,
        r=lora.r,
        alpha=lora.alpha,
        dropout=lora.dropout,
        target_modules=None if lora.target_modules == "all-linear" else lora.target_modules,
    )
    examples = ClassExamples(
        tokenizer,
        texts,
        torch.as_tensor(hard),
        None if soft is None else torch.as_tensor(soft, dtype=torch.float32),
    )
    cfg = recipe.train
    if adapter != "full" and lora.lr is not None:
        cfg = cfg.model_copy(update={"lr": lora.lr})
    result = train(
        model,
        examples,
        Classify(terms),
        cfg,
        teacher=None
        if soft is None
        else SoftLabels.from_probs(torch.as_tensor(soft, dtype=torch.float32)),
        name=name,
        checkpoint_dir=run_dir / "checkpoints" / name,
        metrics_path=run_dir / "metrics.jsonl",
        resume=True,
    )
    save_classifier(model, tokenizer, run_dir / name)
    return mark_finished(
        run_dir, name, print_, seconds=result.seconds, trainable_params=trainable_params(model)
    )


def _entry(scores: ClassScores) -> dict[str, Any]:
    return {
        "accuracy": scores.accuracy,
        "f1": scores.macro_f1,
        "ece": scores.ece,
        "agreement": {"top1": scores.agreement} if scores.agreement is not None else None,
        "examples_per_second": {str(k): v for k, v in scores.examples_per_second.items()},
    }


def _teacher_entry(
    recipe: Recipe, ctx: RunContext, probs: torch.Tensor, gold: torch.Tensor, rate: float
) -> dict[str, Any]:
    scores = class_scores(probs, gold)
    return {
        **_entry(scores),
        "agreement": None,
        "ref": recipe.teacher,
        "params": sum(p.numel() for p in ctx.teacher.parameters()),
        "examples_per_second": {"8": rate},
    }
