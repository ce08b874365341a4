"""The recipe's `teach` section: what the teacher cache keeps and where."""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator

from potstill.teachers.settings import EndpointConfig
from potstill.util.schema import Strict


class TeachConfig(Strict):
    """The teacher pass (``potstill teach``): what the cache keeps and where it lives.

    With ``enabled`` (the default) ``run`` pays the teacher once, into the cache, and the
    student trains from it; ``false`` runs the teacher live at every training step.
    ``endpoint`` is where an ``openai:MODEL`` teacher is reached (`EndpointConfig`).
    """

    enabled: bool = True
    # 64: under 100 bytes/token on the default data; larger k costs bytes and, at the
    # default lr, stability (bench/results/defaults.md, bench/results/cache.txt).
    top_k: int = Field(64, ge=1)
    # The temperature the cached log-probabilities are taken at. None: the KD terms' own
    # temperature when they share one (re-tempering the tail is then exact), else 1.
    temperature: float | None = Field(None, gt=0.0)
    bits: int = Field(8, ge=2, le=16)  # log-probability quantization
    # Which training blocks to cache: "schedule" = exactly those `train.steps` visit,
    # "all" = every block, or the first N blocks the schedule visits.
    blocks: str | int = "schedule"
    batch_size: int = Field(8, ge=1)
    shard_blocks: int = Field(64, ge=1)
    # A cache folder to train from (e.g. another run's); None = runs/NAME/cache.
    cache: str | None = None
    endpoint: EndpointConfig = EndpointConfig()

    @field_validator("blocks", mode="before")
    @classmethod
    def _blocks(cls, value: Any) -> str | int:
        if value in ("schedule", "all") or (
            isinstance(value, int) and not isinstance(value, bool) and value >= 1
        ):
            return value
        raise ValueError(
            f"teach.blocks = {value!r}: give 'schedule', 'all' or a positive number of blocks"
        )
