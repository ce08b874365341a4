"""Selecting the tokens a loss counts, and tempering their logits."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def select_tokens(x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """``(B, T, ...) -> (N, ...)``: the valid tokens' rows. When every token is valid (plain
    text), a reshape replaces the boolean gather, and its scatter in backward."""
    if bool(valid.all()):
        return x.reshape(-1, *x.shape[2:])
    return x[valid]


def tempered_logprobs(
    logits: torch.Tensor, valid: torch.Tensor, temperature: float, dtype: torch.dtype
) -> torch.Tensor:
    """``log_softmax(logits / T)`` over the valid tokens, ``(N, V)``; no divide at T = 1."""
    selected = select_tokens(logits, valid).to(dtype)
    if temperature != 1.0:
        selected = selected / temperature
    return F.log_softmax(selected, dim=-1)


def compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """float32 for half/bf16/float32 inputs; float64 stays float64."""
    dtype = torch.float32
    for t in tensors:
        dtype = torch.promote_types(dtype, t.dtype)
    return dtype


def mean_over_tokens(
    per_token: torch.Tensor, valid: torch.Tensor, num_tokens: int | torch.Tensor | None
) -> torch.Tensor:
    """Sum over the valid tokens divided by their count (or ``num_tokens``), never by 0."""
    count = valid.sum() if num_tokens is None else torch.as_tensor(num_tokens)
    count = count.to(device=per_token.device, dtype=per_token.dtype).clamp_min(1)
    return per_token.sum() / count


def checked_tokens(
    student_logits: torch.Tensor, mask: torch.Tensor | None, temperature: float
) -> torch.Tensor:
    """The ``(B, T)`` bool tokens a loss counts (every one without ``mask``), after checking
    that the student's logits are float ``(B, T, V)``, the mask a bool ``(B, T)`` (labels
    passed as a mask are refused, never read as one) and the temperature positive."""
    if not student_logits.is_floating_point() or student_logits.dim() != 3:
        raise ValueError(
            f"student_logits must be float (B, T, V), got {student_logits.dtype} "
            f"{tuple(student_logits.shape)}"
        )
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    bt = tuple(student_logits.shape[:2])
    if mask is None:
        return torch.ones(bt, dtype=torch.bool, device=student_logits.device)
    if tuple(mask.shape) != bt:
        raise ValueError(f"mask shape {tuple(mask.shape)} != logits (B, T) {bt}")
    if mask.dtype != torch.bool:
        raise ValueError(f"mask must be bool (True where a token counts), got {mask.dtype}")
    return mask
