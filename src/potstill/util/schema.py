"""The base of every recipe section: unknown keys are refused, assignments validated.

A string literal right under a field is its description (``use_attribute_docstrings``),
which the generated recipe reference reads.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Strict(BaseModel):
    model_config = ConfigDict(
        extra="forbid", validate_assignment=True, use_attribute_docstrings=True
    )
