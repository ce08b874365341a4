"""``task: classify``: the teacher labels the texts, classifier students learn its soft
labels (one per adapter: full, LoRA, PiSSA), a baseline learns its hard labels only, and
every model is scored on the user's labelled test set.
"""

from __future__ import annotations

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
from potstill.evaluation.size import count_params, size_on_disk
from potstill.losses import LossTerm
from potstill.models.classifier import save_classifier, wrap_classifier_adapter
from potstill.models.load import load_sequence_classifier, resolve
from potstill.pipeline.classify_teacher import majority_entry, teacher_test_scores
from potstill.pipeline.context import RunContext
from potstill.pipeline.label import label_ids, label_only, label_spec, read_train_texts
from potstill.pipeline.run_dir import prepare_run_dir
from potstill.pipeline.stages import budget_decision, read_curves, train_summary
from potstill.pipeline.student_stage import Trainee, train_config, train_student
from potstill.tasks.classify import Classify
from potstill.teachers.labels import SoftLabels
from potstill.util.errors import PotstillError
from potstill.util.log import log

DEFAULT_CLASSIFIER = "bundled:all-minilm-l6-v2"
ADAPTERS = ("full", "lora", "pissa")
CE_ONLY = [LossTerm("cross_entropy")]


def run_classify(recipe: Recipe, *, resume: bool = False) -> tuple[Report, Path]:
    """label → teacher on the test set → one student per adapter → hard-label baseline
    (→ gold reference) → test-set scores, beside the constant commonest label → report.

    With ``resume`` each step is redone only when its own inputs changed: a new
    ``task.calibrate`` calibrates the kept raw scores again, a new training setting
    trains the students again, and neither scores a text with the teacher again.
    """
    started = time.perf_counter()
    task = recipe.task
    if task.test is None or task.label_field is None:
        raise PotstillError(
            "task: classify needs a labelled test set: set task.test to its file and "
            "task.label_field to the field holding each text's label"
        )
    names = task.label_names
    test = read_texts(task.test, task.text_field, task.label_field, limit=task.max_test)
    gold = torch.as_tensor(label_ids(test.labels or [], names, "task.test", test.name))
    train_texts = read_train_texts(recipe)
    gold_hard = (
        None
        if train_texts.labels is None
        else label_ids(train_texts.labels, names, "task.train", train_texts.name)
    )
    run_dir = prepare_run_dir(recipe, resume=resume)
    adapters = recipe.student.adapters or list(ADAPTERS)
    ctx = RunContext(
        recipe,
        run_dir,
        started=started,
        models_to_train=len(adapters) + recipe.eval.baseline + (gold_hard is not None),
    )
    table = label_only(recipe, ctx, train_texts, replace=resume)  # the texts read once
    soft = np.asarray(table.probs, dtype=np.float64)  # calibrated as task.calibrate says
    teacher_hard = soft.argmax(-1)
    hard = teacher_hard if gold_hard is None or task.hard_labels == "teacher" else gold_hard

    spec = label_spec(recipe, train_texts)
    raw_test, teacher_speed = teacher_test_scores(ctx, spec, test)
    teacher_probs = torch.as_tensor(table.calibration.apply(raw_test))  # as the train labels
    ref = recipe.student.model or DEFAULT_CLASSIFIER
    if recipe.student.model is None:
        log(f"student: {ref} (set student.model to choose another classifier)")
    texts = train_texts.texts
    trained: dict[str, dict[str, Any]] = {}
    for adapter in adapters:
        name = f"student-{adapter}"
        trained[name] = _train_student(ctx, ref, adapter, texts, hard, soft, recipe.terms, name)
    if recipe.eval.baseline:  # what the soft labels bought
        trained["baseline"] = _train_student(
            ctx, ref, "full", texts, teacher_hard, None, CE_ONLY, "baseline"
        )
    if gold_hard is not None:  # what the user's own labels would give
        trained["gold"] = _train_student(ctx, ref, "full", texts, gold_hard, None, CE_ONLY, "gold")

    loaded = {
        name: load_sequence_classifier(str(run_dir / name), len(names), label_names=names)
        for name in trained
    }
    models = {name: model for name, (model, _) in loaded.items()}
    tokenizer = next(iter(loaded.values()))[1]
    test_examples = ClassExamples(tokenizer, test.texts, gold, max_length=recipe.student.max_length)
    scores = score_classifiers(
        models, test_examples, gold, teacher_probs=teacher_probs, batch_size=32
    )
    # The floor: the commonest label of the labelled data the run has, always answered.
    reference = (
        (gold_hard, "train gold labels") if gold_hard is not None else (gold.numpy(), "test labels")
    )
    majority, majority_info = majority_entry(*reference, names, gold)
    entries: dict[str, dict[str, Any]] = {
        "teacher": {
            **_entry(class_scores(teacher_probs, gold)),
            "agreement": None,
            "ref": recipe.teacher,
            "params": count_params(ctx.teacher),
            "size_bytes": size_on_disk(resolve(recipe.teacher)),
            "examples_per_second": teacher_speed,
        }
    }
    for name, info in trained.items():
        entries[name] = {
            **_entry(scores[name]),
            "ref": str(run_dir / name),
            "params": count_params(models[name]),
            "trainable_params": info["trainable_params"],
            "size_bytes": size_on_disk(run_dir / name),
            "train_seconds": info["seconds"],
        }
    entries["majority"] = majority
    calibration = table.calibration
    report = build_report(
        kind="classify",
        budget=budget_decision(run_dir),
        curves=read_curves(run_dir / "metrics.jsonl"),
        run=ctx.run_info(time.perf_counter() - started),
        data={"name": test.name, "split": f"test: {len(test)} labelled texts"},
        recipe={
            "task": "classify",
            "labels": names,
            "train_texts": len(train_texts),
            "hard_labels": "teacher" if gold_hard is None else task.hard_labels,
            "teacher_prior": [round(float(p), 4) for p in table.prior],
            "calibrate": calibration.mode,
            "calibration": {
                "divided_out": [round(float(p), 4) for p in calibration.source],
                "multiplied_in": [round(float(p), 4) for p in calibration.target],
                "target_from": calibration.target_from,
            },
            "shots": len(spec.examples),
            "majority": majority_info,
            "truncated": int(sum(table.truncated_rows)),
            "student": ref,
            "adapters": adapters,
            **train_summary(recipe),
        },
        models=entries,
        break_even=_break_even(entries, len(train_texts), task.batch_size),
    )
    write_report(run_dir, report, read_curves(run_dir / "metrics.jsonl"))
    return report, run_dir


def _break_even(
    entries: dict[str, dict[str, Any]], train_texts: int, label_batch: int
) -> dict[str, Any] | None:
    """The labelling and training time against the best student's saving per text.

    The distillation's cost is the teacher labelling ``train_texts`` at its measured
    batch-``label_batch`` rate plus the student's training time; the saving per text is
    the teacher's time per text minus the student's, both at batch 1.
    """
    teacher = entries["teacher"]
    students = {n: e for n, e in entries.items() if n.startswith("student-")}
    if not students:
        return None
    name, student = max(students.items(), key=lambda item: item[1]["accuracy"])
    label_rate = teacher["examples_per_second"][str(label_batch)]
    teacher_call = 1.0 / teacher["examples_per_second"]["1"]
    student_call = 1.0 / student["examples_per_second"]["1"]
    distill = train_texts / label_rate + student["train_seconds"]
    saving = teacher_call - student_call
    return {
        "student": name,
        "basis": f"labelling at batch {label_batch} + training; serving at batch 1",
        "distill_seconds": distill,
        "teacher_seconds_per_1k": 1000 * teacher_call,
        "student_seconds_per_1k": 1000 * student_call,
        "calls_to_repay": distill / saving if saving > 0 else None,
    }


def _train_student(
    ctx: RunContext,
    ref: str,
    adapter: str,
    texts: list[str],
    hard: np.ndarray,
    soft: np.ndarray | None,
    terms: list[LossTerm],
    name: str,
) -> dict[str, Any]:
    """Train the classifier ``name`` (`train_student`): ``ref`` with ``adapter`` learns
    the hard labels ``hard`` ``(N,)`` and, with ``soft`` ``(N, C)``, the teacher's label
    distributions."""
    recipe, folder = ctx.recipe, ctx.run_dir / name
    names, lora = recipe.task.label_names, recipe.student.lora

    def build() -> Trainee:
        model, tokenizer = load_sequence_classifier(ref, len(names), label_names=names)
        model = wrap_classifier_adapter(
            model,
            adapter,
            r=lora.r,
            alpha=lora.alpha,
            dropout=lora.dropout,
            target_modules=None if lora.target_modules == "all-linear" else lora.target_modules,
        )
        probs = None if soft is None else torch.as_tensor(soft, dtype=torch.float32)
        examples = ClassExamples(
            tokenizer, texts, torch.as_tensor(hard), probs, max_length=recipe.student.max_length
        )
        teacher = None if probs is None else SoftLabels.from_probs(probs)
        return Trainee(model, examples, Classify(terms), tokenizer, teacher=teacher)

    def save(trainee: Trainee) -> None:
        save_classifier(trainee.model, trainee.tokenizer, folder)

    return train_student(
        ctx,
        name=name,
        folder=folder,
        terms=terms,
        inputs={
            "student": ref,
            "adapter": adapter,
            "lora": lora.model_dump(),
            "max_length": recipe.student.max_length,
            "labels": names,
            "texts": texts,
            "hard": hard.tolist(),
            "soft": None if soft is None else soft.round(6).tolist(),
        },
        build=build,
        save=save,
        cfg=train_config(recipe, adapter),
        device="cpu",  # the classifiers are loaded, trained and scored on the CPU
    )


def _entry(scores: ClassScores) -> dict[str, Any]:
    return {
        "accuracy": scores.accuracy,
        "f1": scores.macro_f1,
        "ece": scores.ece,
        "agreement": {"top1": scores.agreement} if scores.agreement is not None else None,
        "examples_per_second": {str(k): v for k, v in scores.examples_per_second.items()},
        "per_class_f1": scores.per_class_f1,
        "confusion": scores.confusion,
    }
