"""The student's side of a training step: forward pass and loss, fused when possible.

When the student is a decoder followed by a plain linear output layer (most causal LMs,
adapters included), the loss is computed from the decoder's final hidden states by
`chunked_kd_loss`, fused with that layer, so the student's full ``(tokens × vocab)``
logits never exist at once. Anything else (logit soft-capping, scaled logits, a
non-linear head) goes through the model's own ``logits``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from potstill.losses import LossTerm, TeacherSignal, chunked_kd_loss, combine_losses
from potstill.util.modes import eval_mode


@dataclass(frozen=True)
class FusedHead:
    decoder: nn.Module  # input ids -> final hidden states (after the final norm)
    head: nn.Linear  # hidden states -> logits


def find_fused_head(model: nn.Module, sample_ids: torch.Tensor) -> FusedHead | None:
    """The model's decoder and linear output layer, if they reproduce its logits exactly.

    Checked on ``sample_ids`` in eval mode (no dropout) rather than trusted from the
    architecture, so a model that post-processes its logits falls back to them.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # PEFT
    get_decoder = getattr(base, "get_decoder", None)
    head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    if get_decoder is None or type(head) is not nn.Linear:
        return None
    fused = FusedHead(get_decoder(), head)
    try:
        with eval_mode(model), torch.no_grad():
            expected = model(input_ids=sample_ids).logits
            got = fused.head(_hidden(fused, sample_ids))
    except (TypeError, AttributeError, ValueError):
        return None
    return fused if torch.allclose(got, expected, rtol=1e-4, atol=1e-4) else None


def student_loss(
    model: nn.Module,
    fused: FusedHead | None,
    input_ids: torch.Tensor,
    labels: torch.Tensor,
    teacher: TeacherSignal | None,
    terms: Sequence[LossTerm],
    *,
    num_tokens: int,
    chunk_tokens: int,
    attention_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The weighted loss of one micro-batch (labels unshifted, HF-aligned): the causal
    shift is here, position ``t`` predicting token ``t + 1``.

    Args:
        input_ids, labels: ``(B, L)`` long; labels -100 where no loss is taken.
        teacher: the teacher's distributions aligned with ``labels[:, 1:]``, ``(B, L − 1, ·)``.
        attention_mask: ``(B, L)`` bool, or None when no token is padding.
    """
    targets = labels[:, 1:]  # (B, L-1)
    mask = None if attention_mask is None else attention_mask[:, 1:]
    if fused is None:
        logits = _forward(model, input_ids, attention_mask).logits[:, :-1]  # (B, L-1, V)
        return combine_losses(terms, logits, targets, teacher, mask, num_tokens=num_tokens)
    hidden = _hidden(fused, input_ids, attention_mask)[:, :-1]  # (B, L-1, H)
    return chunked_kd_loss(
        hidden,
        fused.head.weight,
        teacher,
        terms,
        targets,
        mask,
        num_tokens=num_tokens,
        chunk_size=chunk_tokens,
        lm_head_bias=fused.head.bias,
    )


def _forward(model: nn.Module, input_ids: torch.Tensor, mask: torch.Tensor | None) -> object:
    if mask is None:  # packed blocks: no mask keeps the model on its causal fast path
        return model(input_ids=input_ids)
    return model(input_ids=input_ids, attention_mask=mask)


def _hidden(
    fused: FusedHead, input_ids: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    if mask is None:
        return fused.decoder(input_ids=input_ids, use_cache=False).last_hidden_state
    return fused.decoder(
        input_ids=input_ids, attention_mask=mask, use_cache=False
    ).last_hidden_state
