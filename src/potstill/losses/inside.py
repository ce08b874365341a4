"""Losses on the teacher's insides: hidden states (FitNets) and attention maps.

Like the token losses (`divergences`), each is a pure function returning the per-token
value summed over the valid positions and divided by their number (or by
``num_tokens``, the step's global count). Which student layer is compared with which
teacher layer is the term's layer map (`potstill.losses.layers`); when the widths differ
the student's states pass through a learned projection first (`hidden_projections`,
FitNets' regressor, Romero et al. 2015), trained beside the student and never saved with
it.

- ``hidden_mse``: ``‖h_s − h_t‖² / ‖h_t‖²`` per position, the squared error relative to
  the teacher state's own size. Residual streams grow with depth and carry a few huge
  dimensions, so a raw MSE's scale would depend on the layer and the model; the relative
  error is 0 for a perfect match and 1 for predicting zeros, whatever the layer.
- ``hidden_cosine``: ``1 − cos(h_s, h_t)`` per position.
- ``attention_kl``: ``KL(A_t ‖ A_s)`` of each query's attention distribution over the
  keys, averaged over heads (attention transfer; Zagoruyko & Komodakis 2017 on maps,
  TinyBERT/MiniLM on KL between attention distributions). Head counts may differ: with
  ``heads="grouped"`` the side with more heads is averaged in consecutive groups down to
  the other side's count (which must divide it); ``heads="mean"`` compares the maps
  averaged over all heads.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn

HeadMapping = Literal["grouped", "mean"]


def _positions(mask: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    """``(B, T)`` bool: the caller's mask, or every position."""
    if mask is None:
        return torch.ones(like.shape[:2], dtype=torch.bool, device=like.device)
    if mask.dtype != torch.bool or mask.shape != like.shape[:2]:
        raise ValueError(
            f"mask must be (B, T) bool {tuple(like.shape[:2])}, got "
            f"{tuple(mask.shape)} {mask.dtype}"
        )
    return mask


def _mean(per_position: torch.Tensor, count: int | torch.Tensor) -> torch.Tensor:
    """Sum divided by ``count`` (never by 0)."""
    count = torch.as_tensor(count).to(device=per_position.device, dtype=per_position.dtype)
    return per_position.sum() / count.clamp_min(1)


def _check_states(student: torch.Tensor, teacher: torch.Tensor) -> None:
    if student.dim() != 3 or teacher.dim() != 3:
        raise ValueError(
            f"hidden states must be (B, T, H); got student {tuple(student.shape)}, "
            f"teacher {tuple(teacher.shape)}"
        )
    if student.shape != teacher.shape:
        raise ValueError(
            f"student hidden states {tuple(student.shape)} != teacher {tuple(teacher.shape)}: "
            "project the student's to the teacher's width first (hidden_projections)"
        )
    if not (student.is_floating_point() and teacher.is_floating_point()):
        raise ValueError(
            f"hidden states must be floating point, got {student.dtype}, {teacher.dtype}"
        )


def hidden_mse(
    student: torch.Tensor,
    teacher: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    num_tokens: int | torch.Tensor | None = None,
) -> torch.Tensor:
    """Relative squared error ``‖h_s − h_t‖² / ‖h_t‖²`` per position, averaged.

    Args:
        student: ``(B, T, H)`` the student's states, already projected to width ``H``.
        teacher: ``(B, T, H)`` the teacher's states at the mapped layer.
        mask: ``(B, T)`` bool, True where a position counts.
        num_tokens: divide by this (the step's count) instead of the valid positions.

    >>> t = torch.ones(1, 2, 4)
    >>> float(hidden_mse(torch.zeros(1, 2, 4), t)), float(hidden_mse(t, t))
    (1.0, 0.0)
    """
    _check_states(student, teacher)
    valid = _positions(mask, student)
    dtype = torch.promote_types(torch.float32, torch.promote_types(student.dtype, teacher.dtype))
    s, t = student[valid].to(dtype), teacher[valid].to(dtype)  # (N, H)
    error = (s - t).pow(2).sum(-1) / t.pow(2).sum(-1).clamp_min(torch.finfo(dtype).tiny)
    return _mean(error, num_tokens if num_tokens is not None else valid.sum())


def hidden_cosine(
    student: torch.Tensor,
    teacher: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    num_tokens: int | torch.Tensor | None = None,
) -> torch.Tensor:
    """``1 − cos(h_s, h_t)`` per position, averaged (arguments as `hidden_mse`).

    >>> t = torch.ones(1, 1, 3)
    >>> round(float(hidden_cosine(-t, t)), 6), round(float(hidden_cosine(2 * t, t)), 6)
    (2.0, 0.0)
    """
    _check_states(student, teacher)
    valid = _positions(mask, student)
    dtype = torch.promote_types(torch.float32, torch.promote_types(student.dtype, teacher.dtype))
    s, t = student[valid].to(dtype), teacher[valid].to(dtype)
    cosine = torch.nn.functional.cosine_similarity(s, t, dim=-1, eps=1e-8)
    return _mean(1.0 - cosine, num_tokens if num_tokens is not None else valid.sum())


def match_heads(
    student: torch.Tensor, teacher: torch.Tensor, heads: HeadMapping = "grouped"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Both attention maps ``(B, h, T, T)`` with one head count (see the module doc).

    >>> s, t = match_heads(torch.rand(1, 2, 3, 3), torch.rand(1, 6, 3, 3))
    >>> tuple(s.shape), tuple(t.shape)
    ((1, 2, 3, 3), (1, 2, 3, 3))
    """
    check_head_mapping(student.shape[1], teacher.shape[1], heads)
    if heads == "mean":
        return student.mean(1, keepdim=True), teacher.mean(1, keepdim=True)
    return _group(student, teacher.shape[1]), _group(teacher, student.shape[1])


def check_head_mapping(student_heads: int, teacher_heads: int, heads: HeadMapping) -> None:
    """Refuse a head mapping that cannot pair the heads, in one line."""
    if heads not in ("grouped", "mean"):
        raise ValueError(f"heads = {heads!r}: give grouped or mean")
    if heads == "grouped":
        small, large = sorted((student_heads, teacher_heads))
        if large % small:
            raise ValueError(
                f"attention heads: the student's {student_heads} and the teacher's "
                f"{teacher_heads} cannot be grouped (neither divides the other); "
                "set heads: mean to compare the head-averaged maps"
            )


def _group(maps: torch.Tensor, other_heads: int) -> torch.Tensor:
    """Average ``maps``' heads in consecutive groups down to ``other_heads`` (if fewer)."""
    batch, heads, queries, keys = maps.shape
    if heads <= other_heads:
        return maps
    return maps.reshape(batch, other_heads, heads // other_heads, queries, keys).mean(2)


def attention_kl(
    student: torch.Tensor,
    teacher: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    heads: HeadMapping = "grouped",
    num_tokens: int | torch.Tensor | None = None,
) -> torch.Tensor:
    """``KL(A_t ‖ A_s)`` of each query row, averaged over heads, summed over the valid
    queries and divided by their count (or ``num_tokens``).

    Args:
        student: ``(B, h_s, T, T)`` the student's attention probabilities (rows sum to 1).
        teacher: ``(B, h_t, T, T)`` the teacher's at the mapped layer.
        mask: ``(B, T)`` bool over the queries, True where a query counts.

    >>> a = torch.softmax(torch.randn(1, 2, 3, 3), -1)
    >>> float(attention_kl(a, a))
    0.0
    """
    if student.dim() != 4 or teacher.dim() != 4:
        raise ValueError(
            f"attention maps must be (B, heads, T, T); got student {tuple(student.shape)}, "
            f"teacher {tuple(teacher.shape)}"
        )
    if student.shape[0] != teacher.shape[0] or student.shape[2:] != teacher.shape[2:]:
        raise ValueError(
            f"attention maps differ in batch or length: student {tuple(student.shape)}, "
            f"teacher {tuple(teacher.shape)}"
        )
    valid = _positions(mask, student[:, 0])
    dtype = torch.promote_types(torch.float32, torch.promote_types(student.dtype, teacher.dtype))
    s, t = match_heads(student.to(dtype), teacher.to(dtype), heads)
    tiny = torch.finfo(dtype).tiny
    # 0 · log 0 = 0 where the teacher puts no weight (the causal mask's future keys).
    per_row = torch.where(t > 0, t * (t.clamp_min(tiny).log() - s.clamp_min(tiny).log()), 0.0)
    per_query = per_row.sum(-1).mean(1)  # (B, T): summed over keys, averaged over heads
    return _mean(per_query[valid], num_tokens if num_tokens is not None else valid.sum())


def hidden_projections(
    pairs: Sequence[tuple[int, int]], student_width: int, teacher_width: int
) -> nn.ModuleDict:
    """FitNets' regressors: one ``Linear(student_width → teacher_width)`` per mapped
    student layer, keyed ``"s{layer}"``; none when the widths are equal (the states are
    compared as they are).

    >>> sorted(hidden_projections([(1, 2), (3, 6)], 4, 8))
    ['s1', 's3']
    >>> len(hidden_projections([(1, 2)], 8, 8))
    0
    """
    if student_width == teacher_width:
        return nn.ModuleDict()
    projections = nn.ModuleDict()
    for student_layer, _ in pairs:
        key = f"s{student_layer}"
        if key not in projections:
            layer = nn.Linear(student_width, teacher_width, bias=False)
            # Start as the identity on the shared dimensions (zero elsewhere).
            with torch.no_grad():
                layer.weight.zero_()
                shared = min(student_width, teacher_width)
                layer.weight[:shared, :shared] = torch.eye(shared)
            projections[key] = layer
    return projections
