"""From a request to prompt token ids: completion prompts as given, chat messages through
the tokenizer's chat template (or, without one, a plain ``role: content`` transcript)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from potstill.generation.chat import chat_text
from potstill.serve.errors import ApiError
from potstill.serve.schema import ChatMessage
from potstill.util.log import log


class PromptBuilder:
    """Turns requests into token ids for one tokenizer.

    Args:
        tokenizer: the served model's tokenizer.
        encode: ``(text, add_special_tokens) -> ids``, the engine's thread-safe encoder.
        vocab_size: the model's embedding rows; token-id prompts must stay below it.
    """

    def __init__(
        self, tokenizer: Any, encode: Callable[[str, bool], list[int]], vocab_size: int
    ) -> None:
        self._tokenizer = tokenizer
        self._encode = encode
        self._vocab_size = vocab_size
        self._said_plain = False

    def completion(
        self, prompt: str | list[str] | list[int] | list[list[int]]
    ) -> list[tuple[str, list[int]]]:
        """``(text, token ids)`` of each prompt (a completion request may hold several);
        a token-id prompt's text is what the tokenizer reads back from it."""
        if isinstance(prompt, str):
            prompts: list[str] | list[list[int]] = [prompt]
        elif prompt and isinstance(prompt[0], int):
            prompts = [prompt]  # type: ignore[list-item]
        else:
            prompts = prompt  # type: ignore[assignment]
        encoded = []
        for item in prompts:
            ids = self._encode(item, True) if isinstance(item, str) else list(item)
            if any(not 0 <= i < self._vocab_size for i in ids):
                raise ApiError(
                    400, f"prompt token ids must be in [0, {self._vocab_size})", param="prompt"
                )
            text = item if isinstance(item, str) else self._tokenizer.decode(ids)
            encoded.append((text, ids))
        return encoded

    def chat(self, messages: list[ChatMessage]) -> list[int]:
        """The token ids of the conversation, ending where the assistant's reply begins."""
        turns = [{"role": m.role, "content": m.text} for m in messages]
        try:
            chat = chat_text(self._tokenizer, turns)
        except Exception as e:  # the template's own checks (role order, …)
            raise ApiError(
                400, f"the model's chat template refused the messages: {e}", param="messages"
            ) from e
        if not chat.templated and not self._said_plain:
            log("the tokenizer has no chat template: chat prompts are plain 'role: content' lines")
            self._said_plain = True
        return self._encode(chat.text, chat.add_special_tokens)
