"""Labelled texts for a classifier student: `ClassExamples` and its batches, `ClassBatch`.

A classification example is a text, its hard label (the teacher's argmax or a gold label)
and, beside it, the teacher's soft label (a distribution over the ``C`` labels). Texts are
tokenized once; a batch is right-padded with an attention mask.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from potstill.data.batch import Batch
from potstill.util.errors import PotstillError
from potstill.util.tokens import IGNORE_INDEX


@dataclass(frozen=True)
class ClassBatch:
    """One micro-batch of classification examples: the tokens and one target per example.

    Composed, not subclassed: ``tokens`` is an ordinary `Batch` (its ``labels`` are the
    token ids, -100 on padding, so it stays a valid token batch), and the class targets
    travel beside it, one per example rather than one per token.

    Args:
        tokens: the `Batch` of ``(B, L)`` right-padded token ids, mask and ``(B,)`` index.
        targets: ``(B,)`` long hard labels in ``[0, C)``.

    >>> b = ClassBatch(Batch.of(torch.tensor([[5, 6]]), torch.tensor([[5, 6]]),
    ...                         torch.tensor([3])), torch.tensor([1]))
    >>> b.index.tolist(), len(b)
    ([3], 1)
    """

    tokens: Batch
    targets: torch.Tensor

    def __post_init__(self) -> None:
        n = self.tokens.input_ids.shape[0]
        if self.targets.shape != (n,) or self.targets.dtype != torch.long:
            raise ValueError(
                f"targets must be (B,) = ({n},) long, got {tuple(self.targets.shape)} "
                f"{self.targets.dtype}"
            )

    @property
    def input_ids(self) -> torch.Tensor:
        return self.tokens.input_ids

    @property
    def attention_mask(self) -> torch.Tensor:
        return self.tokens.attention_mask

    @property
    def index(self) -> torch.Tensor:
        """``(B,)`` which examples these are; soft labels are looked up by it."""
        return self.tokens.index

    def __len__(self) -> int:
        return int(self.targets.shape[0])

    def to(self, device: torch.device | str) -> ClassBatch:
        return ClassBatch(self.tokens.to(device), self.targets.to(device))


class ClassExamples:
    """Texts with hard labels (and optionally the teacher's soft labels): a training set.

    Implements the training loop's ``Dataset``: ``len`` and ``batch(index)``.

    Args:
        tokenizer: an HF tokenizer; texts are tokenized once, truncated to ``max_length``.
        texts: the ``N`` texts.
        hard_labels: ``N`` ints in ``[0, C)``.
        soft_labels: optional ``(N, C)`` float, each row a distribution over the labels.
        max_length: tokens kept per text.
    """

    def __init__(
        self,
        tokenizer: Any,
        texts: Sequence[str],
        hard_labels: Sequence[int] | torch.Tensor,
        soft_labels: torch.Tensor | None = None,
        max_length: int = 256,
    ) -> None:
        if max_length < 1:
            raise ValueError(f"max_length must be >= 1, got {max_length}")
        targets = torch.as_tensor(hard_labels, dtype=torch.long).reshape(-1)  # (N,)
        if len(texts) != targets.shape[0]:
            raise PotstillError(
                f"{len(texts)} texts but {targets.shape[0]} labels; give one label per text"
            )
        if len(texts) == 0:
            raise PotstillError("no examples: give at least one labelled text")
        if soft_labels is not None:
            soft_labels = torch.as_tensor(soft_labels, dtype=torch.float32)
            if soft_labels.dim() != 2 or soft_labels.shape[0] != len(texts):
                raise PotstillError(
                    f"soft labels must be (N, C) with N = {len(texts)} texts, got "
                    f"{tuple(soft_labels.shape)}"
                )
        num_classes = soft_labels.shape[1] if soft_labels is not None else int(targets.max()) + 1
        bad = ((targets < 0) | (targets >= num_classes)).nonzero().flatten()
        if len(bad):
            i = int(bad[0])
            raise PotstillError(
                f"example {i}: label {int(targets[i])} is outside 0..{num_classes - 1}; "
                "every hard label must name one of the labels"
            )
        encoded = tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"]
        empty = [i for i, ids in enumerate(encoded) if not ids]
        if empty:
            raise PotstillError(
                f"example {empty[0]} has no tokens (empty text); drop it or give it text"
            )
        self.ids = [torch.tensor(ids, dtype=torch.long) for ids in encoded]
        self.targets = targets
        self.soft_labels = soft_labels
        self.num_classes = num_classes
        self.max_length = max_length
        pad = getattr(tokenizer, "pad_token_id", None)
        self.pad_token_id = int(pad) if pad is not None else 0

    def __len__(self) -> int:
        return len(self.ids)

    def batch(self, index: torch.Tensor) -> ClassBatch:
        """The examples at ``index`` ``(B,)``, right-padded to the longest of them."""
        index = torch.as_tensor(index, dtype=torch.long).reshape(-1)  # (B,)
        rows = [self.ids[i] for i in index.tolist()]
        width = max(len(r) for r in rows)
        input_ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.bool)
        for i, row in enumerate(rows):
            input_ids[i, : len(row)] = row
            mask[i, : len(row)] = True
        labels = input_ids.masked_fill(~mask, IGNORE_INDEX)  # (B, L)
        return ClassBatch(Batch(input_ids, mask, labels, index), self.targets[index])
