"""The recipe's `eval` section."""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator

from potstill.models.settings import QatConfig
from potstill.util.schema import Strict


class EvalConfig(Strict):
    batch_size: int = Field(8, ge=1)
    """Held-out blocks per forward pass when an `lm` run scores its models, and in its
    held-out checks during training (speed and memory only)."""
    generate_tokens: int = Field(32, ge=1)
    """New tokens each model generates (`lm` runs) for the report's sample continuations
    and its generation speed (tokens per second)."""
    baseline: bool = True
    """`lm` and `classify` runs: also train a baseline, the same student on cross-entropy
    alone with no teacher signal (a classifier: on the teacher's hard labels), so the
    report shows what distillation bought."""
    quantize: list[QatConfig] = Field(default_factory=list)
    """Also score the trained student quantized after training, one report row each
    (`student-int8`, `student-int4`, ...): `[int8, int4]` or `[{weights: int4,
    group_size: 64}]`. Not with `student.qat`, which already trains it quantized."""

    @field_validator("quantize", mode="before")
    @classmethod
    def _short_names(cls, value: Any) -> Any:
        if isinstance(value, list):
            return [{"weights": v} if isinstance(v, str) else v for v in value]
        return value
