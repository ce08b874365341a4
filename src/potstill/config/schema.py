"""The recipe: one typed model assembled from the sections each layer owns.

Every key has a default, so a recipe names only what it changes. Loss terms are
validated against the loss registry (`potstill.losses.REGISTRY`), the one list of names.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import ConfigDict, Field, ValidationError, field_validator, model_validator

from potstill.cache.settings import TeachConfig
from potstill.data.settings import ContextConfig, DataConfig
from potstill.evaluation.settings import EvalConfig
from potstill.losses import LOSS_NAMES, REGISTRY, LossTerm
from potstill.models.settings import StudentConfig
from potstill.synth.settings import GenerateConfig, ReasonConfig, TaskConfig
from potstill.train.settings import TrainConfig
from potstill.util.schema import Strict

# The registry's names as a Literal, so a wrong name lists the valid ones.
LossName = Literal[LOSS_NAMES]  # type: ignore[valid-type]
STAGES = ("generate", "teach", "distill", "baseline", "quantize", "evaluate", "report")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


class LossTermConfig(Strict):
    """A loss term as a recipe writes it: ``{loss, weight, temperature, <loss params>}``.

    The loss's own parameters (jsd's ``beta``, skew_kl's ``alpha``) sit beside the
    common keys; which ones a loss takes, and their ranges, come from the registry.
    Hidden-state and attention terms take ``layers``, a map ``{student_layer:
    teacher_layer}`` or ``auto`` (`potstill.losses.layers`), and attention terms
    ``heads`` (``grouped`` or ``mean``).
    """

    model_config = ConfigDict(extra="allow", validate_assignment=True)
    loss: LossName
    """Which loss this term adds, by its registry name (the loss names table lists what
    each compares)."""
    weight: float = Field(1.0, ge=0.0)
    """The term's weight in the training loss, the weighted sum of all terms; 0 turns the
    term off (at least one term needs a positive weight)."""
    temperature: float = Field(1.0, gt=0.0)
    """The KD temperature `T`: both distributions are softened as `softmax(logits / T)` and
    the term is multiplied by `T²`. KD terms only: `cross_entropy`, hidden and attention
    terms keep 1."""
    layers: dict[int, int] | Literal["auto"] | None = None
    """Hidden-state and attention terms only: which student layer is compared with which
    teacher layer, as `{student_layer: teacher_layer}`; `auto` or null = the automatic
    map (a cut student's kept layers against their teacher originals, else evenly spaced)."""
    heads: Literal["grouped", "mean"] = "grouped"
    """Attention terms only, when the head counts differ: `grouped` averages the side with
    more heads in consecutive groups down to the other's count; `mean` compares the maps
    averaged over all heads."""

    @model_validator(mode="after")
    def _valid_term(self) -> LossTermConfig:
        self.to_term()  # the registry checks names, parameters and ranges
        return self

    @property
    def params(self) -> dict[str, float]:
        return dict(self.model_extra or {})

    def to_term(self) -> LossTerm:
        layers = tuple(sorted(self.layers.items())) if isinstance(self.layers, dict) else None
        if self.layers is not None and REGISTRY[self.loss].kind == "tokens":
            raise ValueError(
                f"loss term {self.loss}: layers applies only to hidden and attention terms"
            )
        return LossTerm(self.loss, self.weight, self.temperature, self.params, layers, self.heads)

    def __getattr__(self, name: str) -> Any:
        # A loss parameter the recipe left out (or another loss's) reads as None.
        extra = self.__pydantic_extra__ or {}
        if name in extra:
            return extra[name]
        if any(name in spec.params for spec in REGISTRY.values()):
            return None
        return super().__getattr__(name)  # type: ignore[misc]


# The loss a recipe gets when it names none, by task kind: the best mix measured for each.
# lm (bench/results/ablate.json, docs/benchmarks.md): half cross-entropy beat 0.7 KD + 0.3
# CE (92.8 against 94.8 perplexity), KD alone was far worse (119.5), and FitNets on the
# auto layer map (each kept block's input matched to the input it had in the teacher;
# spread evenly with projections for any other student) took 114.3 to 111.0.
# classify: both shipped classification recipes' mix (soft labels at T=2, docs/tasks/classify.md).
# reason: the on-policy recipe's mix (recipes/gkd-chain-sum.yaml); a student with another
# tokenizer learns the traces' text alone and must say loss: [{loss: cross_entropy}].
# context: the context-distillation recipe's pure forward KL (recipes/context-pirate.yaml).
DEFAULT_LOSS: dict[str, list[dict[str, Any]]] = {
    "lm": [
        {"loss": "forward_kl", "weight": 0.5, "temperature": 1.0},
        {"loss": "cross_entropy", "weight": 0.5},
        {"loss": "hidden_mse", "weight": 1.0, "layers": "auto"},
    ],
    "classify": [
        {"loss": "forward_kl", "weight": 0.7, "temperature": 2.0},
        {"loss": "cross_entropy", "weight": 0.3},
    ],
    "reason": [
        {"loss": "cross_entropy", "weight": 0.5},
        {"loss": "forward_kl", "weight": 0.5},
    ],
    "context": [{"loss": "forward_kl", "weight": 1.0}],
}
# The train settings a recipe's `train` section leaves out, by task kind where the lm's
# (`TrainConfig`'s own defaults, tuned on the default run) do not fit: a classifier's full
# fine-tune at the lm's lr 2e-3 breaks, and at 1e-4 for 60 steps (the classification
# recipes' old settings) it stayed on the majority group of an imbalanced 6-group
# newsgroups task (46.0% against the teacher's 73.5%); lr 3e-4 for 150 steps reached
# 79.0% (docs/history.md). reason and context: their shipped recipes' settings.
DEFAULT_TRAIN: dict[str, dict[str, Any]] = {
    "classify": {"steps": 150, "batch_size": 8, "lr": 3.0e-4, "warmup": 5},
    "reason": {"steps": 40, "batch_size": 8, "lr": 1.0e-4, "warmup": 4},
    "context": {"steps": 60, "batch_size": 8, "warmup": 5},
}
# The cache for KD terms a sampled cache cannot serve (see `TeachConfig`).
TOP_K_CACHE = {"top_k": 64, "samples": 0}


class Recipe(Strict):
    """A whole run. Every key has a default, and the defaults are the settings measured
    best, so a recipe that names only ``name`` and ``data.path`` trains as the embedded
    default does (which adds only its time budget). Three defaults follow a stated rule,
    resolved at load and written into the run's ``config.yaml``: the loss terms by
    ``task.kind`` (`DEFAULT_LOSS`), the train settings a kind other than lm needs
    (`DEFAULT_TRAIN`, under any the recipe sets), and the teacher cache (192 draws per
    token, unless the KD terms are not forward KL at one temperature: then the top 64 ids).

    >>> Recipe().teach.samples, Recipe().train.lr, [t.loss for t in Recipe().loss]
    (192, 0.002, ['forward_kl', 'cross_entropy', 'hidden_mse'])
    >>> Recipe(loss=[{"loss": "reverse_kl"}]).teach.top_k
    64
    """

    name: str = "shakespeare-smollm2"
    """The run's name: its folder is `runs_dir/NAME`, so a plain folder name (letters,
    digits, `.`, `_`, `-`), not a path."""
    teacher: str = "bundled:smollm2-135m-instruct"
    """The teacher model: `bundled:NAME` (`potstill models` lists them), a Hugging Face hub
    id, a local model folder, or `openai:MODEL` for a model behind an OpenAI-compatible
    endpoint (`teach.endpoint`), which only writes text (`generate`, reasoning traces)."""
    student: StudentConfig = StudentConfig()
    """The student: where it comes from (a model, layers cut from the teacher, or a fresh
    model) and whether it trains fully or through adapters."""
    data: DataConfig = DataConfig()
    """The text an `lm` or `context` run trains on, and how it is cut into training and
    held-out blocks (`block_size` also bounds a `reason` run's sequences)."""
    loss: list[LossTermConfig] = Field(min_length=1)
    """The loss terms the student trains on, each `{loss, weight, temperature}` plus the
    loss's own parameters. Left out: the best mix measured for the `task.kind`
    (`potstill.config.schema.DEFAULT_LOSS`)."""
    train: TrainConfig = TrainConfig()
    """The optimiser, schedule, batches, checks and checkpoints of every model the run
    trains; a kind other than `lm` fills the keys it leaves out from its own defaults."""
    teach: TeachConfig = TeachConfig()
    """The teacher pass (`potstill teach`): what the teacher cache keeps and where it lives;
    the student then trains from the cache instead of running the teacher at every step."""
    eval: EvalConfig = EvalConfig()
    """How the models are scored, and what is scored beside the student: a baseline
    trained without the teacher, quantized copies of the student."""
    task: TaskConfig = TaskConfig()
    """What the student learns (`kind`), and for `classify` the labels, the texts and how
    the teacher labels them."""
    generate: GenerateConfig = GenerateConfig()
    """What the teacher writes (`potstill generate`): its answers to a prompts file, which
    `data.path` then trains on, and the sampling settings reasoning traces use too."""
    reason: ReasonConfig = ReasonConfig()
    """Chain-of-thought distillation (`task.kind: reason`): the problems, how they are
    asked, and which comparison students are trained."""
    context: ContextConfig | None = None
    """Context distillation (`task.kind: context`): what only the teacher reads (a system
    prompt and/or few-shot turns); required for that kind, refused for the others."""
    runs_dir: str = "runs"
    """The folder that holds every run's folder (`runs_dir/NAME`)."""
    device: str = "auto"
    """Where the models run: `auto` (a CUDA GPU when there is one, else Apple's `mps`, else
    the CPU), `cpu`, `cuda`, `cuda:N` or `mps`."""
    budget_minutes: float | None = Field(None, gt=0.0)
    """Fit `train.steps` so the whole run takes about this many minutes on this machine,
    measured as the run goes (`potstill.pipeline.budget`); null = run the steps as given.
    The embedded default recipe sets 14."""
    stages: list[Literal[STAGES]] | None = None  # type: ignore[valid-type]
    """The stages `potstill run` performs, always in the order `generate`, `teach`,
    `distill`, `baseline`, `quantize`, `evaluate`, `report`; null = every one that applies."""

    @model_validator(mode="before")
    @classmethod
    def _resolve_defaults(cls, data: Any) -> Any:
        """Fill the loss by task kind and pick the cache the loss terms can train on."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        task = data.get("task")
        kind = getattr(task, "kind", None) or (task or {}).get("kind", "lm")
        if data.get("loss") is None:
            data["loss"] = DEFAULT_LOSS.get(kind, DEFAULT_LOSS["lm"])
        train = data.get("train")
        if kind in DEFAULT_TRAIN and (train is None or isinstance(train, dict)):
            data["train"] = {**DEFAULT_TRAIN[kind], **(train or {})}  # the recipe's own win
        teach = data.get("teach")
        names_cache = isinstance(teach, dict) and ("top_k" in teach or "samples" in teach)
        unnamed = teach is None or (isinstance(teach, dict) and not names_cache)
        if unnamed:
            try:
                terms = [LossTermConfig.model_validate(t).to_term() for t in data["loss"]]
            except (ValidationError, ValueError, TypeError):
                return data  # the loss field's own validation says what is wrong
            fixed = teach.get("temperature") if isinstance(teach, dict) else None
            if _sampled_cache_problem(terms, _cache_temperature(terms, fixed)) is not None:
                data["teach"] = {**(teach or {}), **TOP_K_CACHE}
        return data

    @field_validator("name")
    @classmethod
    def _plain_name(cls, value: str) -> str:
        if not _NAME.fullmatch(value) or value in (".", ".."):
            raise ValueError(
                f"name = {value!r} must be a plain folder name (letters, digits, . _ -), "
                "not a path: the run lives in runs_dir/NAME; set runs_dir to move it"
            )
        return value

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", value):
            raise ValueError(f"device = {value!r}: give auto, cpu, cuda, cuda:N or mps")
        return value

    @model_validator(mode="after")
    def _quantize_a_float_student(self) -> Recipe:
        if self.eval.quantize and self.student.qat is not None:
            raise ValueError(
                "eval.quantize quantizes a float student after training, but student.qat "
                "already trains it quantized: drop one of them"
            )
        if any(q.learn_scales for q in self.eval.quantize):
            raise ValueError(
                "eval.quantize: learn_scales trains the scales, so it belongs in student.qat; "
                "post-training quantization computes them from the weights"
            )
        if self.student.qat is not None and self.train.parallel == "fsdp":
            raise ValueError(
                "student.qat trains through fake-quantized layers, which FSDP does not shard: "
                "use train.parallel ddp (a quantized student is small)"
            )
        return self

    @model_validator(mode="after")
    def _quantize_a_language_model(self) -> Recipe:
        """Only the lm flow quantizes its students; another kind would ignore the keys."""
        key = "student.qat" if self.student.qat is not None else "eval.quantize"
        if self.task.kind != "lm" and (self.student.qat is not None or self.eval.quantize):
            raise ValueError(
                f"{key} quantizes language-model students (task.kind: lm); a "
                f"{self.task.kind} run does not quantize its students yet: drop {key}"
            )
        return self

    @model_validator(mode="after")
    def _layers_cut_a_decoder(self) -> Recipe:
        """``student.layers`` cuts a decoder student; a classify run would ignore it."""
        if self.student.layers is not None and self.task.kind == "classify":
            raise ValueError(
                "student.layers cuts a decoder student.model (task.kind lm, reason or "
                "context); a classify run keeps its classifier whole: drop student.layers"
            )
        return self

    @model_validator(mode="after")
    def _some_weight(self) -> Recipe:
        if all(term.weight == 0 for term in self.loss):
            raise ValueError("loss: every term has weight 0; give at least one a positive weight")
        return self

    @model_validator(mode="after")
    def _curriculum_reads_the_cache(self) -> Recipe:
        if self.train.curriculum != "none" and not (
            self.teach.enabled and self.needs_teacher_logits
        ):
            raise ValueError(
                f"train.curriculum={self.train.curriculum} orders blocks by the teacher's "
                "entropy, read from the teacher cache: keep teach.enabled=true and a "
                "distillation loss term"
            )
        return self

    @model_validator(mode="after")
    def _attention_terms_run_live(self) -> Recipe:
        """The cache keeps token distributions and hidden states, not attention maps."""
        maps = sorted({t.loss for t in self.terms if t.spec.kind == "attention" and t.weight > 0})
        if maps and self.teach.enabled:
            raise ValueError(
                f"loss terms {', '.join(maps)} compare the teacher's attention maps, which the "
                "teacher cache does not keep: set teach.enabled=false (the teacher runs live "
                "at every step)"
            )
        return self

    @model_validator(mode="after")
    def _sampled_cache_terms(self) -> Recipe:
        """A sampled cache is an unbiased estimate for forward KL at its own temperature
        only (`potstill.losses.sampled`); other divergences, or re-tempering, would be
        biased, so they are refused."""
        if not (self.teach.enabled and self.teach.samples):
            return self
        problem = _sampled_cache_problem(self.terms, self.teach_temperature)
        if problem is not None:
            raise ValueError(problem)
        return self

    @model_validator(mode="after")
    def _kind_selects_context(self) -> Recipe:
        if self.context is not None and self.task.kind != "context":
            raise ValueError(
                f"context is set but task.kind is {self.task.kind}: context distillation is "
                "task.kind: context (add it), or drop the context section"
            )
        if self.task.kind == "context" and self.context is None:
            raise ValueError(
                "task.kind is context but the recipe has no context: give context.system "
                "and/or context.examples (what only the teacher reads)"
            )
        return self

    @property
    def run_dir(self) -> Path:
        return Path(self.runs_dir) / self.name

    @property
    def terms(self) -> list[LossTerm]:
        """The loss terms as the losses take them."""
        return [t.to_term() for t in self.loss]

    @property
    def needs_teacher_logits(self) -> bool:
        return any(t.to_term().spec.needs_teacher for t in self.loss)

    def wants(self, stage: str) -> bool:
        """Whether ``run`` performs ``stage`` (the recipe's `stages`, default all)."""
        return self.stages is None or stage in self.stages

    @property
    def cache_dir(self) -> Path:
        return Path(self.teach.cache) if self.teach.cache else self.run_dir / "cache"

    @property
    def teach_temperature(self) -> float:
        """The temperature the cache is taken at (see `TeachConfig.temperature`)."""
        return _cache_temperature(self.terms, self.teach.temperature)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def _cache_temperature(terms: list[LossTerm], fixed: float | None) -> float:
    """The temperature a cache is taken at: ``fixed`` (``teach.temperature``) when set,
    else the tempered terms' one temperature when they share one, else 1."""
    if fixed is not None:
        return fixed
    kd = {t.temperature for t in terms if t.spec.tempered and t.weight > 0}
    return kd.pop() if len(kd) == 1 else 1.0


def _sampled_cache_problem(terms: list[LossTerm], cache_temperature: float) -> str | None:
    """Why a sampled cache cannot train ``terms`` without bias, or None when it can: it is
    an unbiased estimate for forward KL at its own temperature only
    (`potstill.losses.sampled`). The recipe refuses such a cache when it is named, and
    takes the top-k cache instead when it is not."""
    kd = [t for t in terms if t.spec.needs_teacher and t.spec.kind == "tokens" and t.weight > 0]
    other = sorted({t.loss for t in kd if t.loss != "forward_kl"})
    if other:
        return (
            f"teach.samples: a sampled cache is an unbiased estimate for forward_kl only, "
            f"not {', '.join(other)}; use forward_kl, or a top-k cache "
            "(teach.samples=0 teach.top_k=64)"
        )
    temperatures = {t.temperature for t in kd} | {cache_temperature}
    if len(temperatures) > 1:
        return (
            "teach.samples: a sampled cache holds draws at one temperature and cannot be "
            f"re-tempered; the cache and the loss terms use {sorted(temperatures)}: give "
            "them one temperature"
        )
    return None
