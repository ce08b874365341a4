"""report.json as a type: the sections docs/reference/report.md documents.

Every number is optional, so one schema serves a full run (teacher, student, baseline),
an `eval` of one model, and any task; `kind` says which task it is, and every view
renders by it. A non-finite float is stored as None, so the file
is valid JSON (null) and reading it back gives an equal `Report`. The typed sections
refuse unknown keys, so a misspelt field fails where it is written, not where it is read;
`recipe`, `budget` and `seeds` are free, JSON-ready dicts.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, field_validator

# 3: `kind` (the task) and each trained model's `training` health; later within 3, the
# optional `samples` (a reader of 3 that does not know it finds it missing).
SCHEMA_VERSION = 3
ROLES = ("teacher", "student", "baseline")

# lm: next-token distillation (perplexity); classify: labels (accuracy); reason:
# chain-of-thought (exact match on problems); context: an adapter learning a prompt.
Kind = Literal["lm", "classify", "reason", "context"]
KINDS: tuple[Kind, ...] = ("lm", "classify", "reason", "context")


def json_ready(value: Any) -> Any:
    """Plain JSON types: dataclasses and tensors unpacked, paths as text, NaN/inf as None.

    Pydantic models become their JSON-mode dicts.

    >>> json_ready({"ppl": float("inf"), "path": Path("runs/x"), "steps": (1, 2)})
    {'ppl': None, 'path': 'runs/x', 'steps': [1, 2]}
    """
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    if isinstance(value, Mapping):
        return {str(key): json_ready(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(item) for item in value]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item") and callable(value.item):  # torch / numpy scalars
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


# Optional values, None when unknown: tensor and numpy scalars are unpacked, paths become
# text, and NaN or ±inf become None.
Number = Annotated[float | None, BeforeValidator(json_ready)]
Count = Annotated[int | None, BeforeValidator(json_ready)]
Text = Annotated[str | None, BeforeValidator(json_ready)]


class Section(BaseModel):
    """A typed part of the report: unknown keys are refused; the string under each field is
    its description (docs/reference/report.md is generated from them)."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)


class Agreement(Section):
    """How often a model agrees with the teacher, on the held-out tokens."""

    top1: Number = None
    """Share of tokens where the argmaxes match, 0..1."""
    kl: Number = None
    """KL(teacher ‖ model), nats per token."""


class FrequencyBand(Section):
    """A model's scores on the held-out positions whose true next token falls in one band
    of frequency rank on the training split."""

    band: Text = None
    """Frequency ranks, e.g. "101–1,000"; the last band holds unseen tokens."""
    share: Number = None
    """Share of the scored held-out positions, 0..1."""
    tokens: Count = None
    """Scored held-out positions in the band."""
    loss: Number = None
    """Mean NLL of the true next token, nats."""
    top1: Number = None
    """Share where the model's argmax is the teacher's, 0..1."""


class Disagreement(Section):
    """A held-out position where a model's next-token prediction is far from the teacher's."""

    context: Text = None
    """The last tokens up to the prediction, decoded."""
    target: Text = None
    """The true next token."""
    teacher_top: Text = None
    """The teacher's most likely next token."""
    model_top: Text = None
    """This model's most likely next token."""
    kl: Number = None
    """KL(teacher ‖ model) at this position, nats."""


class TrainingHealth(Section):
    """Whether a model's training run ended healthy, judged from its loss curve
    (`potstill.evaluation.report.health`)."""

    status: Literal["ok", "diverged"]
    """`ok`, or `diverged`: a non-finite loss, or a last tenth of steps 0.3 nats and 5% above
    the run's best window."""
    reason: str
    """One sentence: what was seen, or why the run counts as ok."""
    skipped_steps: int = 0
    """Updates the loop skipped (gradient spikes); a note, not a break."""
    rollbacks: int = 0
    """Times the loop went back to a good point at a lower lr."""


class ModelEntry(Section):
    """One evaluated model: size, quality, speed, and for students agreement with the teacher."""

    ref: Text = None
    """The model reference it was loaded from."""
    params: Count = None
    """Parameters, counted from the loaded model."""
    size_bytes: Count = None
    """Bytes of the model's weight files on disk."""
    perplexity: Number = None
    """Held-out split."""
    loss: Number = None
    """Held-out cross-entropy, nats per token."""
    tokens_per_second: Number = None
    """Generation, batch 1, greedy, this machine."""
    train_seconds: Number = None
    """Wall seconds this model's training took in the run."""
    agreement: Agreement | None = None
    """Students against the teacher on the held-out tokens."""
    accuracy: Number = None
    """Tasks with labels."""
    f1: Number = None
    """Macro-F1."""
    ece: Number = None
    """Expected calibration error (15 bins); next token for language models."""
    trainable_params: Count = None
    """Adapters (and head) only, for LoRA / PiSSA students."""
    examples_per_second: dict[str, Number] | None = None
    """Classification, by batch size."""
    per_class_f1: list[Number] | None = None
    """Classification, in the order of the labels."""
    confusion: list[list[int]] | None = None
    """Counts on the test set: `confusion[gold][predicted]`."""
    peak_ram_bytes: Count = None
    """Peak resident memory while the model was evaluated."""
    # Problems with a checked answer (chain-of-thought runs): `accuracy` is exact match.
    answered: Number = None
    """Share of replies with an answer that could be read."""
    mean_answer_tokens: Number = None
    """Generated tokens per reply."""
    truncated: Number = None
    """Share of replies cut off by the token limit."""
    reply_kl: Number = None
    """KL(teacher ‖ model) per token, nats, on the model's own test replies (same vocabulary)."""
    frequency_bands: list[FrequencyBand] | None = None
    """Language models: scores by training-split frequency band of the true next token."""
    worst_disagreements: list[Disagreement] | None = None
    """Language models: the held-out positions of largest KL(teacher ‖ model), largest first."""
    training: TrainingHealth | None = None
    """Models trained in this run, from metrics.jsonl."""


class RunInfo(Section):
    """Where and how the run happened."""

    name: Text = None
    """The recipe's `name` (the run folder's name)."""
    wall_seconds: Number = None
    """Wall seconds of the whole run, from start to report."""
    device: Text = None
    """The device the models ran on (`cpu`, `cuda:0`, `mps`)."""
    threads: Count = None
    """PyTorch's CPU threads."""
    machine: Text = None
    """The processor, as the platform names it."""
    precision: Text = None
    """The training precision used (`fp32`, `bf16`, `fp16`)."""


class DataInfo(Section):
    """The data the models were trained and scored on."""

    name: Text = None
    """The data the models were scored on: its path, a shipped corpus or a problem set."""
    train_tokens: Count = None
    """Tokens in the training split (language models)."""
    heldout_tokens: Count = None
    """Held-out tokens the models were scored on (language models)."""
    split: Text = None
    """One line: how the held-out set was chosen."""
    fingerprint: Text = None
    """A hash of the data and its split: two reports with the same one scored the same text."""


class Summary(Section):
    """The student against the teacher and the baseline; None where a number is missing."""

    gap_closed: Number = None
    """(ln ppl_baseline − ln ppl_student) / (ln ppl_baseline − ln ppl_teacher): 1 matches the
    teacher, 0 is no better than the baseline; null when a training run diverged."""
    student_params_fraction: Number = None
    """Student parameters / teacher parameters."""
    student_size_fraction: Number = None
    """Student bytes on disk / teacher bytes on disk."""
    student_vs_baseline_perplexity: Number = None
    """Student perplexity / baseline perplexity (below 1: distillation helped)."""
    student_vs_teacher_perplexity: Number = None
    """Student perplexity / teacher perplexity."""
    student_speedup: Number = None
    """Student tokens/s / teacher tokens/s (generation, batch 1)."""


class BreakEven(Section):
    """Teacher and training compute against the student's saving per call.

    ``calls_to_repay = distill_seconds / (teacher − student seconds per call)``: the calls
    (texts classified, tokens generated) after which the student has saved more time than
    the distillation took; None when the student is not faster. ``student`` names the
    model it is computed for; ``unit`` what one call is ("generated tokens"; None reads as
    texts classified); ``basis`` says how each number was measured.
    """

    student: Text = None
    """The model the break-even is computed for."""
    unit: Text = None
    """What one call is (`generated tokens`); null reads as texts classified."""
    basis: Text = None
    """How each number was measured."""
    distill_seconds: Number = None
    """Seconds spent teaching and training the student."""
    teacher_seconds_per_1k: Number = None
    """The teacher's seconds per 1,000 calls."""
    student_seconds_per_1k: Number = None
    """The student's seconds per 1,000 calls."""
    calls_to_repay: Number = None
    """distill_seconds / (teacher − student seconds per call); null when the student is not
    faster."""


class Sample(Section):
    """A held-out prompt (the first tokens of a held-out block) and each model's greedy
    continuation of it, decoded (`potstill.evaluation.lm.continuations`)."""

    prompt: Text = None
    """The first tokens of a held-out block, decoded."""
    continuations: dict[str, Text] = {}
    """Model name -> the text it wrote."""


FreeDict = Annotated[dict[str, Any], BeforeValidator(json_ready)]


class Report(Section):
    """The whole of report.json. Models are keyed by role (`teacher`, `student`,
    `baseline`) or any other name, and kept in that order, roles first."""

    schema_version: int = SCHEMA_VERSION
    """The version of this schema the file was written with."""
    potstill_version: str
    """The potstill version that wrote it."""
    created: str
    """ISO 8601, UTC."""
    kind: Kind
    """The task (`task.kind`): `lm`, `classify`, `reason` or `context`; every view renders by it."""
    run: RunInfo = RunInfo()
    data: DataInfo = DataInfo()
    recipe: FreeDict = {}
    """What the run did, in brief: the loss terms, steps, cache and task settings."""
    models: dict[str, ModelEntry] = {}
    """One entry per model evaluated, by role (teacher, student, baseline) or name."""
    summary: Summary
    """The student against the teacher and the baseline."""
    budget: FreeDict | None = None
    """The time budget's decision (`stages/budget.json`) when `budget_minutes` was set."""
    seeds: FreeDict | None = None
    """Each seed's numbers and their mean ± sd, where several seeds were run."""
    break_even: BreakEven | None = None
    """Teacher and training compute against the student's saving per call."""
    samples: list[Sample] | None = None
    """Language models: continuations side by side."""

    @field_validator("models", mode="after")
    @classmethod
    def _roles_first(cls, models: dict[str, ModelEntry]) -> dict[str, ModelEntry]:
        ordered = {name: models[name] for name in ROLES if name in models}
        ordered.update((name, entry) for name, entry in models.items() if name not in ordered)
        return ordered

    @classmethod
    def load(cls, path: str | Path) -> Report:
        """Read a report.json written by `write_report`; one written before schema 3 has
        its `kind` inferred from what it holds (`infer_kind`)."""
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
        if isinstance(raw, dict) and raw.get("schema_version", 0) < 3 and "kind" not in raw:
            raw["kind"] = infer_kind(raw)
        return cls.model_validate(raw)


def infer_kind(raw: Mapping[str, Any]) -> Kind:
    """The task of a report.json from before schema 3, which did not record it: the guess
    the views made then, in its order (a chain-of-thought recipe; any model with an
    accuracy; a context-distillation recipe; else a language model).

    >>> infer_kind({"recipe": {}, "models": {"student": {"accuracy": 0.5}}})
    'classify'
    """
    recipe, models = raw.get("recipe") or {}, raw.get("models") or {}
    if recipe.get("task") == "chain-of-thought distillation":
        return "reason"
    if any((entry or {}).get("accuracy") is not None for entry in models.values()):
        return "classify"
    if recipe.get("task") == "context distillation":
        return "context"
    return "lm"
