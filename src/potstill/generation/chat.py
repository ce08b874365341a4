"""Chat messages to the text a causal LM continues: the tokenizer's chat template, or,
for a tokenizer without one, a plain ``role: content`` transcript ending in ``assistant:``.

The server's ``/v1/chat/completions`` and offline generation (`potstill generate`) both
go through `chat_text`, so a local teacher and the same model behind `potstill serve`
read the same prompt ids.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ChatText:
    """A conversation rendered for the model, up to where the assistant's reply begins.

    ``templated`` is False for the plain transcript (the tokenizer has no chat template).
    """

    text: str
    templated: bool

    @property
    def add_special_tokens(self) -> bool:
        """Whether encoding adds the tokenizer's special tokens: a chat template writes its
        own (BOS…), a plain transcript gets them from the tokenizer."""
        return not self.templated


def chat_text(tokenizer: Any, messages: Sequence[Mapping[str, str]]) -> ChatText:
    """Render ``messages`` (``{"role", "content"}`` each) with ``tokenizer``'s chat
    template and the assistant's opening, or as plain lines without a template.

    Errors of the template itself (a role order it refuses, …) propagate.

    >>> class NoTemplate:
    ...     chat_template = None
    >>> chat_text(NoTemplate(), [{"role": "user", "content": "Hi"}])
    ChatText(text='user: Hi\\nassistant:', templated=False)
    """
    turns = [{"role": m["role"], "content": m["content"]} for m in messages]
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
        return ChatText(text, templated=True)
    text = "".join(f"{turn['role']}: {turn['content']}\n" for turn in turns) + "assistant:"
    return ChatText(text, templated=False)
