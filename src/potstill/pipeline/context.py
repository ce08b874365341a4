"""What the stages of one run share: the recipe, its folder, its device, and the teacher,
tokenizer and data, each loaded once and only when a stage needs it."""

from __future__ import annotations

import functools
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from potstill.config import Recipe
from potstill.data import LMData, load_data
from potstill.losses import signal_request
from potstill.models.load import load_causal_lm, weights_sha256
from potstill.models.quantize import QuantizationSpec, prepare_qat
from potstill.models.student import build_student, student_qat
from potstill.pipeline.cross import data_tokenizer
from potstill.signals import SignalRequest
from potstill.tasks.causal_lm import resolve_inside
from potstill.util.device import autocast_dtype, resolve_device
from potstill.util.log import log


@dataclass
class RunContext:
    recipe: Recipe
    run_dir: Path
    resume: bool = False
    # When the run began (perf_counter), and how many models its flow will train: what a
    # budget for the kinds other than lm fits the steps to (`pipeline.budget.student_steps`).
    started: float = field(default_factory=time.perf_counter)
    models_to_train: int = 1

    @functools.cached_property
    def device(self) -> torch.device:
        return resolve_device(self.recipe.device)

    def run_info(self, wall_seconds: float) -> dict[str, Any]:
        """The report's ``run`` section: the run's name, wall time, device, threads and
        machine."""
        return {
            "name": self.recipe.name,
            "wall_seconds": wall_seconds,
            "device": str(self.device),
            "threads": torch.get_num_threads(),
            "machine": platform.processor() or platform.machine(),
        }

    @functools.cached_property
    def autocast_dtype(self) -> torch.dtype | None:
        return autocast_dtype(self.recipe.train.precision, self.device)

    @functools.cached_property
    def _teacher(self) -> tuple[torch.nn.Module, Any]:
        if self.recipe.train.threads:
            torch.set_num_threads(self.recipe.train.threads)
        log(f"teacher {self.recipe.teacher}")
        model, tokenizer = load_causal_lm(self.recipe.teacher, log=lambda m: log(f"  {m}"))
        return model.to(self.device), tokenizer

    @property
    def teacher(self) -> torch.nn.Module:
        return self._teacher[0]

    @property
    def tokenizer(self) -> Any:
        return self._teacher[1]

    @functools.cached_property
    def data_tokenizer(self) -> Any:
        """What the data is cut by: the teacher's tokenizer, or a ``student.model``'s of
        another tokenizer (a run across tokenizers, `potstill.pipeline.cross`)."""
        return data_tokenizer(self.recipe, self.tokenizer)

    @property
    def across(self) -> bool:
        """Whether the student's tokenizer is not the teacher's."""
        return self.data_tokenizer is not self.tokenizer

    @functools.cached_property
    def data(self) -> LMData:
        data = load_data(self.recipe.data, self.data_tokenizer, store=self.run_dir / "data")
        log(
            f"data {data.name}: {data.train.num_tokens:,} train tokens, "
            f"{data.heldout.num_tokens:,} held-out ({data.split})"
        )
        return data

    @functools.cached_property
    def inside(self) -> SignalRequest:
        """The teacher's hidden states and attention maps the recipe's terms compare, their
        layer maps resolved for this student (once per run); an impossible map or head
        pairing is refused in one line, so `run` asks before anything is taught."""
        terms = self.recipe.terms  # the loss terms never change within a run
        if all(t.spec.kind == "tokens" for t in terms):
            return SignalRequest(distributions=False)
        student, _ = build_student(self.recipe.student, self.teacher, self.tokenizer)
        resolved = resolve_inside(terms, student, self.teacher, kept=kept_layers(self.recipe))
        request = signal_request(resolved)
        return SignalRequest(False, request.hidden_layers, request.attention_layers)

    @functools.cached_property
    def qat(self) -> QuantizationSpec | None:
        """The quantization the students train towards (``student.qat``), checked on a
        throwaway student, so a group size that does not divide a layer's width is refused
        before anything is taught."""
        spec = student_qat(self.recipe.student)
        if spec is not None:
            student, _ = build_student(self.recipe.student, self.teacher, self.tokenizer)
            prepare_qat(student, spec)
        return spec

    @functools.cached_property
    def teacher_sha256(self) -> str:
        return weights_sha256(self.recipe.teacher)


def kept_layers(recipe: Recipe) -> list[int] | None:
    """The teacher blocks a ``from_teacher`` student copies (for ``auto`` layer maps)."""
    return recipe.student.from_teacher.layers if recipe.student.source == "from_teacher" else None
