"""The recipe's `data` section."""

from __future__ import annotations

from pydantic import Field

from potstill.util.schema import Strict


class DataConfig(Strict):
    path: str | None = None  # None = the shipped Shakespeare corpus
    text_field: str = "text"
    prompt_field: str = "prompt"
    response_field: str = "response"
    # prompt/response rows: render each through the tokenizer's chat template (the prompt
    # as the user's turn, the response as the assistant's), as a chat model is served.
    chat_template: bool = False
    block_size: int = Field(128, ge=8)
    heldout: float = Field(0.05, gt=0.0, lt=1.0)
    max_heldout_tokens: int | None = Field(16384, ge=1)
    seed: int = 0
