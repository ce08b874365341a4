"""Recipes: typed, validated configuration read from YAML with ``key.sub=value`` overrides.

Every key has a default, so a recipe names only what it changes. Mistakes are reported as
one `PotstillError` line that names the key and the fix (with the closest valid key for a
typo).
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from potstill.util.errors import PotstillError

LossName = Literal["cross_entropy", "forward_kl", "reverse_kl", "jsd", "tvd", "skew_kl"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class FromTeacher(_Strict):
    """Build the student by keeping a subset of the teacher's layers (weights copied)."""

    layers: list[int] = Field(min_length=1)


class FreshConfig(_Strict):
    """A randomly initialised student of the teacher's architecture family."""

    num_layers: int = Field(4, ge=1)
    hidden_size: int = Field(256, ge=8)
    num_heads: int = Field(4, ge=1)
    num_kv_heads: int | None = None
    intermediate_size: int | None = None


class LoraConfig(_Strict):
    r: int = Field(16, ge=1)
    alpha: int = Field(32, ge=1)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    target_modules: list[str] | Literal["all-linear"] = "all-linear"


# Measured on the bundled SmolLM2 (30 layers): keeping the first three and last three
# layers heals far faster than evenly spaced ones (held-out perplexity after 60 KD steps:
# 178 vs 222 for [0, 6, 12, 18, 24, 29]).
DEFAULT_STUDENT_LAYERS = [0, 1, 2, 27, 28, 29]


class StudentConfig(_Strict):
    model: str | None = None
    from_teacher: FromTeacher | None = None
    fresh: FreshConfig | None = None
    adapter: Literal["full", "lora", "pissa"] = "full"
    lora: LoraConfig = LoraConfig()

    @model_validator(mode="after")
    def _one_source(self) -> StudentConfig:
        given = [k for k in ("model", "from_teacher", "fresh") if getattr(self, k) is not None]
        if len(given) > 1:
            raise ValueError(
                f"student: give only one of model, from_teacher, fresh (got {', '.join(given)})"
            )
        if not given:
            self.__dict__["from_teacher"] = FromTeacher(layers=list(DEFAULT_STUDENT_LAYERS))
        return self

    @property
    def source(self) -> Literal["model", "from_teacher", "fresh"]:
        if self.model is not None:
            return "model"
        if self.fresh is not None:
            return "fresh"
        return "from_teacher"


class DataConfig(_Strict):
    path: str | None = None  # None = the shipped Shakespeare corpus
    text_field: str = "text"
    prompt_field: str = "prompt"
    response_field: str = "response"
    block_size: int = Field(128, ge=8)
    heldout: float = Field(0.05, gt=0.0, lt=1.0)
    max_heldout_tokens: int | None = Field(16384, ge=1)
    seed: int = 0


class LossTerm(_Strict):
    loss: LossName
    weight: float = Field(1.0, ge=0.0)
    temperature: float = Field(1.0, gt=0.0)
    # jsd's mixture weight and skew_kl's skew: at the open interval's ends both losses are
    # identically zero (unlike TRL's endpoints), so those values are refused.
    beta: float | None = Field(None, gt=0.0, lt=1.0)
    alpha: float | None = Field(None, ge=0.0, lt=1.0)

    @model_validator(mode="after")
    def _params_fit_loss(self) -> LossTerm:
        if self.beta is not None and self.loss != "jsd":
            raise ValueError(f"loss term {self.loss}: beta applies only to jsd")
        if self.alpha is not None and self.loss != "skew_kl":
            raise ValueError(f"loss term {self.loss}: alpha applies only to skew_kl")
        if self.loss == "cross_entropy" and self.temperature != 1.0:
            raise ValueError("loss term cross_entropy: temperature applies only to KD terms")
        return self


class TrainConfig(_Strict):
    # lr 7e-4: at 1e-3 the cross-entropy-only baseline of the default run can diverge
    # (measured: gradient norm 105, held-out perplexity 530), which flatters distillation.
    steps: int = Field(130, ge=1)
    batch_size: int = Field(4, ge=1)
    grad_accum: int = Field(1, ge=1)
    lr: float = Field(7.0e-4, gt=0.0)
    min_lr_ratio: float = Field(0.1, ge=0.0, le=1.0)
    weight_decay: float = Field(0.0, ge=0.0)
    warmup: int = Field(10, ge=0)
    clip: float | None = Field(1.0, gt=0.0)
    seed: int = 0
    freeze_embeddings: bool = False
    log_every: int = Field(1, ge=1)
    checkpoint_every: int = Field(50, ge=1)
    threads: int | None = Field(None, ge=1)
    # Tokens per chunk of the loss fused with the student's output projection: the
    # student's (tokens x vocab) logits exist one chunk at a time. 128 keeps a chunk's
    # float32 (c, V) temporaries under glibc's 32 MB mmap threshold at V = 49,152, so they
    # are reused instead of mapped and page-faulted afresh (measured: the default KD loss
    # on 508 tokens 0.75 s at 128, 1.03 s at 512; bench/loss.py at 4,096 tokens).
    chunk_tokens: int = Field(128, ge=1)


class TeachConfig(_Strict):
    """The teacher pass (``potstill teach``): what the cache keeps and where it lives.

    With ``enabled`` (the default) ``run`` pays the teacher once, into the cache, and the
    student trains from it; ``false`` runs the teacher live at every training step.
    """

    enabled: bool = True
    # 64: 88.9 bytes/token on the default data. The teacher keeps 19% of its mass outside
    # its top 64 there, and students trained from the cache trail live-teacher ones (60
    # steps: 188.5 vs 169.5 perplexity; top-256 177.1); see README, Benchmarks.
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


class EvalConfig(_Strict):
    batch_size: int = Field(8, ge=1)
    generate_tokens: int = Field(32, ge=1)
    baseline: bool = True


class Recipe(_Strict):
    name: str = "shakespeare-smollm2"
    teacher: str = "bundled:smollm2-135m-instruct"
    student: StudentConfig = StudentConfig()
    data: DataConfig = DataConfig()
    loss: list[LossTerm] = Field(
        default_factory=lambda: [
            LossTerm(loss="forward_kl", weight=0.7, temperature=1.0),
            LossTerm(loss="cross_entropy", weight=0.3),
        ],
        min_length=1,
    )
    train: TrainConfig = TrainConfig()
    teach: TeachConfig = TeachConfig()
    eval: EvalConfig = EvalConfig()
    runs_dir: str = "runs"
    device: str = "cpu"

    @model_validator(mode="after")
    def _some_weight(self) -> Recipe:
        if all(term.weight == 0 for term in self.loss):
            raise ValueError("loss: every term has weight 0; give at least one a positive weight")
        return self

    @property
    def run_dir(self) -> Path:
        return Path(self.runs_dir) / self.name

    @property
    def needs_teacher_logits(self) -> bool:
        return any(t.loss != "cross_entropy" for t in self.loss)

    @property
    def cache_dir(self) -> Path:
        return Path(self.teach.cache) if self.teach.cache else self.run_dir / "cache"

    @property
    def teach_temperature(self) -> float:
        """The temperature the cache is taken at (see `TeachConfig.temperature`)."""
        if self.teach.temperature is not None:
            return self.teach.temperature
        kd = {t.temperature for t in self.loss if t.loss != "cross_entropy" and t.weight > 0}
        return kd.pop() if len(kd) == 1 else 1.0

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


# --- loading -------------------------------------------------------------------------------


def load_recipe(path: str | Path | None = None, overrides: list[str] | None = None) -> Recipe:
    """Read a recipe (or the embedded default when ``path`` is None) and apply overrides.

    >>> load_recipe(None, ["train.steps=5", "student.adapter=lora"]).train.steps
    5
    """
    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise PotstillError(f"recipe {path} not found: give the path of a YAML recipe file")
        try:
            loaded = yaml.safe_load(path.read_text())
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" line {mark.line + 1}" if mark is not None else ""
            raise PotstillError(f"recipe {path}{where} is not valid YAML: fix the syntax") from e
        if loaded is not None and not isinstance(loaded, dict):
            raise PotstillError(f"recipe {path} must be a YAML mapping of keys to values")
        raw = loaded or {}
    for item in overrides or []:
        _apply_override(raw, item)
    return validate_recipe(raw, source=str(path) if path else "recipe")


def validate_recipe(raw: dict[str, Any], source: str = "recipe") -> Recipe:
    try:
        return Recipe.model_validate(raw)
    except ValidationError as e:
        raise PotstillError(_explain(e, raw, source)) from None


def _apply_override(raw: dict[str, Any], item: str) -> None:
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise PotstillError(f"override {item!r} is not key=value: write e.g. train.steps=100")
    node = raw
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[parts[-1]] = yaml.safe_load(value) if value != "" else None


def _explain(error: ValidationError, raw: dict[str, Any], source: str) -> str:
    """One line: which key, what is wrong, how to fix it."""
    first = error.errors()[0]
    loc = [str(p) for p in first["loc"]]
    key = ".".join(loc) or "(top level)"
    if first["type"] == "extra_forbidden":
        parent = _model_at(loc[:-1])
        known = sorted(parent.model_fields) if parent is not None else []
        close = difflib.get_close_matches(loc[-1], known, n=1)
        hint = f"did you mean {'.'.join([*loc[:-1], close[0]])}?" if close else ""
        return (
            f"{source}: unknown key {key}; {hint or 'valid keys here: ' + ', '.join(known)}"
        ).rstrip()
    if first["type"] == "literal_error":
        return f"{source}: {key} = {first.get('input')!r} is not allowed; {first['msg'].lower()}"
    msg = first["msg"]
    if msg.startswith("Value error, "):
        return f"{source}: {msg.removeprefix('Value error, ')}"
    return f"{source}: {key} = {first.get('input')!r}: {msg.lower()}"


def _model_at(loc: list[str]) -> type[BaseModel] | None:
    model: type[BaseModel] = Recipe
    for part in loc:
        if part.isdigit():
            continue
        field = model.model_fields.get(part)
        if field is None:
            return None
        inner = _first_model(field.annotation)
        if inner is None:
            return None
        model = inner
    return model


def _first_model(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _first_model(arg)
        if found is not None:
            return found
    return None
