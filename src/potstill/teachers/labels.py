"""`SoftLabels`: the teacher's class distributions, read back as a teacher source.

The teacher labelled every text once (``potstill label``); training then needs no teacher
model, only its ``(N, C)`` distributions. They are handed out as a "sequence of one
position", ``(B, 1, C)``, so the token-level divergences apply unchanged at the class
level (N = examples, V = labels).
"""

from __future__ import annotations

import torch

from potstill.data.batch import Batch
from potstill.data.examples import ClassBatch
from potstill.signals import DenseSignal, SignalRequest, TeacherOutputs


class SoftLabels:
    """A teacher source over precomputed class distributions.

    Args:
        log_probs: ``(N, C)`` the teacher's log-probabilities over the ``C`` labels for
            each of the ``N`` examples (used as logits: their softmax at ``T = 1`` is the
            teacher's distribution, at ``T`` its tempered one).

    >>> teacher = SoftLabels.from_probs(torch.tensor([[0.25, 0.75], [0.5, 0.5]]))
    >>> batch = Batch.of(torch.zeros(1, 3, dtype=torch.long), torch.zeros(1, 3, dtype=torch.long),
    ...                  torch.tensor([1]))
    >>> teacher.outputs(batch, SignalRequest()).distributions.logits.exp()
    tensor([[[0.5000, 0.5000]]])
    """

    def __init__(self, log_probs: torch.Tensor) -> None:
        if log_probs.dim() != 2:
            raise ValueError(f"log_probs must be (N, C), got {tuple(log_probs.shape)}")
        self.log_probs = log_probs.float()

    @classmethod
    def from_probs(cls, probs: torch.Tensor) -> SoftLabels:
        """From ``(N, C)`` probabilities (each row sums to 1)."""
        return cls(torch.as_tensor(probs, dtype=torch.float32).log())

    @property
    def num_classes(self) -> int:
        return int(self.log_probs.shape[1])

    def outputs(self, batch: Batch | ClassBatch, request: SignalRequest) -> TeacherOutputs:
        """The soft labels of ``batch``'s examples, ``(B, 1, C)``; nothing else exists."""
        if request.hidden_layers or request.attention_layers:
            raise ValueError(
                "soft labels hold the teacher's class distributions only: hidden-state and "
                "attention terms need a live teacher"
            )
        if not request.distributions:
            return TeacherOutputs()
        index = batch.index.to(self.log_probs.device)
        return TeacherOutputs(distributions=DenseSignal(self.log_probs[index][:, None, :]))
