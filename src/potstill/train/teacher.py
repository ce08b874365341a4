"""Where a training step gets the teacher's signal: a live model, or the teacher cache."""

from __future__ import annotations

from typing import Protocol

import torch

from potstill.signals import DenseSignal, TeacherSignal


class TeacherSource(Protocol):
    def signal(self, input_ids: torch.Tensor, block_index: torch.Tensor) -> TeacherSignal:
        """The teacher's signal for blocks ``block_index`` (whose tokens are ``input_ids``),
        aligned with the shifted labels: ``(B, L − 1, …)``."""
        ...


class LiveTeacher:
    """Runs the teacher model forward (no grad) at every step: dense logits."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model

    def signal(self, input_ids: torch.Tensor, block_index: torch.Tensor) -> TeacherSignal:
        with torch.no_grad():
            return DenseSignal(self.model(input_ids=input_ids).logits[:, :-1])
