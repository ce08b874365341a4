"""What the benchmark scripts share: teaching a cache for a recipe into a folder.

The scripts run as ``python bench/NAME.py``, so this folder is on their import path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from potstill.cache.reader import TeacherCache
from potstill.cache.teach import cache_source, plan_blocks, teach
from potstill.config import Recipe
from potstill.data import LMData
from potstill.data.order import scheduled_blocks
from potstill.tasks.causal_lm import LMScores, score_models
from potstill.teachers import LiveTeacher


def teach_cache(
    recipe: Recipe,
    teacher: torch.nn.Module,
    tokenizer: Any,
    data: LMData,
    *,
    directory: Path,
    hidden_layers: tuple[int, ...] = (),
) -> TeacherCache:
    """The teacher's top-k cache of the blocks ``recipe.train`` visits (and the hidden
    states of ``hidden_layers``), taught into ``directory`` (as the run's teach stage
    does it, `potstill.pipeline.stages`)."""
    cfg = recipe.train
    order = scheduled_blocks(
        len(data.train),
        micro_batches=cfg.steps * cfg.grad_accum,
        batch_size=cfg.batch_size,
        seed=cfg.seed,
    )
    source = cache_source(
        recipe.teacher,
        tokenizer,
        data_fingerprint=data.fingerprint,
        block_size=recipe.data.block_size,
    )
    return teach(
        LiveTeacher(teacher),
        data.train,
        directory=directory,
        source=source,
        settings=recipe.teach,
        temperature=recipe.teach_temperature,
        plan=plan_blocks(order, len(data.train), recipe.teach.blocks),
        hidden_layers=hidden_layers,
    )


def heldout_score(
    teacher: torch.nn.Module, model: torch.nn.Module, data: LMData, batch_size: int
) -> LMScores:
    """``model``'s scores on the held-out split, against ``teacher`` (agreement, KL)."""
    return score_models(
        {"teacher": teacher, "model": model},
        data.heldout.input_ids,
        data.heldout.labels,
        teacher="teacher",
        batch_size=batch_size,
    )["model"]
