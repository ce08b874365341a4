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
