"""Generation: a causal LM writes text, many rows at a time, with no web server needed.

`Engine` decodes queued requests in batches on one worker thread with a KV cache; the
HTTP server (`potstill.serve`) feeds it from asyncio, and offline code calls
`Engine.generate` / `Engine.generate_each`, which block until the text is written.
`chat_text` turns chat messages into the text the model continues (its chat template, or
a plain transcript without one); `sampling` picks tokens, `text` releases each row's text.
"""

from potstill.generation.chat import ChatText, chat_text
from potstill.generation.engine import Engine
from potstill.generation.handle import (
    Choice,
    EngineBusy,
    EngineError,
    Generation,
    GenerationSettings,
)

__all__ = [
    "ChatText",
    "Choice",
    "Engine",
    "EngineBusy",
    "EngineError",
    "Generation",
    "GenerationSettings",
    "chat_text",
]
