"""A served teacher's log-probabilities of a prompt's own tokens: its top k per position.

One ``/v1/completions`` request per batch of prompts, each prompt sent as token ids (so
the positions are the caller's tokens exactly), with ``echo: true`` and ``logprobs: k``:
the answer's ``top_logprobs[t]`` is the server's distribution over token ``t`` after
tokens ``0 … t − 1`` (OpenAI's legacy format, which vLLM and `potstill serve` speak; the
first entry is null). Row ``t`` of a `PromptTopK` is that distribution at ``t + 1``: the
prediction of token ``t + 1``, as the teacher cache stores it.

``max_tokens`` is 0 (nothing generated); a server that wants at least 1 (vLLM) is asked
again with 1, and the generated token is ignored. Tokens come back as ``token_id:N``
(vLLM's ``return_tokens_as_token_ids``) unless the endpoint's ``token_ids`` is off: then
each token's text is mapped back through the teacher's tokenizer, and an answer naming a
text several ids share is refused, as is any token that is no id of the vocabulary.
Requests go through `EndpointClient.call` (retries, rate limit, timeouts, the key).
`PromptLogprobs.own_logprobs` reads the prompt tokens' own log-probabilities instead
(label scoring, `potstill.synth.served_labels`).
"""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from potstill.generation.text import TokenText
from potstill.teachers.endpoint import EndpointClient
from potstill.util.errors import PotstillError

TOKEN_ID = "token_id:"  # vLLM's spelling of a token given as its id
R = TypeVar("R")


@dataclass(frozen=True)
class PromptTopK:
    """One prompt's top-k distributions: row ``t`` predicts prompt token ``t + 1``.

    ``ids``: ``(P − 1, K)`` int64, by descending log-probability; ``logprobs``: ``(P − 1,
    K)`` float32; ``tail``: ``(P − 1,)`` float32, the log of the mass outside the K ids
    (``−inf`` when they hold all of it).
    """

    ids: np.ndarray
    logprobs: np.ndarray
    tail: np.ndarray


class PromptLogprobs:
    """Top-``top_k`` prompt log-probabilities from ``client``'s server.

    Args:
        client: the endpoint (its config, model name, retries and counters).
        top_k: alternatives kept per position, ``1 <= top_k <= max_logprobs``.
        vocab_size: the teacher's vocabulary; an id outside ``[0, vocab_size)`` is refused.
        tokenizer: the teacher's tokenizer: its ``decode`` checks that the server reads the
            ids as the same text, and (``token_ids`` off) maps token texts back to ids.
    """

    def __init__(
        self, client: EndpointClient, *, top_k: int, vocab_size: int, tokenizer: Any
    ) -> None:
        cap = client.config.max_logprobs
        if not 1 <= top_k <= cap:
            raise ValueError(f"top_k must be in [1, {cap}] (teach.endpoint.max_logprobs)")
        if vocab_size < 1:
            raise ValueError(f"vocab_size must be positive, got {vocab_size}")
        self.client = client
        self.top_k = top_k
        self.vocab_size = vocab_size
        self._tokenizer = tokenizer
        self._token_ids = client.config.token_ids
        self._ids_of_text: dict[str, list[int]] | None = None
        self._max_tokens = 0  # raised to 1 for a server that refuses 0 (vLLM)
        self._checked_text = False
        self._lock = threading.Lock()

    @property
    def where(self) -> str:
        return self.client.config.base_url

    def score(
        self,
        prompts: Sequence[Sequence[int]],
        *,
        names: Sequence[str] | None = None,
        stop: threading.Event | None = None,
    ) -> list[PromptTopK]:
        """The top-k distributions of every prompt (one request); ``names`` say which
        prompt a refusal is about (``"block 17"``), by default ``"prompt i"``."""
        sent, names = self._prepared(prompts, names)
        body = self.client.call(
            lambda: self._send(sent, self.top_k), stop=stop, resend=self._wants_a_token
        )
        return [
            self._rows(logprobs, prompt, name)
            for logprobs, prompt, name in zip(
                self._parse(body, sent, names), sent, names, strict=True
            )
        ]

    def own_logprobs(
        self,
        prompts: Sequence[Sequence[int]],
        *,
        names: Sequence[str] | None = None,
        stop: threading.Event | None = None,
    ) -> list[np.ndarray]:
        """Each prompt's own tokens' log-probabilities (one request): ``(P − 1,)`` float64,
        entry ``t`` that of token ``t + 1`` after the tokens before it."""
        sent, names = self._prepared(prompts, names)
        body = self.client.call(lambda: self._send(sent, 1), stop=stop, resend=self._wants_a_token)
        out = []
        for logprobs, prompt, name in zip(self._parse(body, sent, names), sent, names, strict=True):
            values = logprobs.get("token_logprobs")
            own = values[1 : len(prompt)] if isinstance(values, list) else []
            if len(own) != len(prompt) - 1 or not all(
                isinstance(v, (int, float)) and not math.isnan(v) for v in own
            ):
                raise PotstillError(self._no_logprobs(name))
            out.append(np.minimum(np.array(own, dtype=np.float64), 0.0))
        return out

    def map(
        self,
        ask: Callable[[Any, threading.Event], R],
        items: Sequence[Any],
        on_answer: Callable[[int, R], None],
    ) -> None:
        """``ask(item, stop)`` (a `score` or `own_logprobs` call) for every item,
        ``concurrency`` requests at a time (`EndpointClient.map_all`)."""
        self.client.map_all(ask, items, on_answer)

    def score_all(
        self,
        batches: Sequence[Sequence[Sequence[int]]],
        on_answer: Callable[[int, list[PromptTopK]], None],
        *,
        names: Sequence[Sequence[str]] | None = None,
    ) -> None:
        """`score` every batch, ``concurrency`` requests at a time; ``on_answer(index,
        rows)`` runs in this thread as each arrives. The first failure stops the rest
        (`EndpointClient.map_all`)."""
        items = [(batch, None if names is None else names[i]) for i, batch in enumerate(batches)]

        def ask(item: tuple[Any, Any], stop: threading.Event) -> list[PromptTopK]:
            return self.score(item[0], names=item[1], stop=stop)

        self.map(ask, items, on_answer)

    # --- the request ------------------------------------------------------------------

    @staticmethod
    def _prepared(
        prompts: Sequence[Sequence[int]], names: Sequence[str] | None
    ) -> tuple[list[list[int]], list[str]]:
        if not prompts or any(len(p) < 2 for p in prompts):
            raise ValueError("every prompt needs at least 2 tokens (one prediction)")
        names = list(names) if names is not None else [f"prompt {i}" for i in range(len(prompts))]
        if len(names) != len(prompts):
            raise ValueError(f"{len(names)} names for {len(prompts)} prompts")
        return [[int(i) for i in p] for p in prompts], names

    def _send(self, prompts: list[list[int]], top: int) -> Any:
        extra = {"return_tokens_as_token_ids": True} if self._token_ids else None
        raw = self.client.openai.completions.with_raw_response.create(
            model=self.client.model,
            prompt=prompts,
            echo=True,
            logprobs=top,
            max_tokens=self._max_tokens,
            extra_body=extra,
        )
        try:
            return json.loads(raw.text)
        except ValueError:
            raise PotstillError(
                f"{self.where} answered a prompt-logprobs request with something that is not "
                f"JSON; is it OpenAI-compatible? {self._kept()}"
            ) from None

    def _wants_a_token(self, error: Any) -> bool:
        """vLLM refuses ``max_tokens: 0`` (400, naming max_tokens): ask for one token."""
        if error.status_code != 400 or self._max_tokens != 0:
            return False
        if "max_tokens" not in self.client.server_message(error):
            return False
        with self._lock:
            self._max_tokens = 1
        return True

    # --- the answer -------------------------------------------------------------------

    def _parse(self, body: Any, prompts: list[list[int]], names: list[str]) -> list[dict]:
        """Each prompt's ``logprobs`` object, checked to echo every prompt token (and, with
        ids, the very ids sent)."""
        choices = body.get("choices") if isinstance(body, dict) else None
        if not isinstance(choices, list):
            raise PotstillError(f"{self.where} answered without choices; {self._kept()}")
        by_index = {c.get("index"): c for c in choices if isinstance(c, dict)}
        if sorted(by_index) != list(range(len(prompts))) or len(choices) != len(prompts):
            raise PotstillError(
                f"{self.where} answered {len(choices)} choices for {len(prompts)} prompts: it "
                f"must answer each prompt once (n = 1); {self._kept()}"
            )
        usage = body.get("usage") or {}
        self.client.usage.add(
            replies=len(prompts),
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            completion_tokens=int(usage.get("completion_tokens") or 0),
        )
        found = []
        for i, (prompt, name) in enumerate(zip(prompts, names, strict=True)):
            choice = by_index[i]
            self._check_text(choice.get("text"), prompt, name)
            found.append(self._echoed(choice.get("logprobs"), prompt, name))
        return found

    def _echoed(self, logprobs: Any, prompt: list[int], name: str) -> dict:
        if not isinstance(logprobs, dict) or not all(
            isinstance(logprobs.get(key), list) for key in ("tokens", "top_logprobs")
        ):
            raise PotstillError(self._no_logprobs(name))
        tokens, top = logprobs["tokens"], logprobs["top_logprobs"]
        n = len(prompt)
        if len(top) != len(tokens) or not n <= len(tokens) <= n + self._max_tokens:
            raise PotstillError(
                f"{self.where} answered {len(tokens)} positions for {name} of {n} tokens "
                f"(echo must give every prompt token{', and one more' if self._max_tokens else ''}"
                f"); {self._kept()}"
            )
        if self._token_ids:
            for t, token in enumerate(tokens[:n]):
                if self._id_of(token, name, t) != prompt[t]:
                    raise PotstillError(
                        f"{self.where} echoed token {token!r} at position {t} of {name}, which "
                        f"was sent as id {prompt[t]}: the positions do not line up; "
                        f"{self._kept()}"
                    )
        return logprobs

    def _rows(self, logprobs: dict, prompt: list[int], name: str) -> PromptTopK:
        """The top-k rows of a checked ``logprobs`` object."""
        top, n, k = logprobs["top_logprobs"], len(prompt), self.top_k
        ids = np.empty((n - 1, k), dtype=np.int64)
        values = np.empty((n - 1, k), dtype=np.float64)
        for t in range(1, n):
            entry = top[t]
            if not isinstance(entry, dict) or not entry:
                raise PotstillError(self._no_logprobs(name, t))
            pairs = []
            for token, value in entry.items():
                if not isinstance(value, (int, float)) or math.isnan(value):
                    raise PotstillError(
                        f"{self.where} answered log-probability {value!r} for token {token!r} "
                        f"at position {t} of {name}; {self._kept()}"
                    )
                pairs.append((self._id_of(token, name, t), min(float(value), 0.0)))
            if len(pairs) < k:
                raise PotstillError(
                    f"{self.where} answered {len(pairs)} alternatives at position {t} of "
                    f"{name} where {k} were asked for (logprobs: {k}): it may cap them below "
                    f"teach.top_k (vLLM's --max-logprobs); {self._kept()}"
                )
            # The top k and, when it is not among them, the prompt's own token: keep the k
            # likeliest (ties by id).
            pairs.sort(key=lambda pair: (-pair[1], pair[0]))
            chosen = pairs[:k]
            ids[t - 1] = [i for i, _ in chosen]
            values[t - 1] = [v for _, v in chosen]
        held = np.exp(values).sum(axis=1)
        with np.errstate(divide="ignore"):
            tail = np.where(held < 1.0, np.log1p(-np.minimum(held, 1.0)), -np.inf)
        return PromptTopK(ids, values.astype(np.float32), tail.astype(np.float32))

    def _id_of(self, token: Any, name: str, position: int) -> int:
        """The vocabulary id a token of the answer names; refused when there is none, or
        (by text) when several ids read as it."""
        if not isinstance(token, str):
            raise PotstillError(
                f"{self.where} answered token {token!r} at position {position} of {name}, "
                f"which is not a string; {self._kept()}"
            )
        if self._token_ids:
            number = token.removeprefix(TOKEN_ID)
            if number == token or not number.isdigit():
                raise PotstillError(
                    f"{self.where} answered token {token!r} where an id was asked for "
                    "(return_tokens_as_token_ids): use a server that honours it (vLLM, "
                    "potstill serve), or set teach.endpoint.token_ids=false to map token "
                    "texts through the tokenizer"
                )
            found = int(number)
            if found >= self.vocab_size:
                raise PotstillError(
                    f"{self.where} answered id {found} at position {position} of {name}, "
                    f"outside the teacher's vocabulary of {self.vocab_size:,} ids: it must "
                    "serve the teacher's own model and tokenizer"
                )
            return found
        ids = self._text_index().get(token)
        if not ids:
            raise PotstillError(
                f"{self.where} answered token {token!r} at position {position} of {name}, "
                "which no id of the teacher's tokenizer reads as: it must serve the "
                "teacher's own model and tokenizer"
            )
        if len(ids) > 1:
            raise PotstillError(
                f"{self.where} answered token {token!r} at position {position} of {name}, "
                f"which {len(ids)} ids of the teacher's tokenizer read as: the answer cannot "
                "be mapped back to ids; set teach.endpoint.token_ids=true (a server with "
                "vLLM's return_tokens_as_token_ids)"
            )
        return ids[0]

    def _text_index(self) -> dict[str, list[int]]:
        """Each single token's text, and the ids that read as it (built once): its
        decoded text (vLLM's names) and `TokenText`'s (`potstill serve`'s, which
        spells a piece of a character as its bytes)."""
        with self._lock:
            if self._ids_of_text is None:
                names = TokenText(self._tokenizer)
                index: dict[str, set[int]] = {}
                for i in range(self.vocab_size):
                    for text in (self._tokenizer.decode([i]), names.text_of(i)):
                        index.setdefault(text, set()).add(i)
                self._ids_of_text = {text: sorted(ids) for text, ids in index.items()}
            return self._ids_of_text

    def _check_text(self, text: Any, prompt: list[int], name: str) -> None:
        """Once: the server reads the first prompt's ids as the teacher's tokenizer does
        (its echoed text starts with the same text). A server that echoes no text is not
        checked."""
        with self._lock:
            if self._checked_text or not isinstance(text, str) or not text:
                return
            self._checked_text = True
        readings = {
            self._tokenizer.decode(prompt),
            self._tokenizer.decode(prompt, skip_special_tokens=True),
        }
        if not any(text.startswith(reading) for reading in readings):
            here = self._tokenizer.decode(prompt)
            raise PotstillError(
                f"{self.where} reads the ids of {name} as other text than the teacher's "
                f"tokenizer does ({text[:40]!r} against {here[:40]!r}): it must serve the "
                "teacher's own model and tokenizer"
            )

    def _no_logprobs(self, name: str, position: int | None = None) -> str:
        at = "" if position is None else f" at position {position}"
        return (
            f"{self.where} answered {name} without prompt log-probabilities{at}: teaching "
            "through a server needs /v1/completions with echo and logprobs (vLLM, potstill "
            f"serve); {self._kept()}"
        )

    def _kept(self) -> str:
        return f"the {self.client.kept} finished so far are kept"
