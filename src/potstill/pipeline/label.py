"""The label stage: the teacher labels ``task.train``'s texts into ``runs/NAME/labels.parquet``."""

from __future__ import annotations

from potstill.config import Recipe
from potstill.data.texts import TextSet, read_texts
from potstill.pipeline.context import RunContext
from potstill.pipeline.run_dir import prepare_run_dir, run_dir_of
from potstill.synth.prompt import build_prompt
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


def label_only(
    recipe: Recipe, ctx: RunContext | None = None, texts: TextSet | None = None
) -> LabelsTable:
    """Label (or finish labelling) ``recipe.task.train`` with the teacher; return the table.

    ``ctx`` lends a run's already loaded teacher (and its hash); None loads it here.
    ``texts`` lends the train texts a caller has already read; None reads them here.

    Every check that can refuse the run (the labels, the texts, the prompt, an existing
    table made with other labels or teacher) comes before anything in the run folder is
    written. A table of the same prompt and teacher is always continued.
    """
    task = recipe.task
    spec = task.to_spec()
    path = run_dir_of(recipe) / LABELS_FILE
    if texts is None:
        texts = read_texts(train_source(recipe), task.text_field, limit=task.max_train)
    log(f"texts {texts.name}: {len(texts):,} to label with {spec.names}")
    ctx = ctx or RunContext(recipe, run_dir_of(recipe))  # a run's own, with its teacher
    model, tokenizer = ctx.teacher, ctx.tokenizer
    prompt = build_prompt(tokenizer, spec)  # refuses labels whose tokens collide
    limit = context_limit(model, task.max_length)
    fingerprint = prompt_fingerprint(prompt, calibrate=task.calibrate, max_length=limit)
    check_resumable(path, fingerprint, ctx.teacher_sha256)
    prepare_run_dir(recipe, resume=True)
    return label_texts(
        model,
        tokenizer,
        recipe.teacher,
        ctx.teacher_sha256,
        texts,
        spec,
        path=path,
        calibrate=task.calibrate,
        batch_size=task.batch_size,
        max_length=task.max_length,
        shard_texts=task.shard_texts,
    )
