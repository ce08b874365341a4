"""Causal-LM distillation: next-token losses on text blocks, perplexity and agreement.

Everything that knows about the causal shift and the language-model head lives here:
the student's step (`step`: the loss fused with the output layer), the count of tokens a
batch trains on, and the held-out metrics (`metrics`: perplexity, top-1 agreement and
KL to the teacher).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from potstill.data.batch import Batch
from potstill.losses import LossTerm, signal_request
from potstill.signals import SignalRequest, TeacherOutputs
from potstill.tasks.causal_lm.metrics import LMScores, score_models
from potstill.tasks.causal_lm.step import (
    FusedHead,
    find_fused_head,
    prepare_inside,
    resolve_inside,
    student_loss,
)
from potstill.util.tokens import IGNORE_INDEX

__all__ = [
    "CausalLM",
    "FusedHead",
    "LMScores",
    "find_fused_head",
    "heldout_loss",
    "prepare_inside",
    "resolve_inside",
    "score_models",
    "student_loss",
]


@dataclass
class CausalLM:
    """The causal-LM task: what a training loop asks of a task.

    Args:
        terms: the loss terms: token terms (cross-entropy, KD divergences) and hidden-state
            or attention terms with resolved layer maps (`potstill.losses.resolve_layers`).
        chunk_tokens: tokens per chunk of the loss fused with the output layer.
        projections: the learned maps of the student's hidden states to the teacher's
            width (`potstill.losses.hidden_projections`), trained beside the student (hand
            them to the loop as ``extra``) and never part of it.
    """

    terms: Sequence[LossTerm]
    chunk_tokens: int = 128
    projections: nn.ModuleDict | None = None
    name: str = "causal_lm"
    unit: str = "tok"  # what `count` counts, for progress lines
    _fused: dict[int, FusedHead | None] = field(default_factory=dict, repr=False)

    @property
    def request(self) -> SignalRequest:
        """What the teacher must produce for these terms."""
        return signal_request(self.terms)

    def count(self, batch: Batch) -> int:
        """The tokens ``batch`` trains on: labels after the causal shift, not -100."""
        return int(((batch.labels[:, 1:] != IGNORE_INDEX) & batch.attention_mask[:, 1:]).sum())

    def prepare(self, model: nn.Module, sample: Batch) -> None:
        """Find the model's fused head once (checked against its own logits)."""
        self._fused[id(model)] = find_fused_head(model, sample.input_ids[:1])

    def loss(
        self,
        model: nn.Module,
        batch: Batch,
        teacher: TeacherOutputs | None,
        *,
        num_tokens: int,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The weighted loss of one micro-batch, divided by ``num_tokens`` (the step's).

        On a batch the student sampled itself (``batch.sampled``, on-policy) its tokens are
        no ground truth: only the terms that compare with the teacher apply.
        """
        if id(model) not in self._fused:
            self.prepare(model, batch)
        terms = self.terms
        if batch.sampled:
            terms = [t for t in terms if t.spec.needs_teacher]
            if not terms:
                raise ValueError(
                    "a batch of the student's own samples needs a term that compares with "
                    "the teacher (e.g. forward_kl); the loss has none"
                )
        return student_loss(
            model,
            self._fused[id(model)],
            batch.input_ids,
            batch.labels,
            teacher,
            terms,
            num_tokens=num_tokens,
            chunk_tokens=self.chunk_tokens,
            attention_mask=None if batch.packed else batch.attention_mask,
            projections=self.projections,
        )


def heldout_loss(
    input_ids: torch.Tensor, labels: torch.Tensor, *, batch_size: int = 8
) -> Callable[[nn.Module], float]:
    """The mean next-token cross-entropy (nats) of a model on these blocks, as a function
    of the model: the training loop's ``evaluate``. The report's scorer (`score_models`),
    so it is the log of the report's held-out perplexity, on these blocks only.

    input_ids, labels: (N, L) long, labels aligned with input_ids (-100 = not scored).
    """

    def evaluate(model: nn.Module) -> float:
        return score_models(
            {"model": model}, input_ids, labels, teacher=None, batch_size=batch_size
        )["model"].loss

    return evaluate
