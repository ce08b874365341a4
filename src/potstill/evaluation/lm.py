"""Evaluate language models side by side: held-out scores, calibration, where the students
part from the teacher, size, generation speed, and what each writes after the same
held-out prompts."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from potstill.data import Blocks, LMData
from potstill.evaluation.size import count_params, size_on_disk
from potstill.evaluation.speed import generation_tokens_per_second, pad_token_id
from potstill.models.load import load_causal_lm, resolve
from potstill.tasks.causal_lm.metrics import (
    Disagreement,
    LMScores,
    TokenBands,
    score_models,
    token_counts,
)
from potstill.util.log import bar
from potstill.util.modes import eval_mode

CONTEXT_TOKENS = 12  # tokens of context shown before a worst disagreement
SAMPLES = 3  # held-out prompts the report shows each model's continuation of
PROMPT_TOKENS = 32  # the first tokens of a held-out block, as a prompt


def evaluate_models(
    refs: dict[str, str],
    data: LMData,
    *,
    teacher_key: str | None,
    batch_size: int,
    generate_tokens: int,
    preloaded: dict[str, torch.nn.Module] | None = None,
    device: torch.device | str = "cpu",
    tokenizer: Any | None = None,
) -> dict[str, dict[str, Any]]:
    """Score every model on the held-out split; params, size on disk and generation speed.

    ``refs`` maps a name ("teacher", "student", …) to a model reference; models in
    ``preloaded`` are used as they are, the others are loaded onto ``device``. Each entry
    holds the perplexity, the ECE of the next-token prediction and, per frequency band of
    the true next token on the training split, the share of positions and the mean NLL
    (with the top-1 agreement when there is a teacher). With a teacher and a ``tokenizer``
    (to decode them), each other model's worst disagreements with it are kept as text.
    The entries are plain JSON-ready values.
    """
    models: dict[str, torch.nn.Module] = dict(preloaded or {})
    for key, ref in refs.items():
        if key not in models:
            models[key] = load_causal_lm(ref)[0].to(device)
    heldout = data.heldout
    train_ids = (ids for ids, _ in data.train.chunks())
    bands = TokenBands.from_counts(token_counts(train_ids)) if len(data.train) else None
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
            bands=bands,
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
            "ece": s.ece,
            "tokens_per_second": generation_tokens_per_second(
                model, prompt, new_tokens=generate_tokens
            ),
        }
        if s.top1 is not None:
            entry["agreement"] = {"top1": s.top1, "kl": s.kl}
        if s.bands is not None:
            entry["frequency_bands"] = frequency_bands(s)
        if s.worst is not None and tokenizer is not None:
            entry["worst_disagreements"] = [
                disagreement_text(d, heldout, tokenizer) for d in s.worst
            ]
        results[key] = entry
    return results


def frequency_bands(scores: LMScores) -> list[dict[str, Any]]:
    """The report's ``frequency_bands``: per band, its share of the scored positions,
    the positions, the mean NLL and the top-1 agreement with the teacher."""
    if scores.bands is None:
        raise ValueError("these scores were computed without frequency bands")
    total = max(scores.tokens, 1)
    return [
        {
            "band": b.band,
            "share": b.tokens / total,
            "tokens": b.tokens,
            "loss": b.loss,
            "top1": b.top1,
        }
        for b in scores.bands
    ]


def disagreement_text(where: Disagreement, heldout: Blocks, tokenizer: Any) -> dict[str, Any]:
    """One worst disagreement as text: the last ``CONTEXT_TOKENS`` tokens of context up to
    the prediction, the teacher's and the model's top tokens, the true next token, the KL."""
    first = max(0, where.position + 1 - CONTEXT_TOKENS)
    context = heldout.input_ids[where.block, first : where.position + 1].tolist()
    return {
        "context": tokenizer.decode(context),
        "target": tokenizer.decode([where.target]),
        "teacher_top": tokenizer.decode([where.teacher_top]),
        "model_top": tokenizer.decode([where.model_top]),
        "kl": where.kl,
    }


def sample_blocks(blocks: int, count: int = SAMPLES) -> list[int]:
    """``count`` held-out blocks spread over ``blocks`` of them: the first, the last and
    evenly between (fewer when there are fewer blocks).

    >>> sample_blocks(10), sample_blocks(2), sample_blocks(0)
    ([0, 4, 9], [0, 1], [])
    """
    if blocks < 1:
        return []
    if count < 2 or blocks == 1:
        return [0]
    return sorted({(i * (blocks - 1)) // (count - 1) for i in range(count)})


@torch.no_grad()
def continuations(
    models: Mapping[str, torch.nn.Module],
    heldout: Blocks,
    tokenizer: Any,
    *,
    new_tokens: int,
    count: int = SAMPLES,
    prompt_tokens: int = PROMPT_TOKENS,
) -> list[dict[str, Any]]:
    """Each model's greedy continuation of the same held-out prompts, as text: the first
    ``prompt_tokens`` tokens of ``count`` blocks spread over the held-out set
    (`sample_blocks`), continued by up to ``new_tokens`` tokens (less where a model ends
    the text). The report's ``samples``: ``[{"prompt", "continuations": {model: text}}]``.
    Models are put in eval mode and handed back in the mode they had."""
    samples = []
    with eval_mode(*models.values()):
        for block in sample_blocks(len(heldout), count):
            prompt = heldout.input_ids[block : block + 1, :prompt_tokens]  # (1, P)
            samples.append(
                {
                    "prompt": tokenizer.decode(prompt[0].tolist()),
                    "continuations": {
                        name: tokenizer.decode(greedy(model, prompt, new_tokens))
                        for name, model in models.items()
                    },
                }
            )
    return samples


def greedy(model: torch.nn.Module, prompt_ids: torch.Tensor, new_tokens: int) -> list[int]:
    """The ids ``model`` writes after ``prompt_ids`` (1, P), greedily, at most ``new_tokens``."""
    device = next(model.parameters()).device
    prompt_ids = prompt_ids.to(device)
    out = model.generate(
        input_ids=prompt_ids,
        attention_mask=torch.ones_like(prompt_ids),
        do_sample=False,
        max_new_tokens=new_tokens,
        pad_token_id=pad_token_id(model),
    )  # (1, P + n)
    return out[0, prompt_ids.shape[-1] :].tolist()
