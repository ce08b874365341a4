"""A run whose ``student.model`` has another tokenizer than its teacher's.

The data is then cut by the student's tokenizer, the cache is taught across tokenizers
(`potstill.cache.cross_teach`: each block decoded, re-tokenized by the teacher, its
positions aligned by character), and only terms that work across tokenizers train
(``shared_kl``, which reads the cache's teacher ids as the student ids of the same bytes,
``uld`` and ``cross_entropy``). The evaluation scores the students on the student's
tokens; the teacher, whose tokens differ, is not scored beside them.
"""

from __future__ import annotations

from typing import Any

import torch

from potstill.cache.cross_teach import cross_source, teach_across
from potstill.cache.reader import TeacherCache
from potstill.config import Recipe
from potstill.data.vocab import shared_ids
from potstill.losses import cross_tokenizer_problem
from potstill.models.load import resolve
from potstill.models.student import same_tokenizer
from potstill.util.distributed import launched_world
from potstill.util.errors import PotstillError
from potstill.util.log import log


def student_tokenizer(recipe: Recipe) -> Any | None:
    """The tokenizer of the recipe's ``student.model``; None for a student cut from the
    teacher or made fresh (the teacher's tokenizer)."""
    if recipe.student.source != "model" or recipe.student.model is None:
        return None
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(resolve(recipe.student.model))
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def data_tokenizer(recipe: Recipe, teacher_tokenizer: Any) -> Any:
    """The tokenizer the run's data is cut by: the student's when it differs from the
    teacher's (refused in one line unless every term works across tokenizers), else the
    teacher's."""
    student = student_tokenizer(recipe)
    if student is None or same_tokenizer(teacher_tokenizer, student):
        return teacher_tokenizer
    check_across(recipe)
    return student


def check_across(recipe: Recipe) -> None:
    """Refuse, in one line, what a run across tokenizers cannot do."""
    active = [t.loss for t in recipe.terms if t.weight > 0]
    problem = cross_tokenizer_problem(active)
    if problem is not None:
        raise PotstillError(
            f"student.model {recipe.student.model} has another tokenizer than the teacher "
            f"{recipe.teacher}, and {problem}: use a loss that works across tokenizers "
            "(loss: [{loss: shared_kl}, {loss: cross_entropy}], or uld in shared_kl's "
            "place), or a student with the teacher's tokenizer"
        )
    if recipe.needs_teacher_logits and not recipe.teach.enabled:
        raise PotstillError(
            "a student of another tokenizer learns from a cache taught across tokenizers; "
            "teach.enabled=false (the live teacher) does not align them: set "
            "teach.enabled=true"
        )
    if recipe.teach.endpoint.model is not None:
        raise PotstillError(
            "teach.endpoint.model teaches through a server by the data's token ids, which "
            "across tokenizers are not the teacher's: teach here (teach.endpoint.model=null)"
        )
    if recipe.needs_teacher_logits and recipe.teach.samples:
        raise PotstillError(
            f"teach.samples={recipe.teach.samples}: ULD sorts the teacher's distribution, and "
            "a sorted sample is no unbiased estimate of it; set teach.samples=0 "
            "teach.top_k=64"
        )
    if recipe.train.curriculum != "none":
        raise PotstillError(
            f"train.curriculum={recipe.train.curriculum} orders blocks by the teacher's "
            "entropy, which a cache across tokenizers lacks at its unaligned positions: set "
            "train.curriculum=none"
        )
    if recipe.budget_minutes is not None:
        raise PotstillError(
            f"budget_minutes={recipe.budget_minutes:g} is not fitted across tokenizers yet "
            "(its timing runs the teacher on the student's tokens): set budget_minutes=null "
            "and train.steps"
        )
    if launched_world().distributed:
        raise PotstillError(
            "teaching across tokenizers is one process: run potstill teach without torchrun "
            "/ accelerate launch, then potstill distill under it"
        )


def across_source(ctx: Any) -> dict[str, Any]:
    """The source a cache taught across tokenizers records (`cross_source`)."""
    return cross_source(
        ctx.recipe.teacher,
        ctx.tokenizer,
        ctx.data_tokenizer,
        data_fingerprint=ctx.data.fingerprint,
        block_size=ctx.recipe.data.block_size,
    )


def teach_across_stage(ctx: Any, *, source: dict[str, Any], plan: list[int]) -> TeacherCache:
    """Fill (or finish) the recipe's cache across tokenizers."""
    recipe = ctx.recipe
    log(
        f"teacher pass across tokenizers: {recipe.teacher} reads each block's text in its "
        f"own tokens; its top {recipe.teach.top_k} at the aligned positions"
    )
    return teach_across(
        ctx.teacher,
        ctx.tokenizer,
        ctx.data_tokenizer,
        ctx.data.train,
        directory=recipe.cache_dir,
        source=source,
        settings=recipe.teach,
        temperature=recipe.teach_temperature,
        plan=plan,
        log=log,
    )


def read_in_student_ids(ctx: Any, cache: TeacherCache) -> None:
    """Have ``cache`` (taught across tokenizers) hand out the student's ids for the
    teacher's, when a ``shared_kl`` term reads them (``uld`` reads no ids)."""
    if not any(t.loss == "shared_kl" and t.weight > 0 for t in ctx.recipe.terms):
        return
    mapping = shared_ids(ctx.tokenizer, ctx.data_tokenizer, cache.manifest.vocab_size)
    cache.read_ids_as(torch.from_numpy(mapping))
    log(
        f"shared_kl: {int((mapping >= 0).sum()):,} of the teacher's {len(mapping):,} ids have "
        "a student token of the same bytes; the rest of the teacher's mass is one bucket"
    )
