"""Classification distillation: a classifier student learns the teacher's soft labels.

The student is any model with a sequence-classification head, ``(B, L) -> (B, C)``
logits. Its loss is the registry's token-level losses at the class level: each example is
a "sequence of one position" whose vocabulary is the ``C`` labels, so forward KL to the
teacher's soft labels at temperature ``T`` (times ``T²``, Hinton et al. 2015) plus
cross-entropy on the hard labels come straight from `potstill.losses.combine_losses`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from potstill.data.examples import ClassBatch
from potstill.losses import LossTerm, combine_losses, signal_request
from potstill.signals import SignalRequest, TeacherOutputs


@dataclass
class Classify:
    """The classification task: what a training loop asks of a task.

    Args:
        terms: the loss terms (``cross_entropy`` on hard labels, KD divergences to the
            soft labels); every term averages over the step's examples.
    """

    terms: Sequence[LossTerm]
    name: str = "classify"
    unit: str = "ex"  # what `count` counts, for progress lines

    @property
    def request(self) -> SignalRequest:
        """The teacher's class distributions when a KD term is present, else nothing."""
        return signal_request(self.terms)

    def count(self, batch: ClassBatch) -> int:
        """The examples ``batch`` trains on: one per text."""
        return len(batch)

    def prepare(self, model: nn.Module, sample: ClassBatch) -> None:
        """Nothing to find: a classifier's logits are small."""

    def loss(
        self,
        model: nn.Module,
        batch: ClassBatch,
        teacher: TeacherOutputs | None,
        *,
        num_tokens: int,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The weighted loss of one micro-batch, summed over its examples and divided by
        ``num_tokens`` (the step's example count, so gradient accumulation is exact).

        ``teacher.distributions`` is ``(B, 1, C)`` (`potstill.teachers.labels.SoftLabels`).
        """
        logits = model(
            input_ids=batch.input_ids, attention_mask=batch.attention_mask.long()
        ).logits  # (B, C)
        return combine_losses(
            self.terms,
            logits[:, None, :],  # (B, 1, C): one position, vocabulary = labels
            batch.targets[:, None],  # (B, 1)
            None if teacher is None else teacher.distributions,
            num_tokens=num_tokens,
        )
