"""What a teacher hands to training: token distributions and, when asked, its insides.

A `SignalRequest` says which parts a recipe's loss terms need; a teacher source (live
model or cache) computes or reads only those, and answers with `TeacherOutputs`. Nothing
is computed that no term asks for.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from potstill.signals.distributions import TeacherSignal


@dataclass(frozen=True)
class SignalRequest:
    """Which parts of the teacher's outputs the loss terms need.

    Args:
        distributions: the next-token distributions (KD terms on logits).
        hidden_layers: teacher layers whose hidden states are wanted (0 = the embeddings,
            ``i`` = after block ``i``, the convention of HF's ``output_hidden_states``).
        attention_layers: teacher layers whose attention maps are wanted.
    """

    distributions: bool = True
    hidden_layers: tuple[int, ...] = ()
    attention_layers: tuple[int, ...] = ()

    @property
    def empty(self) -> bool:
        return not (self.distributions or self.hidden_layers or self.attention_layers)

    def __or__(self, other: SignalRequest) -> SignalRequest:
        return SignalRequest(
            self.distributions or other.distributions,
            tuple(sorted({*self.hidden_layers, *other.hidden_layers})),
            tuple(sorted({*self.attention_layers, *other.attention_layers})),
        )


NOTHING = SignalRequest(distributions=False)


@dataclass(frozen=True)
class TeacherOutputs:
    """The teacher's answer for one batch, aligned with the student's positions.

    Args:
        distributions: next-token distributions, ``(B, T, ·)``, position ``t`` aligned
            with the student's position ``t`` (shifted as the task's loss expects).
        hidden_states: layer -> ``(B, T, H_teacher)`` for the requested layers.
        attentions: layer -> ``(B, heads, T, T)`` for the requested layers.
    """

    distributions: TeacherSignal | None = None
    hidden_states: dict[int, torch.Tensor] = field(default_factory=dict)
    attentions: dict[int, torch.Tensor] = field(default_factory=dict)
