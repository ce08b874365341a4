"""`Batch`: what one micro-batch of training or evaluation hands to a model."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from potstill.util.tokens import IGNORE_INDEX


@dataclass(frozen=True)
class Batch:
    """Token ids with their attention mask and labels, HF convention (labels unshifted).

    Args:
        input_ids: ``(B, L)`` long token ids.
        attention_mask: ``(B, L)`` bool, True for real tokens, False for padding.
        labels: ``(B, L)`` long, ``labels[t] == input_ids[t]`` or -100 where no loss is
            taken (prompt tokens, padding).
        index: ``(B,)`` long, which examples (packed blocks) of the dataset these are;
            a teacher cache is keyed by it.
        sampled: the labelled tokens were sampled from the student itself (on-policy
            distillation): they are no ground truth, so only terms that compare with the
            teacher apply to them.

    >>> b = Batch.of(torch.tensor([[5, 6, 7]]), torch.tensor([[-100, 6, 7]]), torch.tensor([0]))
    >>> b.attention_mask.tolist(), b.packed
    ([[True, True, True]], True)
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    index: torch.Tensor
    sampled: bool = False

    def __post_init__(self) -> None:
        if self.input_ids.dim() != 2 or self.input_ids.dtype != torch.long:
            raise ValueError(
                f"input_ids must be (B, L) long, got {tuple(self.input_ids.shape)} "
                f"{self.input_ids.dtype}"
            )
        shape = self.input_ids.shape
        if self.labels.shape != shape or self.labels.dtype != torch.long:
            raise ValueError(
                f"labels must be (B, L) = {tuple(shape)} long, got "
                f"{tuple(self.labels.shape)} {self.labels.dtype}"
            )
        if self.attention_mask.shape != shape or self.attention_mask.dtype != torch.bool:
            raise ValueError(
                f"attention_mask must be (B, L) = {tuple(shape)} bool, got "
                f"{tuple(self.attention_mask.shape)} {self.attention_mask.dtype}"
            )
        if self.index.shape != shape[:1]:
            raise ValueError(f"index must be (B,) = ({shape[0]},), got {tuple(self.index.shape)}")

    @classmethod
    def of(
        cls,
        input_ids: torch.Tensor,
        labels: torch.Tensor,
        index: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
    ) -> Batch:
        """A batch; no mask means every token is real (packed blocks)."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids, dtype=torch.bool)
        return cls(input_ids, attention_mask, labels, index)

    @property
    def packed(self) -> bool:
        """True when no token is padding: models may then run without a mask."""
        return bool(self.attention_mask.all())

    @property
    def num_labels(self) -> int:
        """Tokens that carry a label (not -100)."""
        return int((self.labels != IGNORE_INDEX).sum())

    def to(self, device: torch.device | str) -> Batch:
        return Batch(
            self.input_ids.to(device),
            self.attention_mask.to(device),
            self.labels.to(device),
            self.index.to(device),
            self.sampled,
        )
