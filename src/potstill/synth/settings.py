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
    """The label's name, as the data's gold labels write it."""
    description: str | None = None
    """What the label means, shown to the teacher after its name in the labelling prompt;
    null = none."""
    answer: str | None = None
    """The words the teacher answers with for this label, when the name is not plain words
    (`sci.med` answered as `medicine`); null = the name."""


class ExampleConfig(Strict):
    """A few-shot example: a text and the name of its label."""

    text: str
    """The example's text."""
    label: str
    """The name of its label, one of `task.labels`."""


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

    kind: Literal["lm", "classify", "reason", "context"] = "lm"
    """The one switch between flows: `lm` (next-token distillation on text), `classify`
    (the teacher's labels into a classifier), `reason` (checked chain-of-thought traces) or
    `context` (a context only the teacher reads, distilled into an adapter). It also picks
    the default `loss` and `train` settings."""
    labels: list[str | LabelConfig] = Field(default_factory=list)
    """`classify`: the classes, at least two, as plain names or `{name, description,
    answer}` mappings."""
    instruction: str | None = None
    """`classify`: the instruction that opens the labelling prompt; null = `Classify the
    text.`"""
    examples: list[ExampleConfig] = Field(default_factory=list)
    """`classify`: your own few-shot examples for the labelling prompt, each `{text,
    label}`; not with `shots`."""
    text_field: str = "text"
    """`classify`: the field holding each text in the `train` and `test` files."""
    label_field: str | None = None
    """`classify`: the field holding each text's gold label in the `test` file (required
    for `classify`)."""
    train_label_field: str | None = None
    """`classify`: the field of gold labels in the `train` file, when you have them; a
    student trained on them is then added for reference, and they enable `shots`,
    `hard_labels: gold` and `calibrate: auto`'s choice. null = the train texts are
    unlabelled."""
    hard_labels: Literal["teacher", "gold"] = "teacher"
    """`classify`: what the students' `cross_entropy` term learns: the teacher's argmax
    (`teacher`) or the gold labels of `train_label_field` (`gold`)."""
    calibrate: Calibrate = "auto"
    """`classify`: how the teacher's label scores become soft labels: `none`, `prior`
    (label shift towards the train gold label frequencies, else their EM estimate),
    `content_free` (assumes balanced classes) or `auto`, whichever of those three agrees
    best with the gold-labelled train texts (`none` without them)."""
    shots: int = Field(0, ge=0)
    """`classify`: take this many few-shot examples for the labelling prompt from the
    gold-labelled train texts (at least one per label where it can, chosen by
    `train.seed`). 0 = a zero-shot prompt: few-shot prompts are longer, and a
    `max_length` sized for zero-shot would no longer fit their texts."""
    batch_size: int = Field(8, ge=1)
    """`classify`: texts per teacher forward pass while labelling and scoring the test
    set."""
    max_length: int | None = Field(None, ge=1)
    """`classify`: the tokens one labelling sequence (prompt and text) may take, the text
    cut to fit; null = the teacher's context length."""
    train: str | None = None
    """`classify`: the file of unlabelled texts the teacher labels and the students train
    on (`.txt`, `.jsonl`, `.csv`, `.parquet`)."""
    test: str | None = None
    """`classify`: the labelled test set every model is scored on (gold labels under
    `label_field`)."""
    max_train: int | None = Field(None, ge=1)
    """`classify`: keep only the first this many texts of `train`; null = all."""
    max_test: int | None = Field(None, ge=1)
    """`classify`: keep only the first this many texts of `test`; null = all."""
    shard_texts: int = Field(256, ge=1)
    """`classify`: texts labelled between two atomic saves of `labels.parquet`, so a
    killed run resumes where it stopped."""

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
    """The prompts the teacher answers: a `.jsonl`/`.csv`/`.parquet` file, a `.txt` file
    (one prompt per non-empty line) or a `shipped:` set; null = no `generate` stage."""
    prompt_field: str = "prompt"
    """The field holding each prompt in a `.jsonl`/`.csv`/`.parquet` prompts file."""
    system: SystemPrompt = None
    """A system prompt before every prompt's user turn; null = none."""
    n: int = Field(1, ge=1, le=128)
    """Responses the teacher writes per prompt (a `reason` run: traces per problem)."""
    max_tokens: int = Field(256, ge=1)
    """The most new tokens one response may take."""
    temperature: float = Field(0.7, ge=0.0, le=2.0)
    """The sampling temperature; 0 = greedy."""
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    """Nucleus sampling: draw from the smallest set of tokens holding this much
    probability; 1 = from all."""
    seed: int = Field(0, ge=0)
    """The seed every row's own sampling seed is derived from, with the prompt and the
    sample index, so each row is reproducible on its own."""
    stop: list[str] = Field(default_factory=list, max_length=4)
    """Strings that end a response (at most 4, as OpenAI's API), besides an end token."""
    batch_size: int = Field(8, ge=1)
    """Rows a local teacher decodes together (speed and memory)."""
    shard_rows: int = Field(64, ge=1)
    """Rows written between two atomic saves, so a killed `generate` resumes."""
    max_prompts: int | None = Field(None, ge=1)
    """Keep only the first this many prompts; null = all."""

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
    """The share λ of the student's batches replaced by its own replies, scored by the
    teacher."""
    temperature: float = Field(1.0, gt=0.0)
    """The temperature the student samples its replies at."""
    max_tokens: int | None = Field(None, ge=1)
    """The most new tokens of one reply; null = `generate.max_tokens`."""


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
    """The reasoning-gym generator the problems come from, by name."""
    options: dict[str, Any] = Field(default_factory=dict)
    """The generator's own options, passed as they are."""
    train: int = Field(64, ge=1)
    """Problems the teacher solves, whose checked traces the student trains on."""
    test: int = Field(50, ge=1)
    """Held-out problems every model answers for the report; none is also a train
    problem."""
    seed: int = Field(0, ge=0)
    """The seed the train problems are drawn at; the test problems use `seed + 1`."""
    system: SystemPrompt = "Think step by step, then give the final answer as a number."
    """The system prompt teacher and students read before each question; null = none."""
    max_tokens: int = Field(256, ge=1)
    """The most new tokens of one test answer (everyone answers greedily)."""
    batch_size: int = Field(32, ge=1)
    """Test problems answered together (speed and memory)."""
    unchecked: bool = False
    """Also train a student on every trace, checked or not: what the checking bought."""
    answers: bool = True
    """Also train a student on the final answers alone, without the reasoning: what the
    traces bought."""
    on_policy: OnPolicyConfig | None = None
    """Also train an on-policy student (GKD) and compare it with the off-policy one; null =
    none."""
