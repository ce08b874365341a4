"""Serve: an OpenAI-compatible HTTP endpoint over any causal LM (``potstill serve MODEL``).

`Engine` queues requests and decodes them in batches on one worker thread with a KV
cache; `create_app` puts OpenAI's ``/v1/models``, ``/v1/completions`` and
``/v1/chat/completions`` (streaming, logprobs, stop strings, an optional API key) in front
of it; `serve` loads a model reference and runs the app under uvicorn on 127.0.0.1.
"""

from potstill.serve.app import create_app
from potstill.serve.engine import Engine
from potstill.serve.generation import GenerationSettings
from potstill.serve.server import serve

__all__ = ["Engine", "GenerationSettings", "create_app", "serve"]
