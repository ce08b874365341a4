"""The recipe's `student` section: where the student comes from and how it trains."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from potstill.models.quant_spec import QuantizationSpec
from potstill.util.schema import Strict


class FromTeacher(Strict):
    """Build the student by keeping a subset of the teacher's layers (weights copied)."""

    layers: list[int] = Field(min_length=1)


class FreshConfig(Strict):
    """A randomly initialised student of the teacher's architecture family."""

    num_layers: int = Field(4, ge=1)
    hidden_size: int = Field(256, ge=8)
    num_heads: int = Field(4, ge=1)
    num_kv_heads: int | None = None
    intermediate_size: int | None = None


class LoraConfig(Strict):
    r: int = Field(16, ge=1)
    alpha: int = Field(32, ge=1)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    target_modules: list[str] | Literal["all-linear"] = "all-linear"
    # Adapter students' learning rate (None: train.lr); adapters usually want ~10x a full
    # fine-tune's.
    lr: float | None = Field(None, gt=0.0)


# Quantization-aware training (student.qat) and post-training variants (eval.quantize)
# take the one quantization type (`potstill.models.quant_spec`).
QatConfig = QuantizationSpec


# On the bundled SmolLM2 (30 layers) keeping the first three and last three layers heals
# far faster than evenly spaced ones (bench/results/defaults.md).
DEFAULT_STUDENT_LAYERS = [0, 1, 2, 27, 28, 29]


class StudentConfig(Strict):
    model: str | None = None
    from_teacher: FromTeacher | None = None
    fresh: FreshConfig | None = None
    adapter: Literal["full", "lora", "pissa"] = "full"
    # task: classify trains one student per adapter listed here (None: all three).
    adapters: list[Literal["full", "lora", "pissa"]] | None = None
    # task: classify: the tokens of each text a classifier student reads (the rest is cut).
    max_length: int = Field(256, ge=8)
    lora: LoraConfig = LoraConfig()
    # Quantization-aware distillation (full fine-tunes only); None: a float32 student.
    qat: QatConfig | None = None

    @model_validator(mode="after")
    def _one_source(self) -> StudentConfig:
        given = [k for k in ("model", "from_teacher", "fresh") if getattr(self, k) is not None]
        if len(given) > 1:
            raise ValueError(
                f"student: give only one of model, from_teacher, fresh (got {', '.join(given)})"
            )
        if not given:
            self.__dict__["from_teacher"] = FromTeacher(layers=list(DEFAULT_STUDENT_LAYERS))
        if self.qat is not None and self.adapter != "full":
            raise ValueError(
                f"student.qat trains a full student, not {self.adapter} adapters: set "
                "student.adapter=full, or quantize the merged student afterwards "
                "(potstill quantize)"
            )
        return self

    @property
    def source(self) -> Literal["model", "from_teacher", "fresh"]:
        if self.model is not None:
            return "model"
        if self.fresh is not None:
            return "fresh"
        return "from_teacher"
