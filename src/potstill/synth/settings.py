"""The recipe's sections synth owns: ``task`` (what the teacher labels, and how) and
``generate`` (what the teacher writes, and how)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BeforeValidator, Field, field_validator, model_validator

from potstill.synth.calibration import CalibrateMode
from potstill.synth.prompt import Example, Label, LabelSpec
from potstill.util.schema import Strict


def _non_empty_system(system: str | None) -> str | None:
    if system is not None and not system.strip():
        raise ValueError("is empty; give the system prompt's text or leave it out")
    return system


# A system prompt: text, or None for none (never blank).
SystemPrompt = Annotated[str | None, AfterValidator(_non_empty_system)]


def _calibrate_mode(value: Any) -> Any:
    """Old recipes' booleans: true was content-free calibration, false none."""
    if isinstance(value, bool):
        return "content_free" if value else "none"
    return value


# task.calibrate: auto | none | content_free | prior (true and false still read, as before).
Calibrate = Annotated[CalibrateMode, BeforeValidator(_calibrate_mode)]


class LabelConfig(Strict):
    """A label as a recipe writes it in full: ``{name, description, answer}``; ``answer``
    is what the teacher says for it when the name (the data's gold label) is not plain
    words, e.g. ``{name: sci.med, answer: medicine}``."""

    name: str
    description: str | None = None
    answer: str | None = None


class ExampleConfig(Strict):
    """A few-shot example: a text and the name of its label."""

    text: str
    label: str


class TaskConfig(Strict):
    """What the student learns: next tokens (``lm``), the teacher's labels (``classify``)
    or the teacher's checked reasoning (``reason``, set up in the recipe's ``reason``).

    ``labels`` are plain names or ``{name, description}`` mappings; ``train`` is the path
    of the unlabelled texts, ``test`` of a labelled test set (``label_field`` names its
    gold labels). ``train_label_field`` names gold labels in ``train`` when the user has
    them: a gold-trained reference student is then trained too, and ``hard_labels: gold``
    makes the students' cross-entropy term use them instead of the teacher's argmax.
    ``calibrate`` is how the teacher's scores become soft labels
    (`potstill.synth.calibration.fit_calibration`): ``none``, ``content_free`` (Zhao et
    al. 2021; assumes balanced classes), ``prior`` (label shift, Saerens et al. 2002,
    towards the train gold label frequencies, else their EM estimate) or ``auto`` (the
    default: the one of those three whose labels agree best with the train gold labels;
    ``none`` without them). ``shots`` takes that
    many few-shot examples for the labelling prompt from the gold-labelled train texts (at
    least one per label where it can, chosen by ``train.seed``) when ``examples`` is empty.
    ``max_train`` / ``max_test`` keep only the first texts of each file.
    ``shard_texts`` texts are labelled between two atomic saves.

    >>> TaskConfig(kind="classify", labels=["yes", {"name": "no"}]).to_spec().names
    ['yes', 'no']
    """

    # The one switch between flows: next-token distillation on text (lm), the teacher's
    # labels into a classifier (classify), checked chain-of-thought traces (reason), or a
    # context only the teacher reads distilled into an adapter (context).
    kind: Literal["lm", "classify", "reason", "context"] = "lm"
    labels: list[str | LabelConfig] = Field(default_factory=list)
    instruction: str | None = None
    examples: list[ExampleConfig] = Field(default_factory=list)
    text_field: str = "text"
    label_field: str | None = None
    train_label_field: str | None = None
    hard_labels: Literal["teacher", "gold"] = "teacher"
    # auto: with gold-labelled train texts (train_label_field), the calibration whose
    # labels agree best with them (none, prior or content_free); without, none.
    calibrate: Calibrate = "auto"
    # 0: a zero-shot prompt, as before; few-shot prompts are longer, and a recipe's
    # task.max_length sized for zero-shot would no longer fit its texts.
    shots: int = Field(0, ge=0)
    batch_size: int = Field(8, ge=1)
    max_length: int | None = Field(None, ge=1)
    train: str | None = None
    test: str | None = None
    max_train: int | None = Field(None, ge=1)
    max_test: int | None = Field(None, ge=1)
    shard_texts: int = Field(256, ge=1)

    @property
    def label_names(self) -> list[str]:
        return [x if isinstance(x, str) else x.name for x in self.labels]

    @model_validator(mode="after")
    def _valid_labels(self) -> TaskConfig:
        names = self.label_names
        if self.kind == "classify" and len(names) < 2:
            raise ValueError(
                f"task.labels has {len(names)} label(s) but kind is classify; give at least two"
            )
        if any(not name.strip() for name in names):
            raise ValueError("task.labels has an empty label name; give every label a name")
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise ValueError(f"task.labels lists {repeated} more than once; give each once")
        if self.hard_labels == "gold" and self.train_label_field is None:
            raise ValueError(
                "task.hard_labels is gold but task.train_label_field is not set; name the "
                "train file's gold-label field, or use hard_labels: teacher"
            )
        if self.shots and self.train_label_field is None:
            raise ValueError(
                f"task.shots is {self.shots} but task.train_label_field is not set; name the "
                "train file's gold-label field to take examples from, or set shots: 0"
            )
        if self.shots and self.examples:
            raise ValueError(
                "task.shots and task.examples are both set; give your own examples or let "
                "shots choose them from the labelled train texts, not both"
            )
        if names:
            for example in self.examples:
                if example.label not in names:
                    raise ValueError(
                        f"task.examples: label {example.label!r} is not one of {names}; "
                        "use a label from task.labels"
                    )
        return self

    def to_spec(self) -> LabelSpec:
        """The labelling task as `potstill.synth.prompt` takes it (refuses < 2 labels)."""
        labels = [
            Label(x) if isinstance(x, str) else Label(x.name, x.description, x.answer)
            for x in self.labels
        ]
        examples = [Example(x.text, x.label) for x in self.examples]
        return LabelSpec(labels, self.instruction, examples)


class GenerateConfig(Strict):
    """What the teacher writes (``potstill generate``): ``n`` responses to every prompt.

    ``prompts`` is a ``.jsonl``/``.csv``/``.parquet`` file (the text under
    ``prompt_field``), a ``.txt`` file (one prompt per non-empty line) or a ``shipped:``
    set; ``max_prompts`` keeps only the first. Each prompt is the user turn of a chat,
    after ``system`` when given. ``temperature`` is the sampling temperature (0 = greedy)
    and ``top_p`` the nucleus; each row samples with its own seed, derived from ``seed``,
    the prompt and the sample index. Generation stops at ``max_tokens``, an end token or
    one of ``stop`` (at most 4, as OpenAI). A local teacher decodes ``batch_size`` rows
    together; ``shard_rows`` rows are saved between two atomic writes.

    >>> GenerateConfig(prompts="prompts.jsonl", n=2).max_tokens
    256
    """

    prompts: str | None = None
    prompt_field: str = "prompt"
    system: SystemPrompt = None
    n: int = Field(1, ge=1, le=128)
    max_tokens: int = Field(256, ge=1)
    temperature: float = Field(0.7, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    seed: int = Field(0, ge=0)
    stop: list[str] = Field(default_factory=list, max_length=4)
    batch_size: int = Field(8, ge=1)
    shard_rows: int = Field(64, ge=1)
    max_prompts: int | None = Field(None, ge=1)

    @field_validator("stop")
    @classmethod
    def _non_empty_stops(cls, stop: list[str]) -> list[str]:
        if any(s == "" for s in stop):
            raise ValueError("a stop string is empty; give text or drop it")
        return stop


class OnPolicyConfig(Strict):
    """On-policy distillation (GKD): a ``fraction`` λ of the trace-trained student's
    batches are replaced by its own replies to the same problems, sampled at
    ``temperature`` in at most ``max_tokens`` tokens (None: ``generate.max_tokens``), and
    scored by the teacher; only the loss's teacher terms train on them. The student with
    ``fraction: 0`` (off-policy) is trained beside it for the comparison.

    >>> OnPolicyConfig().fraction
    0.5
    """

    fraction: float = Field(0.5, gt=0.0, le=1.0)
    temperature: float = Field(1.0, gt=0.0)
    max_tokens: int | None = Field(None, ge=1)


class ReasonConfig(Strict):
    """Chain-of-thought distillation (``task.kind: reason``): problems with checkable
    answers from the reasoning-gym generator ``dataset`` (its ``options`` passed as they
    are), ``train`` of them for the teacher to solve and ``test`` held out, drawn at
    ``seed`` and ``seed + 1`` with no question in both. Teacher and students read
    ``system`` before each question. The teacher writes ``generate.n`` traces per train
    problem (``generate``'s sampling settings); only traces whose final answer checks are
    kept. Everyone answers the test problems greedily, in at most ``max_tokens`` tokens,
    ``batch_size`` at a time.

    >>> ReasonConfig().dataset
    'chain_sum'
    """

    dataset: str = "chain_sum"
    options: dict[str, Any] = Field(default_factory=dict)
    train: int = Field(64, ge=1)
    test: int = Field(50, ge=1)
    seed: int = Field(0, ge=0)
    system: SystemPrompt = "Think step by step, then give the final answer as a number."
    max_tokens: int = Field(256, ge=1)
    batch_size: int = Field(32, ge=1)
    # Also train a student on every trace, checked or not: what the checking bought.
    unchecked: bool = False
    # Train the student on the final answers alone (no reasoning): what the traces bought.
    answers: bool = True
    # Also train an on-policy student (GKD) and compare it with the off-policy one.
    on_policy: OnPolicyConfig | None = None
