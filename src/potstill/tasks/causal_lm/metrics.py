"""Held-out language-model metrics: perplexity, and agreement with the teacher.

Every model sees the same blocks. The teacher runs once per batch and its log-probs are
reused for every other model, so no model runs twice.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from potstill.util.errors import PotstillError
from potstill.util.modes import eval_mode
from potstill.util.tokens import IGNORE_INDEX


@dataclass
class LMScores:
    """One model's held-out scores.

    `loss` is the mean next-token cross-entropy in nats and `perplexity` is exp(loss).
    `top1` is the share of scored positions where this model's argmax equals the teacher's,
    `kl` the mean KL(teacher ‖ model) per scored token at temperature 1, in nats; both are
    None for the teacher itself or when no teacher was given.
    """

    perplexity: float
    loss: float
    top1: float | None
    kl: float | None
    tokens: int


@dataclass
class _Sums:
    """Running float64 totals for one model."""

    ce: float = 0.0
    agree: float = 0.0
    kl: float = 0.0
    tokens: int = 0


def _device_of(model: torch.nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def _scored_logprobs(
    model: torch.nn.Module, input_ids: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """Float32 log-probs at the scored positions only.

    input_ids: (B, L); mask: (B, L-1) bool, True where the next token is scored.
    Returns (M, V) with M = mask.sum(), on the model's device.
    """
    device = _device_of(model)
    logits = model(input_ids=input_ids.to(device)).logits  # (B, L, V)
    logits = logits[:, :-1][mask.to(device)]  # (M, V): position t predicts token t+1
    return F.log_softmax(logits.float(), dim=-1)


@torch.no_grad()
def score_models(
    models: dict[str, torch.nn.Module],
    input_ids: torch.Tensor,
    labels: torch.Tensor,
    *,
    teacher: str | None,
    batch_size: int = 8,
    progress: Callable[[int], None] | None = None,
) -> dict[str, LMScores]:
    """Score every model on the same held-out blocks.

    input_ids: (N, L) long token ids. labels: (N, L) long, aligned with input_ids in the HF
    convention (label t is the token at t; -100 = not scored); the causal shift is done
    here, so logits at t are scored against labels[t+1]. `teacher` names the key in
    `models` whose predictions the others are compared with (top-1 agreement and
    KL(teacher ‖ model)), or None. `progress` is called with the number of blocks done
    after each batch. Models are put in eval mode and handed back in the mode they had.
    """
    if input_ids.shape != labels.shape or input_ids.dim() != 2:
        raise ValueError(
            f"input_ids {tuple(input_ids.shape)} and labels {tuple(labels.shape)} "
            "must both be (N, L)"
        )
    if teacher is not None and teacher not in models:
        raise PotstillError(
            f"teacher {teacher!r} is not among the models scored ({', '.join(models)}); "
            "pass one of those names or None"
        )
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")

    # The teacher first: its log-probs are needed by every other model in the batch.
    order = [teacher] if teacher is not None else []
    order += [name for name in models if name != teacher]
    sums = {name: _Sums() for name in order}

    with eval_mode(*models.values()):
        n_blocks = input_ids.shape[0]
        for start in range(0, n_blocks, batch_size):
            batch_ids = input_ids[start : start + batch_size]  # (B, L)
            target = labels[start : start + batch_size, 1:]  # (B, L-1)
            mask = target != IGNORE_INDEX  # (B, L-1)
            target = target[mask]  # (M,)
            if mask.any():
                _score_batch(models, order, teacher, batch_ids, mask, target, sums)
            if progress is not None:
                progress(min(start + batch_size, n_blocks))

    return {name: _finish(sums[name], has_teacher=teacher not in (None, name)) for name in models}


def _score_batch(
    models: dict[str, torch.nn.Module],
    order: list[str],
    teacher: str | None,
    batch_ids: torch.Tensor,
    mask: torch.Tensor,
    target: torch.Tensor,
    sums: dict[str, _Sums],
) -> None:
    """One forward per model. batch_ids: (B, L); mask: (B, L-1); target: (M,)."""
    teacher_logprobs = None
    for name in order:
        logprobs = _scored_logprobs(models[name], batch_ids, mask)  # (M, V)
        _accumulate(sums[name], logprobs, target.to(logprobs.device))
        if name == teacher:
            teacher_logprobs = logprobs
        elif teacher_logprobs is not None:
            _accumulate_agreement(sums[name], name, logprobs, teacher_logprobs)


def _accumulate(sums: _Sums, logprobs: torch.Tensor, target: torch.Tensor) -> None:
    """logprobs: (M, V) float32; target: (M,) long."""
    ce = -logprobs.gather(-1, target.unsqueeze(-1)).squeeze(-1)  # (M,)
    sums.ce += ce.double().sum().item()
    sums.tokens += target.numel()


def _accumulate_agreement(
    sums: _Sums, name: str, logprobs: torch.Tensor, teacher_logprobs: torch.Tensor
) -> None:
    """logprobs, teacher_logprobs: (M, V) float32 at the same scored positions."""
    if logprobs.shape[-1] != teacher_logprobs.shape[-1]:
        raise PotstillError(
            f"vocab mismatch: model {name!r} predicts over {logprobs.shape[-1]} tokens but the "
            f"teacher over {teacher_logprobs.shape[-1]}; compare models that share a tokenizer "
            "(or score without a teacher)"
        )
    teacher_logprobs = teacher_logprobs.to(logprobs.device)
    agree = logprobs.argmax(-1) == teacher_logprobs.argmax(-1)  # (M,)
    sums.agree += agree.double().sum().item()
    # KL(teacher ‖ model) = Σ_v p_t (log p_t − log p_m); where p_t = 0 the term is 0.
    kl = F.kl_div(logprobs, teacher_logprobs, reduction="none", log_target=True)  # (M, V)
    sums.kl += kl.sum(-1).double().sum().item()


def _finish(sums: _Sums, *, has_teacher: bool) -> LMScores:
    tokens = sums.tokens
    if tokens == 0:
        nan = float("nan")
        return LMScores(nan, nan, nan if has_teacher else None, nan if has_teacher else None, 0)
    loss = sums.ce / tokens
    return LMScores(
        perplexity=math.exp(loss) if loss < 700 else math.inf,
        loss=loss,
        top1=sums.agree / tokens if has_teacher else None,
        kl=sums.kl / tokens if has_teacher else None,
        tokens=tokens,
    )
