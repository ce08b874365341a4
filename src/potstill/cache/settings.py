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
    """Run the teacher once, into the cache, and train the student from it; `false` runs
    the teacher live at every training step (needed for attention terms)."""
    # The default cache is 192 draws per token and no top-k: an unbiased estimate of the
    # teacher, whose students match the live teacher's perplexity within 0.6% where top-64
    # students are 7.3% worse (bench/results/cache_sampled.txt), at 99 bytes/token.
    top_k: int = Field(0, ge=0)
    """How many of the teacher's most likely token ids the cache keeps per position, with
    their log-probabilities; the rest of its mass is drawn (`samples`) or kept as one tail
    bucket. Naming only `top_k` means `samples: 0`; a recipe whose KD terms a sampled cache
    cannot serve (not `forward_kl`, or several temperatures) and that names neither key
    gets `top_k: 64, samples: 0`."""
    samples: int = Field(192, ge=0)
    """Draws per token from the teacher's mass outside the `top_k` ids, an unbiased
    estimate of its distribution (`potstill.losses.sampled`; `top_k: 0` = pure sampling,
    `top_k > 0` = hybrid); 0 = no draws, the rest is one tail bucket. Only `forward_kl`
    (and `cross_entropy`) train on draws, at the cache's temperature."""
    seed: int = Field(0, ge=0)
    """The seed of the draws: each shard's draws are fixed by it, so a killed `teach`
    resumes to the same bytes."""
    temperature: float | None = Field(None, gt=0.0)
    """The temperature the cached log-probabilities are taken at; null = the KD terms' own
    temperature when they share one (re-tempering the tail is then exact), else 1."""
    bits: int = Field(8, ge=2, le=16)
    """The bits each cached log-probability is quantized to (fewer = a smaller cache, a
    coarser teacher)."""
    hidden_error: float = Field(0.04, ge=0.0, lt=1.0)
    """How much of the teacher's hidden states (kept for `hidden_mse`/`hidden_cosine`
    terms) the cache may lose: their mean relative squared error `‖ĥ − h‖² / ‖h‖²`, the
    `hidden_mse` scale. Above 0 they are coded in a basis fitted on the first shard taught,
    with entropy-coded coefficients (`potstill.cache.states`), and the error each shard
    reaches is recorded in the manifest; 0 keeps them exactly, in float16 (2 × width bytes
    per token and layer). At 0.04 the default's five layers take 9% of their float16
    bytes, and its students trained from them were as good as from float16 states over
    three seeds (`bench/results/hidden_states.json`)."""
    blocks: str | int = "schedule"
    """Which training blocks to cache: `schedule` = exactly those `train.steps` visit,
    `all` = every block, or a number N = the first N blocks in the order training visits
    them (then the rest)."""
    batch_size: int = Field(8, ge=1)
    """Blocks per teacher forward pass while filling the cache (speed and memory only)."""
    shard_blocks: int = Field(64, ge=1)
    """Blocks per cache shard, the unit written atomically: a killed `teach` redoes at most
    one shard."""
    cache_memory_mb: float = Field(1024.0, gt=0.0)
    """How much memory decoded cache shards may take while the student trains: a cache
    that fits is decoded once, a larger one is read shard by shard as training reaches it
    (the next shard decoded ahead), so memory does not grow with the corpus. At least two
    shards are kept."""
    cache: str | None = None
    """A cache folder to train from, e.g. another run's; null = `runs_dir/NAME/cache`."""
    endpoint: EndpointConfig = EndpointConfig()
    """Where an `openai:MODEL` teacher is reached, and how hard it is pushed."""

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
