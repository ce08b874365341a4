"""Combine a recipe's loss terms (``{loss, weight, temperature, beta, alpha}``) into one
scalar, and report each term's own value for logging."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence

import torch

from potstill.config import LossTerm
from potstill.losses.divergences import (
    IGNORE_INDEX,
    cross_entropy,
    forward_kl,
    jsd,
    reverse_kl,
    skew_kl,
    tvd,
)
from potstill.signals.distributions import TeacherSignal

KD_LOSSES: dict[str, Callable[..., torch.Tensor]] = {
    "forward_kl": forward_kl,
    "reverse_kl": reverse_kl,
    "jsd": jsd,
    "tvd": tvd,
    "skew_kl": skew_kl,
}


def combine_losses(
    terms: Sequence[LossTerm],
    student_logits: torch.Tensor,
    labels: torch.Tensor,
    teacher: torch.Tensor | TeacherSignal | None = None,
    mask: torch.Tensor | None = None,
    *,
    num_tokens: int | torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The weighted sum of the loss terms, and each term's unweighted value (detached).

    Every term, KD or not, counts the same tokens: ``mask & (labels != -100)``. Terms with
    weight 0 are skipped (neither computed nor reported). A part is keyed by its loss name,
    or by ``name@T<temperature>`` (plus ``,beta``/``,alpha`` and then ``#i`` as needed)
    when the same loss appears more than once.

    Args:
        terms: the recipe's loss terms.
        student_logits: ``(B, T, V)`` float logits, aligned with ``labels``.
        labels: ``(B, T)`` long target ids; ``-100`` marks an ignored token.
        teacher: ``(B, T, V)`` teacher logits or a `TeacherSignal`; required by KD terms.
        mask: optional ``(B, T)`` bool, True where a token counts.
        num_tokens: the global valid-token count, passed to every term.

    >>> logits, labels = torch.zeros(1, 2, 4), torch.tensor([[1, 2]])
    >>> terms = [LossTerm(loss="forward_kl", weight=0.5, temperature=2.0),
    ...          LossTerm(loss="cross_entropy", weight=0.5)]
    >>> total, parts = combine_losses(terms, logits, labels, teacher=logits)
    >>> sorted(parts), round(total.item(), 4)  # 0.5·0 + 0.5·log(4)
    (['cross_entropy', 'forward_kl'], 0.6931)
    """
    active = [
        (key, term) for key, term in zip(_part_keys(terms), terms, strict=True) if term.weight > 0
    ]
    if not active:
        raise ValueError("every loss term has weight 0: give at least one term a weight > 0")
    if teacher is None:
        kd_names = sorted({term.loss for _, term in active if term.loss in KD_LOSSES})
        if kd_names:
            raise ValueError(
                f"loss terms {', '.join(kd_names)} need the teacher's logits, but no teacher "
                "signal was given: pass teacher=, or keep only cross_entropy terms"
            )

    valid = labels != IGNORE_INDEX  # (B, T), the token set every term shares
    if mask is not None:
        valid = valid & mask.to(torch.bool)

    weighted: list[torch.Tensor] = []
    parts: dict[str, torch.Tensor] = {}
    for key, term in active:
        if term.loss == "cross_entropy":
            value = cross_entropy(student_logits, labels, valid, num_tokens=num_tokens)
        else:
            params = {}
            if term.beta is not None:
                params["beta"] = term.beta
            if term.alpha is not None:
                params["alpha"] = term.alpha
            value = KD_LOSSES[term.loss](
                student_logits, teacher, valid, term.temperature, num_tokens=num_tokens, **params
            )
        parts[key] = value.detach()
        weighted.append(term.weight * value)
    return torch.stack(weighted).sum(), parts


def _part_keys(terms: Sequence[LossTerm]) -> list[str]:
    """Unique, readable keys: the bare loss name unless that name repeats."""
    repeats = Counter(term.loss for term in terms)
    keys = []
    for term in terms:
        key = term.loss
        if repeats[term.loss] > 1:
            key = f"{key}@T{term.temperature:g}"
            if term.beta is not None:
                key += f",beta{term.beta:g}"
            if term.alpha is not None:
                key += f",alpha{term.alpha:g}"
        keys.append(key)
    seen = Counter(keys)
    counts: Counter[str] = Counter()
    unique = []
    for key in keys:
        if seen[key] > 1:
            counts[key] += 1
            key = f"{key}#{counts[key]}"
        unique.append(key)
    return unique
