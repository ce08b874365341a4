"""The labelling prompt: a label task cut into token ids once.

`build_prompt` renders the chat template (or a plain prompt without one) and splits it
into the prefix every text shares (instruction, label descriptions, few-shot examples),
each text with the prompt's closing part, and each label's tokens plus an end token (so
"sport" and "sports" both get their own probability).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from potstill.util.errors import PotstillError

# Stands in for the text while the chat template is rendered; the prompt is split around it.
_SENTINEL = "@@POTSTILL_TEXT@@"
DEFAULT_INSTRUCTION = "Classify the text."
SHOT_CHARS = 400  # a few-shot example's text is cut here (~100 tokens) to keep the prefix short


@dataclass(frozen=True)
class Label:
    """One class: its name (as the data's gold labels write it), an optional description,
    and optionally the words the teacher answers with when the name is not plain words
    (``sci.med`` answered as ``medicine``; a verbalizer). The teacher is scored on
    ``words``, exactly."""

    name: str
    description: str | None = None
    answer: str | None = None

    @property
    def words(self) -> str:
        """What the teacher is scored on: ``answer``, else the name."""
        return self.answer if self.answer is not None else self.name


@dataclass(frozen=True)
class Example:
    """A few-shot example: a text and the name of its label."""

    text: str
    label: str


@dataclass
class LabelSpec:
    """The labelling task: labels (names or `Label`s), an instruction, few-shot examples.

    >>> LabelSpec(["yes", "no"]).names
    ['yes', 'no']
    """

    labels: list[Label]
    instruction: str | None = None
    examples: list[Example] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.labels = [x if isinstance(x, Label) else Label(str(x)) for x in self.labels]
        self.examples = [x if isinstance(x, Example) else Example(*x) for x in self.examples]
        names = self.names
        if len(names) < 2:
            raise PotstillError(f"task.labels has {len(names)} label(s); give at least two")
        if any(not name.strip() for name in names):
            raise PotstillError("task.labels has an empty label name; give every label a name")
        if any(not label.words.strip() for label in self.labels):
            raise PotstillError("task.labels has an empty answer; give every answer words")
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise PotstillError(f"task.labels lists {repeated} more than once; give each once")
        for example in self.examples:
            if example.label not in names:
                raise PotstillError(
                    f"few-shot example label {example.label!r} is not one of {names}; "
                    "use a label from task.labels"
                )

    @property
    def names(self) -> list[str]:
        return [label.name for label in self.labels]

    @property
    def words(self) -> dict[str, str]:
        """Each label's name -> the words the teacher answers with."""
        return {label.name: label.words for label in self.labels}


@dataclass(frozen=True)
class LabelPrompt:
    """The prompt as token ids, shared by the fast and the naive scorer.

    ``prefix_ids`` come before every text; ``tail_ids`` close the user turn and open the
    assistant's (or ``"\\nAnswer:"`` in a plain prompt); ``label_ids[i]`` is label i's
    tokens plus the end token. ``plain`` is True when the tokenizer had no chat template.
    """

    prefix_ids: list[int]
    tail_ids: list[int]
    label_ids: list[list[int]]
    label_names: list[str]
    plain: bool
    tokenizer: Any = field(repr=False)

    def body_ids(self, text: str) -> list[int]:
        """The text's own tokens (a leading space joins it to the prefix's ``Text:``)."""
        text = text.strip()
        return _encode(self.tokenizer, " " + text) if text else []

    def text_ids(self, text: str) -> list[int]:
        """The text's tokens followed by the closing part of the prompt."""
        return self.body_ids(text) + self.tail_ids

    def fit(self, text: str, max_length: int | None) -> tuple[list[int], bool]:
        """``text_ids(text)`` with the text cut so that prefix + text + the longest label
        fit in ``max_length`` tokens; also whether it was cut. The prefix, the closing part
        and the labels are never cut."""
        body = self.body_ids(text)
        if max_length is None:
            return body + self.tail_ids, False
        fixed = len(self.prefix_ids) + len(self.tail_ids) + max(map(len, self.label_ids))
        if fixed >= max_length:
            raise PotstillError(
                f"the label prompt without its text takes {fixed} tokens but the teacher's "
                f"context is {max_length}; shorten the instruction, descriptions or examples"
            )
        budget = max_length - fixed
        return body[:budget] + self.tail_ids, len(body) > budget


def choose_examples(
    texts: Sequence[str], labels: Sequence[str], names: Sequence[str], shots: int, seed: int
) -> list[Example]:
    """``shots`` few-shot examples drawn from gold-labelled ``texts`` (``labels[i]`` is
    the label of ``texts[i]``): one of each label in ``names`` first (as many labels as
    ``shots`` allows, chosen at random when it allows fewer than all), the rest from the
    remaining texts; shuffled, and each text cut to `SHOT_CHARS` characters. The same
    ``seed`` always gives the same examples.

    >>> [e.label for e in choose_examples(["a", "b", "c"], ["x", "y", "x"], ["x", "y"], 2, 0)]
    ['y', 'x']
    """
    rng = random.Random(seed)
    by_label = {name: [i for i, label in enumerate(labels) if label == name] for name in names}
    present = [name for name in names if by_label[name]]
    first = rng.sample(present, min(shots, len(present)))
    chosen = [rng.choice(by_label[name]) for name in first]
    taken = set(chosen)
    rest = [i for i in range(len(texts)) if i not in taken]
    chosen += rng.sample(rest, min(shots - len(chosen), len(rest)))
    rng.shuffle(chosen)
    return [Example(_cut(texts[i]), labels[i]) for i in chosen]


def _cut(text: str) -> str:
    """``text`` stripped and cut to `SHOT_CHARS` characters, at a space when there is one."""
    text = text.strip()
    if len(text) <= SHOT_CHARS:
        return text
    cut = text[:SHOT_CHARS]
    return (cut.rsplit(" ", 1)[0] if " " in cut else cut) + " …"


def build_prompt(tokenizer: Any, spec: LabelSpec) -> LabelPrompt:
    """Render the task through the tokenizer's chat template and cut it into token ids.

    Few-shot examples become earlier user/assistant turns, so the teacher sees answers in
    exactly the label format. Without a chat template, a plain ``Text: …\\nAnswer: …``
    prompt is built instead and ``plain`` is set. Labels whose ids collide are refused.
    """
    system = _system_text(spec)
    plain = not getattr(tokenizer, "chat_template", None)
    if plain:
        words = spec.words
        shots = "".join(
            f"Text: {e.text.strip()}\nAnswer: {words[e.label]}\n\n" for e in spec.examples
        )
        bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
        prefix_ids = bos + _encode(tokenizer, f"{system}\n\n{shots}Text:")
        tail_ids = _encode(tokenizer, "\nAnswer:")
        end_id, lead = tokenizer.eos_token_id, " "
    else:
        head, tail = _render_around_text(tokenizer, system, spec)
        prefix_ids, tail_ids = _encode(tokenizer, head), _encode(tokenizer, tail)
        end_id, lead = _end_of_turn_id(tokenizer), ""
    if end_id is None:
        raise PotstillError("the teacher's tokenizer has no end token; use a teacher with one")
    if not tail_ids:
        raise PotstillError("the chat template renders nothing after the text; use another teacher")
    label_ids = [[*_encode(tokenizer, lead + label.words), end_id] for label in spec.labels]
    for i, ids in enumerate(label_ids):
        for j in range(i):
            if label_ids[j] == ids:
                raise PotstillError(
                    f"labels {spec.names[j]!r} and {spec.names[i]!r} have the same tokens "
                    "for this teacher; rename one of them (or give it another answer)"
                )
    return LabelPrompt(prefix_ids, tail_ids, label_ids, spec.names, plain, tokenizer)


def _system_text(spec: LabelSpec) -> str:
    lines = [spec.instruction or DEFAULT_INSTRUCTION, "Answer with exactly one of these labels:"]
    for label in spec.labels:
        lines.append(f"- {label.words}" + (f": {label.description}" if label.description else ""))
    return "\n".join(lines)


def _render_around_text(tokenizer: Any, system: str, spec: LabelSpec) -> tuple[str, str]:
    """The chat-templated prompt, as the text before and after the text to label."""
    turns: list[dict[str, str]] = []
    for example in spec.examples:
        turns += [
            {"role": "user", "content": f"Text: {example.text.strip()}"},
            {"role": "assistant", "content": spec.words[example.label]},
        ]
    turns.append({"role": "user", "content": f"Text: {_SENTINEL}"})
    try:
        rendered = _render(tokenizer, [{"role": "system", "content": system}, *turns], True)
    except Exception:  # templates without a system role: put it in the first user turn
        turns[0] = {"role": "user", "content": f"{system}\n\n{turns[0]['content']}"}
        rendered = _render(tokenizer, turns, True)
    parts = rendered.split(" " + _SENTINEL)
    if len(parts) != 2:
        raise PotstillError("the teacher's chat template alters the text; use another teacher")
    return parts[0], parts[1]


def _end_of_turn_id(tokenizer: Any) -> int | None:
    """The chat template's end-of-turn token (``<|im_end|>``, ``<|eot_id|>``…), else eos."""
    try:
        turns = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": _SENTINEL}]
        after = _render(tokenizer, turns, False).split(_SENTINEL)[-1]
    except Exception:
        return tokenizer.eos_token_id
    ids = _encode(tokenizer, after)
    special = set(tokenizer.all_special_ids) | set(getattr(tokenizer, "added_tokens_decoder", {}))
    if ids and ids[0] in special:
        return ids[0]
    return tokenizer.eos_token_id


def _render(tokenizer: Any, messages: list[dict[str, str]], generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=generation_prompt
    )


def _encode(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])
