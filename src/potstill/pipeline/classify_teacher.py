"""What a classify run measures its students against: the teacher's scores on the test set
(kept in a stage marker, so only a change of teacher, prompt, labels or test texts scores
them again) and the constant answer of the commonest label, the floor any model must beat.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from potstill.data.texts import TextSet
from potstill.evaluation.classify import class_scores
from potstill.pipeline.context import RunContext
from potstill.pipeline.markers import finished, mark_finished
from potstill.synth.label import LabelSpec, score_labels
from potstill.synth.prompt import build_prompt
from potstill.synth.store import context_limit, prompt_fingerprint
from potstill.util.fingerprint import fingerprint
from potstill.util.log import bar, log

STAGE = "teacher-test"
TEACHER_SPEED_TEXTS = 8  # texts timed at batch 1
CHUNK_BATCHES = 4  # batches scored between two steps of the progress bar


def teacher_test_scores(
    ctx: RunContext, spec: LabelSpec, test: TextSet
) -> tuple[np.ndarray, dict[str, float]]:
    """The teacher's raw label log-likelihoods on the test texts ``(N, L)`` (to calibrate
    as the train labels were) and its speed: examples/s over the whole pass at
    ``task.batch_size`` and on the first few texts at batch 1.

    Kept in the ``teacher-test`` stage marker under a fingerprint of the teacher, the
    prompt ``spec`` gives (its labels, examples and context limit, as the labels table's),
    the test texts and the batch size, so a resume that changes only the students'
    training or the calibration does not score the test set again.
    """
    task = ctx.recipe.task
    prompt = build_prompt(ctx.tokenizer, spec)
    limit = context_limit(ctx.teacher, task.max_length)
    print_ = fingerprint(
        STAGE,
        ctx.teacher_sha256,
        prompt_fingerprint(prompt, max_length=limit),
        test.sha256s,
        task.batch_size,
    )
    done = finished(ctx.run_dir, STAGE, print_)
    if done is not None:
        log(f"teacher: its scores on the {len(test)} test texts were kept, not scored again")
        return np.array(done["logprobs"], dtype=np.float64), done["examples_per_second"]

    texts, chunk = test.texts, task.batch_size * CHUNK_BATCHES
    timed = texts[:TEACHER_SPEED_TEXTS]
    parts = []
    with bar("teacher on the test set", total=len(texts) + len(timed)) as shown:
        begun = time.perf_counter()
        for start in range(0, len(texts), chunk):
            part = texts[start : start + chunk]
            scores = score_labels(
                ctx.teacher, prompt, part, batch_size=task.batch_size, max_length=limit
            )
            parts.append(scores.logprobs)
            shown.advance(len(part))
        batched = len(texts) / max(time.perf_counter() - begun, 1e-9)
        begun = time.perf_counter()
        score_labels(ctx.teacher, prompt, timed, batch_size=1, max_length=limit)
        single = len(timed) / max(time.perf_counter() - begun, 1e-9)
        shown.advance(len(timed))
    logprobs = np.concatenate(parts)
    speed = {"1": single, str(task.batch_size): batched}
    mark_finished(ctx.run_dir, STAGE, print_, logprobs=logprobs.tolist(), examples_per_second=speed)
    return logprobs, speed


def majority_entry(
    reference: np.ndarray, source: str, names: list[str], gold: torch.Tensor
) -> tuple[dict[str, Any], dict[str, str]]:
    """The constant answer of the commonest label of ``reference`` ``(M,)`` (label ids
    from ``source``, e.g. the train gold labels), scored on the test labels ``gold``
    ``(N,)``: its report entry (accuracy, macro-F1, per-class F1; a reference, not a
    model, so no size or speed) and what the report's recipe says of it."""
    commonest = int(np.bincount(reference, minlength=len(names)).argmax())
    probs = torch.zeros(len(gold), len(names))
    probs[:, commonest] = 1.0  # (N, C): always the same answer
    scores = class_scores(probs, gold)
    label = names[commonest]
    entry = {
        "ref": f"always {label!r}, the commonest of the {source}",
        "accuracy": scores.accuracy,
        "f1": scores.macro_f1,
        "per_class_f1": scores.per_class_f1,
    }
    return entry, {"label": label, "from": source}
