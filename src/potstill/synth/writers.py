"""The two teachers that write generation rows: a local model decoded in batches by the
KV-cache engine, and an OpenAI-compatible endpoint. Both answer `RowWriter`."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import Any

from potstill.generation import Engine, EngineError, GenerationSettings, chat_text
from potstill.synth.generate import Prompt, Todo, Written
from potstill.synth.settings import GenerateConfig
from potstill.teachers.endpoint import ChatRequest, EndpointClient
from potstill.util.errors import PotstillError
from potstill.util.log import log as _log


class LocalWriter:
    """A local causal LM, its rows decoded in batches by a started `Engine`.

    Prompts are the teacher's chat template over the messages, or (a tokenizer without
    one) plain ``role: content`` lines, said once in the log. Rows are decoded in
    chunks of ``chunk_rows``, longest prompts first (less padding in a batch).
    """

    def __init__(
        self,
        engine: Engine,
        cfg: GenerateConfig,
        *,
        chunk_rows: int,
        log: Callable[[str], None] = _log,
    ) -> None:
        self.engine = engine
        self.cfg = cfg
        self.chunk_rows = chunk_rows
        self.plain = not getattr(engine.tokenizer, "chat_template", None)
        if self.plain:
            log(
                "the teacher's tokenizer has no chat template: prompts are plain "
                "'role: content' lines"
            )
        self._ids: dict[str, list[int]] = {}
        self._tokens = {"rows": 0, "prompt_tokens": 0, "completion_tokens": 0}

    @property
    def prompt_format(self) -> str:
        """``plain``, or the sha256 of the chat template (it decides the prompt ids)."""
        template = getattr(self.engine.tokenizer, "chat_template", None)
        if not template:
            return "plain"
        return hashlib.sha256(str(template).encode()).hexdigest()

    def prepare(self, prompts: Sequence[Prompt]) -> None:
        """Encode every prompt and check it fits the teacher's context with
        ``max_tokens`` (one-line errors, before anything is written)."""
        limit = self.engine.context_length
        for prompt in prompts:
            if prompt.sha256 in self._ids:
                continue
            try:
                chat = chat_text(self.engine.tokenizer, prompt.messages)
            except Exception as e:
                raise PotstillError(
                    f"the teacher's chat template refused prompt {prompt.prompt_id} "
                    f"({str(e).splitlines()[0] if str(e) else type(e).__name__}); "
                    "drop generate.system if the template takes no system turn"
                ) from None
            ids = self.engine.encode(chat.text, chat.add_special_tokens)
            if not ids:
                raise PotstillError(f"prompt {prompt.prompt_id} encodes to no tokens; drop it")
            if limit is not None and len(ids) + self.cfg.max_tokens > limit:
                raise PotstillError(
                    f"prompt {prompt.prompt_id} is {len(ids)} tokens: with generate.max_tokens="
                    f"{self.cfg.max_tokens} it passes the teacher's {limit}-token context; "
                    "shorten it or lower generate.max_tokens"
                )
            self._ids[prompt.sha256] = ids

    def write(self, rows: Sequence[Todo], done: Callable[[Todo, Written], None]) -> None:
        self.prepare([row.prompt for row in rows])
        ordered = sorted(rows, key=lambda row: -len(self._ids[row.prompt.sha256]))
        for start in range(0, len(ordered), self.chunk_rows):
            chunk = ordered[start : start + self.chunk_rows]
            requests = [(self._ids[row.prompt.sha256], self._settings(row.seed)) for row in chunk]
            try:
                choices = self.engine.generate_each(requests)
            except EngineError as e:
                raise PotstillError(
                    f"the teacher failed to generate ({e}); the rows finished so far are kept: "
                    "rerun to continue (a smaller generate.batch_size needs less memory)"
                ) from e
            for row, (ids, _), choice in zip(chunk, requests, choices, strict=True):
                self._tokens["rows"] += 1
                self._tokens["prompt_tokens"] += len(ids)
                self._tokens["completion_tokens"] += choice.completion_tokens
                written = Written(
                    choice.text, choice.finish_reason, len(ids), choice.completion_tokens
                )
                done(row, written)

    def usage(self) -> dict[str, int]:
        return dict(self._tokens)

    def _settings(self, seed: int) -> GenerationSettings:
        return GenerationSettings(
            max_tokens=self.cfg.max_tokens,
            sampling_temperature=self.cfg.temperature,
            top_p=self.cfg.top_p,
            stop=tuple(self.cfg.stop),
            seed=seed,
        )


class EndpointWriter:
    """An OpenAI-compatible endpoint: one chat completion per row, ``concurrency`` in
    flight (`EndpointClient.chat_all`); the prompt tokens of each row are paid per row."""

    def __init__(self, client: EndpointClient, cfg: GenerateConfig) -> None:
        self.client = client
        self.cfg = cfg

    def write(self, rows: Sequence[Todo], done: Callable[[Todo, Written], None]) -> None:
        requests = [
            ChatRequest(
                messages=row.prompt.messages,
                max_tokens=self.cfg.max_tokens,
                sampling_temperature=self.cfg.temperature,
                top_p=self.cfg.top_p,
                seed=row.seed,
                stop=tuple(self.cfg.stop),
            )
            for row in rows
        ]

        def on_reply(index: int, reply: Any) -> None:
            written = Written(
                reply.text, reply.finish_reason, reply.prompt_tokens, reply.completion_tokens
            )
            done(rows[index], written)

        self.client.chat_all(requests, on_reply)

    def usage(self) -> dict[str, int]:
        return self.client.usage.as_dict()
