"""The recipe's `eval` section."""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator

from potstill.models.settings import QatConfig
from potstill.util.schema import Strict


class EvalConfig(Strict):
    batch_size: int = Field(8, ge=1)
    generate_tokens: int = Field(32, ge=1)
    baseline: bool = True
    # Also score the trained student quantized after training, one report row each
    # (`student-int8`, `student-int4`, ...): `[int8, int4]` or `[{weights: int4,
    # group_size: 64}]`.
    quantize: list[QatConfig] = Field(default_factory=list)

    @field_validator("quantize", mode="before")
    @classmethod
    def _short_names(cls, value: Any) -> Any:
        if isinstance(value, list):
            return [{"weights": v} if isinstance(v, str) else v for v in value]
        return value
