"""Serve: an OpenAI-compatible HTTP endpoint over any causal LM (``potstill serve MODEL``).

`Engine` (from `potstill.generation`, where offline code uses it too) queues requests
and decodes them in batches on one worker thread with a KV cache; `create_app` puts
OpenAI's ``/v1/models``, ``/v1/completions`` and ``/v1/chat/completions`` (streaming,
logprobs, stop strings, an optional API key) in front of it; `serve` loads a model
reference and runs the app under uvicorn on 127.0.0.1.
"""

from potstill.generation.engine import Engine
from potstill.generation.handle import GenerationSettings
from potstill.serve.app import create_app
from potstill.serve.server import serve

__all__ = ["Engine", "GenerationSettings", "create_app", "serve"]
