"""Evaluate language models side by side: held-out scores, size and generation speed."""

from __future__ import annotations

from typing import Any

import torch

from potstill.data import LMData
from potstill.evaluation.size import count_params, size_on_disk
from potstill.evaluation.speed import generation_tokens_per_second
from potstill.models.load import load_causal_lm, resolve
from potstill.tasks.causal_lm import score_models
from potstill.util.log import bar


def evaluate_models(
    refs: dict[str, str],
    data: LMData,
    *,
    teacher_key: str | None,
    batch_size: int,
    generate_tokens: int,
    preloaded: dict[str, torch.nn.Module] | None = None,
    device: torch.device | str = "cpu",
) -> dict[str, dict[str, Any]]:
    """Score every model on the held-out split; params, size on disk and generation speed.

    ``refs`` maps a name ("teacher", "student", …) to a model reference; models in
    ``preloaded`` are used as they are, the others are loaded onto ``device``.
    """
    models: dict[str, torch.nn.Module] = dict(preloaded or {})
    for key, ref in refs.items():
        if key not in models:
            models[key] = load_causal_lm(ref)[0].to(device)
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
