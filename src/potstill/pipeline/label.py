"""The label stage: the teacher labels ``task.train``'s texts into ``runs/NAME/labels.parquet``."""

from __future__ import annotations

import numpy as np

from potstill.cache.endpoint_teach import served_teacher
from potstill.config import Recipe
from potstill.data.texts import TextSet, read_texts
from potstill.pipeline.context import RunContext
from potstill.pipeline.run_dir import prepare_run_dir, run_dir_of
from potstill.pipeline.served_teach import served_label_scorer, served_model
from potstill.synth.label import LabelSpec, class_prior
from potstill.synth.prompt import build_prompt, choose_examples
from potstill.synth.store import (
    LabelsTable,
    check_resumable,
    context_limit,
    label_texts,
    prompt_fingerprint,
)
from potstill.util.errors import PotstillError
from potstill.util.log import log

LABELS_FILE = "labels.parquet"


def train_source(recipe: Recipe) -> str:
    """``task.train``, the texts to label; refused when the recipe does not set it."""
    if recipe.task.train is None:
        raise PotstillError(
            "task.train is not set; point it at the texts to label (.txt, .jsonl, .csv, .parquet)"
        )
    return recipe.task.train


def read_train_texts(recipe: Recipe) -> TextSet:
    """``task.train``'s texts, with their gold labels when ``task.train_label_field`` names
    them (refused when one is not in ``task.labels``)."""
    task = recipe.task
    texts = read_texts(
        train_source(recipe), task.text_field, task.train_label_field, limit=task.max_train
    )
    if texts.labels is not None:
        label_ids(texts.labels, task.label_names, "task.train", texts.name)
    return texts


def label_ids(labels: list[str], names: list[str], field: str, source: str) -> np.ndarray:
    """Label names as class indices ``(N,)`` int64; a name outside ``names`` is refused."""
    unknown = sorted({label for label in labels if label not in names})
    if unknown:
        raise PotstillError(
            f"{field} {source}: label {unknown[0]!r} is not one of task.labels "
            f"({', '.join(names)}); fix the file or add the label"
        )
    index = {name: i for i, name in enumerate(names)}
    return np.array([index[label] for label in labels], dtype=np.int64)


def label_spec(recipe: Recipe, texts: TextSet) -> LabelSpec:
    """The labelling task: ``task``'s labels, instruction and examples, and with
    ``task.shots`` that many examples chosen (by ``train.seed``) from ``texts``' gold
    labels; never from the test set, which is not read here."""
    task = recipe.task
    spec = task.to_spec()
    if task.shots and texts.labels is not None:
        spec.examples = choose_examples(
            texts.texts, texts.labels, task.label_names, task.shots, recipe.train.seed
        )
    return spec


def label_only(
    recipe: Recipe,
    ctx: RunContext | None = None,
    texts: TextSet | None = None,
    *,
    replace: bool = False,
) -> LabelsTable:
    """Label (or finish labelling) ``recipe.task.train`` with the teacher; return the table.

    ``ctx`` lends a run's already loaded teacher (and its hash); None loads it here.
    ``texts`` lends the train texts a caller has already read (`read_train_texts`); None
    reads them here. ``replace`` (a resumed run) labels again a table made with another
    prompt or teacher instead of refusing it.

    Every check that can refuse the run (the labels, the texts, the prompt, an existing
    table made with other labels or teacher) comes before anything in the run folder is
    written. A table of the same prompt and teacher is always continued, and calibrated
    again when ``task.calibrate`` changed, without scoring anything.
    """
    task = recipe.task
    if texts is None:
        texts = read_train_texts(recipe)
    spec = label_spec(recipe, texts)
    log(f"texts {texts.name}: {len(texts):,} to label with {spec.names}")
    ctx = ctx or RunContext(recipe, run_dir_of(recipe))  # a run's own, with its teacher
    model, tokenizer = ctx.teacher, ctx.tokenizer
    prompt = build_prompt(tokenizer, spec)  # refuses labels whose tokens collide
    limit = context_limit(model, task.max_length)
    path = run_dir_of(recipe) / LABELS_FILE
    fingerprint = prompt_fingerprint(prompt, max_length=limit)
    # Through a server (teach.endpoint.model) the table names the served model.
    teacher, teacher_sha256 = recipe.teacher, ctx.teacher_sha256
    served = served_model(recipe)
    if served is not None:
        teacher, teacher_sha256 = served_teacher(served)
    check_resumable(path, fingerprint, teacher_sha256, replace=replace, log=lambda _: None)
    prepare_run_dir(recipe, resume=True)
    gold_prior = gold = None
    if texts.labels is not None:
        gold = label_ids(texts.labels, task.label_names, "task.train", texts.name)
        gold_prior = class_prior(gold, len(task.label_names))
    with served_label_scorer(recipe, tokenizer) as scorer:
        return label_texts(
            model,
            tokenizer,
            teacher,
            teacher_sha256,
            texts,
            spec,
            path=path,
            calibrate=task.calibrate,
            gold_prior=gold_prior,
            gold=None if gold is None else [int(g) for g in gold],
            replace=replace,
            batch_size=task.batch_size,
            max_length=task.max_length,
            shard_texts=task.shard_texts,
            served=scorer,
        )
