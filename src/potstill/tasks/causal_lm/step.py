"""The student's side of a training step: forward pass and loss, fused when possible.

When the student is a decoder followed by a plain linear output layer (most causal LMs,
adapters included), the loss is computed from the decoder's final hidden states by
`chunked_kd_loss`, fused with that layer, so the student's full ``(tokens × vocab)``
logits never exist at once. Anything else (logit soft-capping, scaled logits, a
non-linear head) goes through the model's own ``logits``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from potstill.losses import (
    IGNORE_INDEX,
    LossTerm,
    TeacherSignal,
    chunked_kd_loss,
    combine_losses,
    hidden_projections,
    inside_losses,
    resolve_layers,
)
from potstill.losses.inside import check_head_mapping
from potstill.models.load import text_config
from potstill.signals import TeacherOutputs
from potstill.util.errors import PotstillError
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
    teacher: TeacherSignal | TeacherOutputs | None,
    terms: Sequence[LossTerm],
    *,
    num_tokens: int,
    chunk_tokens: int,
    attention_mask: torch.Tensor | None = None,
    projections: Mapping[str, nn.Module] | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The weighted loss of one micro-batch (labels unshifted, HF-aligned): the causal
    shift is here, position ``t`` predicting token ``t + 1``.

    Hidden-state and attention terms (with resolved layer maps) compare the student's
    insides at positions ``0 .. L − 2`` (those with a next-token target) with the
    teacher's, through ``projections`` where the widths differ.

    Args:
        input_ids, labels: ``(B, L)`` long; labels -100 where no loss is taken.
        teacher: the teacher's `TeacherOutputs` (or only its distributions), aligned with
            ``labels[:, 1:]`` for distributions and with ``input_ids`` for the insides.
        attention_mask: ``(B, L)`` bool, or None when no token is padding.
    """
    outputs = teacher if isinstance(teacher, TeacherOutputs) else TeacherOutputs(teacher)
    token_terms = [t for t in terms if t.spec.kind == "tokens" and t.weight > 0]
    inside_terms = [t for t in terms if t.spec.kind != "tokens" and t.weight > 0]
    kinds = {t.spec.kind for t in inside_terms}
    want = {
        flag: True
        for flag, kind in (("output_hidden_states", "hidden"), ("output_attentions", "attention"))
        if kind in kinds
    }
    targets = labels[:, 1:]  # (B, L-1)
    mask = None if attention_mask is None else attention_mask[:, 1:]
    if fused is None:
        out = _forward(model, input_ids, attention_mask, **want)
        logits = out.logits[:, :-1]  # (B, L-1, V)
        total, parts = (
            combine_losses(
                token_terms, logits, targets, outputs.distributions, mask, num_tokens=num_tokens
            )
            if token_terms
            else (logits.new_zeros(()), {})
        )
    else:
        out = _decode(fused, input_ids, attention_mask, **want)
        hidden = out.last_hidden_state[:, :-1]  # (B, L-1, H)
        total, parts = (
            chunked_kd_loss(
                hidden,
                fused.head.weight,
                outputs.distributions,
                token_terms,
                targets,
                mask,
                num_tokens=num_tokens,
                chunk_size=chunk_tokens,
                lm_head_bias=fused.head.bias,
            )
            if token_terms
            else (hidden.new_zeros(()), {})
        )
    if not inside_terms:
        return total, parts
    valid = targets != IGNORE_INDEX  # (B, L-1): the positions the token terms count
    if mask is not None:
        valid = valid & mask.to(torch.bool)
    inside, inside_parts = inside_losses(
        inside_terms,
        [h[:, :-1] for h in out.hidden_states or ()],
        [a[:, :, :-1, :-1] for a in out.attentions or ()],
        TeacherOutputs(  # a live teacher's are (B, L, ·), a cache's already (B, L − 1, ·)
            None,
            {k: v[:, : targets.shape[1]] for k, v in outputs.hidden_states.items()},
            {k: v[:, :, :-1, :-1] for k, v in outputs.attentions.items()},
        ),
        valid,
        num_tokens=num_tokens,
        projections=projections,
    )
    return total + inside, {**parts, **inside_parts}


def _forward(
    model: nn.Module, input_ids: torch.Tensor, mask: torch.Tensor | None, **kwargs: bool
) -> Any:
    if mask is None:  # packed blocks: no mask keeps the model on its causal fast path
        return model(input_ids=input_ids, **kwargs)
    return model(input_ids=input_ids, attention_mask=mask, **kwargs)


def _decode(
    fused: FusedHead, input_ids: torch.Tensor, mask: torch.Tensor | None = None, **kwargs: bool
) -> Any:
    if mask is None:
        return fused.decoder(input_ids=input_ids, use_cache=False, **kwargs)
    return fused.decoder(input_ids=input_ids, attention_mask=mask, use_cache=False, **kwargs)


def _hidden(
    fused: FusedHead, input_ids: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    return _decode(fused, input_ids, mask).last_hidden_state


def resolve_inside(
    terms: Sequence[LossTerm],
    student: nn.Module,
    teacher: nn.Module,
    *,
    kept: Sequence[int] | None = None,
) -> list[LossTerm]:
    """``terms`` with each hidden-state and attention term's layer map resolved for these
    two models (``auto`` included; ``kept`` = the teacher blocks a ``from_teacher``
    student copies); an impossible map or head pairing is one `PotstillError` line.
    Token terms pass through unchanged; nothing is modified."""
    if all(t.spec.kind == "tokens" for t in terms):
        return list(terms)
    s_cfg, t_cfg = text_config(student), text_config(teacher)
    try:
        resolved = resolve_layers(
            terms,
            student_layers=s_cfg.num_hidden_layers,
            teacher_layers=t_cfg.num_hidden_layers,
            kept=kept,
        )
        for term in resolved:
            if term.spec.kind == "attention":
                check_head_mapping(s_cfg.num_attention_heads, t_cfg.num_attention_heads, term.heads)
    except ValueError as e:
        raise PotstillError(str(e)) from None
    return resolved


def prepare_inside(
    terms: Sequence[LossTerm],
    student: nn.Module,
    teacher: nn.Module,
    *,
    kept: Sequence[int] | None = None,
) -> tuple[list[LossTerm], nn.ModuleDict]:
    """Make ``terms``' hidden-state and attention terms ready for these two models:
    `resolve_inside`, then the projections for differing widths, and both models
    switched to eager attention when a term compares attention maps (the fused kernels
    return none)."""
    resolved = resolve_inside(terms, student, teacher, kept=kept)
    inside = [t for t in resolved if t.spec.kind != "tokens" and t.weight > 0]
    if any(t.spec.kind == "attention" for t in inside):
        for model in (student, teacher):
            base = model.get_base_model() if hasattr(model, "get_base_model") else model
            base.set_attn_implementation("eager")
    pairs = [p for t in inside if t.spec.kind == "hidden" for p in t.layers]
    s_cfg, t_cfg = text_config(student), text_config(teacher)
    return resolved, hidden_projections(pairs, s_cfg.hidden_size, t_cfg.hidden_size)
