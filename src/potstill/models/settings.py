"""The recipe's `student` section: where the student comes from and how it trains."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from potstill.models.quant_spec import QuantizationSpec
from potstill.util.schema import Strict


class FromTeacher(Strict):
    """Build the student by keeping a subset of the teacher's layers (weights copied)."""

    layers: list[int] = Field(min_length=1)
    """The teacher's layers the student keeps, by 0-based index, strictly increasing."""


class FreshConfig(Strict):
    """A randomly initialised student of the teacher's architecture family."""

    num_layers: int = Field(4, ge=1)
    """Decoder blocks."""
    hidden_size: int = Field(256, ge=8)
    """The model's width (the residual stream); a multiple of `num_heads`."""
    num_heads: int = Field(4, ge=1)
    """Attention heads per block."""
    num_kv_heads: int | None = None
    """Key/value heads (grouped-query attention; must divide `num_heads`); null =
    `num_heads`."""
    intermediate_size: int | None = None
    """The MLP's inner width; null = 4 × `hidden_size`."""


class LoraConfig(Strict):
    r: int = Field(16, ge=1)
    """The adapters' rank: trainable parameters grow with it."""
    alpha: int = Field(32, ge=1)
    """The adapters' scale: their update is multiplied by `alpha / r`."""
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    """Dropout on the adapters' input while training."""
    target_modules: list[str] | Literal["all-linear"] = "all-linear"
    """Which layers get adapters: a list of module names (e.g. `[q_proj, v_proj]`), or
    `all-linear`, every linear layer but the output head (a `classify` student takes
    PEFT's default for its architecture instead, e.g. BERT's `query` and `value`)."""
    lr: float | None = Field(None, gt=0.0)
    """The learning rate of adapter students (`lora`, `pissa`); null = `train.lr`. Adapters
    usually want about 10× a full fine-tune's (`bench/results/classify_adapter_lr.md`)."""


# Quantization-aware training (student.qat) and post-training variants (eval.quantize)
# take the one quantization type (`potstill.models.quant_spec`).
QatConfig = QuantizationSpec


# On the bundled SmolLM2 (30 layers) keeping the first three and last three layers heals
# far faster than evenly spaced ones (bench/results/defaults.md).
DEFAULT_STUDENT_LAYERS = [0, 1, 2, 27, 28, 29]


class StudentConfig(Strict):
    model: str | None = None
    """A ready model as the student: `bundled:NAME`, a hub id or a local folder. Give one
    of `model`, `from_teacher`, `fresh`; with none, a `classify` run takes
    `bundled:all-minilm-l6-v2` and the others `from_teacher`."""
    layers: list[int] | None = Field(None, min_length=1)
    """With `model`: keep only these decoder layers of it (0-based, strictly increasing,
    weights copied), a smaller student cut from any pretrained model, as `from_teacher`
    cuts the teacher; null = every layer. Decoder students only (not `classify`)."""
    from_teacher: FromTeacher | None = None
    """Cut the student from the teacher, keeping the listed layers with their weights. With
    no source given: layers `[0, 1, 2, 27, 28, 29]`, which on the bundled 30-layer SmolLM2
    heal far faster than evenly spaced ones (`bench/results/defaults.md`)."""
    fresh: FreshConfig | None = None
    """A randomly initialised student of the teacher's architecture, in the given shape."""
    adapter: Literal["full", "lora", "pissa"] = "full"
    """How the student trains: `full` (every weight), `lora` (low-rank adapters) or `pissa`
    (adapters started from each weight's principal singular vectors); adapter students
    are saved merged."""
    adapters: list[Literal["full", "lora", "pissa"]] | None = None
    """`classify` runs: train one student per adapter listed; null = all three."""
    max_length: int = Field(256, ge=8)
    """`classify` runs: the tokens of each text the classifier student reads (the rest is
    cut)."""
    lora: LoraConfig = LoraConfig()
    """The adapters of a `lora` or `pissa` student: rank, scale, target layers, learning
    rate."""
    qat: QatConfig | None = None
    """Quantization-aware distillation: the student trains through fake-quantized layers
    in this spec (e.g. `{weights: int4}`) and is saved quantized; full fine-tunes only,
    not with FSDP; null = a float32 student."""

    @model_validator(mode="after")
    def _one_source(self) -> StudentConfig:
        given = [k for k in ("model", "from_teacher", "fresh") if getattr(self, k) is not None]
        if len(given) > 1:
            raise ValueError(
                f"student: give only one of model, from_teacher, fresh (got {', '.join(given)})"
            )
        if self.layers is not None and self.model is None:
            raise ValueError(
                "student.layers cuts a student.model; to cut the teacher use "
                "student.from_teacher.layers"
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
