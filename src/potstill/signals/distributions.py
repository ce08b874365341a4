"""The teacher's signal, one type whichever source produced it.

A live teacher gives dense logits; a cache (``potstill teach``) gives the top-k token ids,
their log-probabilities and the probability mass left outside the top k. Losses take a
`TeacherSignal` and never know where it came from.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class DenseSignal:
    """Full teacher logits.

    Args:
        logits: ``(B, T, V)`` raw (un-tempered) teacher logits.
    """

    logits: torch.Tensor


@dataclass(frozen=True)
class SparseSignal:
    """The teacher's top-k distribution plus the mass outside it.

    Args:
        ids: ``(B, T, K)`` int token ids of the teacher's k most likely tokens.
        logprobs: ``(B, T, K)`` their log-probabilities, taken at ``temperature``.
        tail_logprob: ``(B, T)`` log of the probability mass outside the top k.
        temperature: the softmax temperature the log-probabilities were taken at.
    """

    ids: torch.Tensor
    logprobs: torch.Tensor
    tail_logprob: torch.Tensor
    temperature: float = 1.0


TeacherSignal = DenseSignal | SparseSignal


def as_signal(teacher: torch.Tensor | TeacherSignal) -> TeacherSignal:
    """Accept a bare ``(B, T, V)`` logits tensor as shorthand for `DenseSignal`."""
    if isinstance(teacher, torch.Tensor):
        return DenseSignal(teacher)
    if isinstance(teacher, DenseSignal | SparseSignal):
        return teacher
    raise TypeError(f"expected teacher logits or a TeacherSignal, got {type(teacher).__name__}")
