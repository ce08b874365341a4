"""The recipe's `eval` section."""

from __future__ import annotations

from pydantic import Field

from potstill.util.schema import Strict


class EvalConfig(Strict):
    batch_size: int = Field(8, ge=1)
    generate_tokens: int = Field(32, ge=1)
    baseline: bool = True
