"""The recipe's `data` section."""

from __future__ import annotations

from pydantic import Field, model_validator

from potstill.data.chat import Context
from potstill.util.schema import Strict


class DataConfig(Strict):
    path: str | None = None  # None = the shipped Shakespeare corpus
    text_field: str = "text"
    prompt_field: str = "prompt"
    response_field: str = "response"
    # prompt/response rows: render each through the tokenizer's chat template (the prompt
    # as the user's turn, the response as the assistant's), as a chat model is served.
    chat_template: bool = False
    # ...and with this system prompt first in every chat (student and teacher alike), e.g.
    # the one `potstill generate` answered under.
    system: str | None = None

    @model_validator(mode="after")
    def _system_needs_chats(self) -> DataConfig:
        if self.system is not None and not self.chat_template:
            raise ValueError("data.system needs data.chat_template: true (chats have a system)")
        if self.system is not None and not self.system.strip():
            raise ValueError("data.system is empty; give the system prompt or leave it out")
        return self

    block_size: int = Field(128, ge=8)
    heldout: float = Field(0.05, gt=0.0, lt=1.0)
    max_heldout_tokens: int | None = Field(16384, ge=1)
    seed: int = 0


class ShotConfig(Strict):
    """A few-shot turn of a context: a prompt and the answer to it."""

    prompt: str
    response: str


class ContextConfig(Strict):
    """The recipe's ``context``: what only the teacher reads (context distillation), a
    system prompt and/or few-shot turns before each example's own chat."""

    system: str | None = None
    examples: list[ShotConfig] = Field(default_factory=list)

    @model_validator(mode="after")
    def _not_empty(self) -> ContextConfig:
        if not (self.system and self.system.strip()) and not self.examples:
            raise ValueError("context is empty: give context.system and/or context.examples")
        return self

    def to_context(self) -> Context:
        return Context(self.system, tuple((s.prompt, s.response) for s in self.examples))
