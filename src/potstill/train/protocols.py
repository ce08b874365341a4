"""What the training loop asks of its data and its task (`potstill.train.loop`): protocols,
so any task's dataset and loss plug in without inheriting from anything."""

from __future__ import annotations

from typing import Protocol

import torch
from torch import nn

from potstill.signals import SignalRequest, TeacherOutputs


class MicroBatch(Protocol):
    """What a dataset hands the loop: a `Batch` (token blocks) or a task's own type
    (`potstill.data.examples.ClassBatch`); the loop only moves it and keys teachers by
    ``index``."""

    @property
    def index(self) -> torch.Tensor: ...

    def to(self, device: torch.device | str) -> MicroBatch: ...


class Dataset(Protocol):
    """What the loop draws micro-batches from (packed blocks, labelled examples, …)."""

    def __len__(self) -> int: ...

    def batch(self, index: torch.Tensor) -> MicroBatch: ...


class Task(Protocol):
    """What the loop asks of a task (see `potstill.tasks.causal_lm.CausalLM`).

    ``unit`` names what ``count`` counts (``tok`` for tokens, ``ex`` for examples).
    """

    unit: str

    @property
    def request(self) -> SignalRequest: ...

    def count(self, batch: MicroBatch) -> int: ...

    def prepare(self, model: nn.Module, sample: MicroBatch) -> None: ...

    def loss(
        self,
        model: nn.Module,
        batch: MicroBatch,
        teacher: TeacherOutputs | None,
        *,
        num_tokens: int,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]: ...
