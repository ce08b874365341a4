"""The recipe's `teach` section: what the teacher cache keeps and where."""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator, model_validator

from potstill.teachers.settings import EndpointConfig
from potstill.util.schema import Strict


class TeachConfig(Strict):
    """The teacher pass (``potstill teach``): what the cache keeps and where it lives.

    With ``enabled`` (the default) ``run`` pays the teacher once, into the cache, and the
    student trains from it; ``false`` runs the teacher live at every training step.
    ``endpoint`` is where an ``openai:MODEL`` teacher is reached (`EndpointConfig`).
    """

    enabled: bool = True
    # The default cache is 192 draws per token and no top-k: an unbiased estimate of the
    # teacher, whose students match the live teacher's perplexity within 0.6% where top-64
    # students are 7.3% worse (bench/results/cache_sampled.txt), at 99 bytes/token.
    # Naming only top_k asks for the top-k cache (samples 0); a recipe whose KD terms a
    # sampled cache cannot serve (not forward_kl, or several temperatures) and that names
    # neither key gets top_k 64, samples 0 (`Recipe`'s rule).
    top_k: int = Field(0, ge=0)
    # Draws per token from the teacher's mass outside the top_k ids (0: none, the rest is
    # one tail bucket). With draws the cache holds an unbiased estimate of the teacher's
    # distribution (`potstill.losses.sampled`): top_k 0 is pure sampling, top_k > 0 the
    # hybrid. Only forward_kl (and cross_entropy) train on it, at the cache's temperature.
    samples: int = Field(192, ge=0)
    seed: int = Field(0, ge=0)  # the draws' seed (each shard's draws are fixed by it)
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

    @model_validator(mode="before")
    @classmethod
    def _top_k_alone(cls, data: Any) -> Any:
        """``top_k`` named without ``samples`` is the top-k cache with a tail bucket."""
        if isinstance(data, dict) and "top_k" in data and "samples" not in data:
            return {**data, "samples": 0}
        return data

    @model_validator(mode="after")
    def _some_ids(self) -> TeachConfig:
        if self.top_k + self.samples < 1:
            raise ValueError("teach.top_k and teach.samples are both 0: keep some ids")
        return self

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
