"""The recipe's `data` section."""

from __future__ import annotations

from pydantic import Field, model_validator

from potstill.data.chat import Context
from potstill.util.schema import Strict


class DataConfig(Strict):
    path: str | None = None
    """The training text: a `.txt` file (one document), a `.jsonl`/`.json`/`.csv`/`.parquet`
    file (one document per row), a folder saved by HF `datasets`, or a folder of such
    files; null = the shipped Shakespeare corpus."""
    text_field: str = "text"
    """The field of a row that holds its text."""
    prompt_field: str = "prompt"
    """The prompt's field: a row with this and `response_field` is a prompt/response
    example, trained on its response only (the prompt is context, not a target)."""
    response_field: str = "response"
    """The response's field of a prompt/response row (see `prompt_field`)."""
    chat_template: bool = False
    """Prompt/response rows only: render each through the tokenizer's chat template (the
    prompt as the user's turn, the response as the assistant's), as a chat model is
    served."""
    system: str | None = None
    """With `chat_template`: a system prompt put first in every chat, student and teacher
    alike, e.g. the one `potstill generate` answered under; null = none."""

    @model_validator(mode="after")
    def _system_needs_chats(self) -> DataConfig:
        if self.system is not None and not self.chat_template:
            raise ValueError("data.system needs data.chat_template: true (chats have a system)")
        if self.system is not None and not self.system.strip():
            raise ValueError("data.system is empty; give the system prompt or leave it out")
        return self

    block_size: int = Field(128, ge=8)
    """Tokens per training and held-out block (the sequence length the student trains on);
    a `reason` or `context` run cuts its sequences at this length."""
    heldout: float = Field(0.05, gt=0.0, lt=1.0)
    """The share of the tokens held out for evaluation, as whole documents (a single
    document gives its last blocks; a `datasets` folder's own test/validation split wins)."""
    max_heldout_tokens: int | None = Field(16384, ge=1)
    """A cap on the held-out tokens, which bounds evaluation time; null = no cap."""
    seed: int = 0
    """The seed that chooses the held-out documents (a `context` run's held-out examples)."""


class ShotConfig(Strict):
    """A few-shot turn of a context: a prompt and the answer to it."""

    prompt: str
    """The user's turn of the few-shot example."""
    response: str
    """The assistant's answer to it, an example of the behaviour for the teacher."""


class ContextConfig(Strict):
    """The recipe's ``context``: what only the teacher reads (context distillation), a
    system prompt and/or few-shot turns before each example's own chat."""

    system: str | None = None
    """A system prompt only the teacher reads before each example's chat; null = none."""
    examples: list[ShotConfig] = Field(default_factory=list)
    """Few-shot turns only the teacher reads, after `system` and before each example's
    chat."""

    @model_validator(mode="after")
    def _not_empty(self) -> ContextConfig:
        if not (self.system and self.system.strip()) and not self.examples:
            raise ValueError("context is empty: give context.system and/or context.examples")
        return self

    def to_context(self) -> Context:
        return Context(self.system, tuple((s.prompt, s.response) for s in self.examples))
