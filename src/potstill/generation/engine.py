"""The engine: a bounded queue of requests and one worker thread that decodes them in
batches with a KV cache.

The worker takes up to ``max_batch`` waiting rows (a request with ``n`` choices over ``p``
prompts is ``n * p`` rows), left-pads their prompts into one batch, runs the prompt
through the model once and then one token per step for every live row, reusing the
model's KV cache (a transformers ``DynamicCache``). Rows finish independently (end
token, a stop string, ``max_tokens``); finished rows are dropped from the batch and its
cache, so the rest decode at the cost of the rows still running, and rows waiting by then
join the running batch (continuous batching): their prompts run once, and their KV cache
is merged into the batch's, the shorter of the two left-padded. Caches other than plain
growing ``DynamicLayer`` s (sliding windows, older transformers) keep their batch as it
started. Each row's text goes
back to its request as it is produced, handed to the request's asyncio loop with
``call_soon_threadsafe``.

The server submits from its own asyncio loop (`Engine.submit`); offline code calls
`Engine.generate` or `Engine.generate_each`, which run a loop of their own and block
until every row is written.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from potstill.generation.forward import Forward, end_token_ids
from potstill.generation.handle import (
    Choice,
    EngineBusy,
    EngineError,
    Generation,
    GenerationSettings,
    RowUpdate,
    TokenLogprob,
)
from potstill.generation.sampling import RowSampling, next_tokens, token_logprobs
from potstill.generation.text import TextStream
from potstill.util.log import logger


@dataclass
class _Row:
    """The worker's state for one row."""

    generation: Generation
    index: int
    prompt: list[int]
    settings: GenerationSettings
    sampling: RowSampling
    text: TextStream
    # (token id, logprob, top k) of each generated token, when logprobs are asked for;
    # sent as `TokenLogprob` with the token's offset once its text is final.
    tokens: list[tuple[int, float, tuple[tuple[int, float], ...]]] = field(default_factory=list)
    tokens_sent: int = 0
    generated: int = 0
    finish_reason: str | None = None


@dataclass
class EngineStats:
    """Counters for tests and logs."""

    batches: int = 0
    rows: int = 0
    largest_batch: int = 0
    joined: int = 0  # rows that joined a batch already decoding


class Engine:
    """Batched generation from one causal LM on one device, for any number of clients.

    Args:
        model: a transformers causal LM in eval mode, already on its device.
        tokenizer: its tokenizer (``decode``, ``pad_token_id``, ``eos_token_id``).
        max_batch: the most rows decoded together.
        max_queue: the most requests waiting; one more gets `EngineBusy`.

    Call `start` before use and `close` after (or use it as a context manager).
    """

    def __init__(
        self, model: Any, tokenizer: Any, *, max_batch: int = 8, max_queue: int = 64
    ) -> None:
        if max_batch < 1 or max_queue < 1:
            raise ValueError("max_batch and max_queue must be at least 1")
        self.model = model
        self.tokenizer = tokenizer
        self.max_batch = max_batch
        self.device = next(model.parameters()).device
        self.context_length: int | None = getattr(model.config, "max_position_embeddings", None)
        self.vocab_size: int = model.get_input_embeddings().weight.shape[0]
        self.end_ids = end_token_ids(model, tokenizer)
        self.stats = EngineStats()
        self._pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self._forward = Forward(model)
        self._queue: queue.Queue[Generation] = queue.Queue(maxsize=max_queue)
        self._pending: deque[_Row] = deque()  # rows taken from the queue, not yet decoded
        self._closing = threading.Event()
        self._thread: threading.Thread | None = None
        # Request threads encode while the worker decodes; a fast tokenizer can refuse
        # concurrent use ("Already borrowed"), so both go through this lock.
        self._tokenizer_lock = threading.Lock()
        # Held by an offline caller while it queues its rows, and by the worker while it
        # gathers rows into a batch, so a batch never starts with half of them.
        self._intake = threading.Lock()

    def start(self) -> None:
        """Start the worker thread."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="potstill-engine", daemon=True)
            self._thread.start()

    def close(self) -> None:
        """Stop the worker; requests still waiting or running fail with `EngineError`."""
        self._closing.set()
        if self._thread is not None:
            self._thread.join()
        self._fail_waiting()

    def __enter__(self) -> Engine:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of ``text`` (safe to call while the worker runs)."""
        with self._tokenizer_lock:
            return list(self.tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"])

    def queued(self) -> int:
        """How many requests are waiting in the queue."""
        return self._queue.qsize()

    def submit(
        self, prompts: list[list[int]], settings: GenerationSettings, n: int = 1
    ) -> Generation:
        """Queue a request: ``n`` choices for each prompt (token ids, each non-empty).

        Must be called from the request's running asyncio loop. Raises `EngineBusy` when
        the queue is full and `EngineError` when the engine is shutting down.
        """
        if self._closing.is_set():
            raise EngineError("the server is shutting down")
        generation = Generation(prompts, n, settings, asyncio.get_running_loop())
        try:
            self._queue.put_nowait(generation)
        except queue.Full:
            raise EngineBusy(
                f"the server is busy: {self._queue.maxsize} requests are already waiting; "
                "retry later"
            ) from None
        return generation

    # Offline use: no server, the caller's thread blocks until the text is written.

    def generate(
        self, prompts: list[list[int]], settings: GenerationSettings, n: int = 1
    ) -> list[Choice]:
        """``n`` choices for each prompt (token ids, each non-empty), synchronously.

        Returns the ``len(prompts) * n`` choices in index order (prompt * n + choice); row
        ``i`` samples with ``settings.seed + i``. The engine must be started; call from a
        thread with no running asyncio loop (async code uses `submit`).
        """
        return self._offline([(prompts, settings, n)])[0]

    def generate_each(
        self, requests: Sequence[tuple[list[int], GenerationSettings]]
    ) -> list[Choice]:
        """One choice per ``(prompt ids, settings)``, each row with its own settings (its
        own seed: a row's sampled text does not depend on which rows share its batch),
        decoded together in batches of up to ``max_batch`` rows. The choices come back in
        the requests' order, each with ``index`` 0. Blocks like `generate`.
        """
        done = self._offline([([prompt], settings, 1) for prompt, settings in requests])
        return [choices[0] for choices in done]

    def _offline(
        self, requests: list[tuple[list[list[int]], GenerationSettings, int]]
    ) -> list[list[Choice]]:
        if self._thread is None or not self._thread.is_alive():
            raise EngineError("the engine is not running: call start() first")
        for prompts, _, n in requests:
            if n < 1 or any(not prompt for prompt in prompts):
                raise ValueError("n must be at least 1 and every prompt needs a token")
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(self._collect(requests))
        raise RuntimeError("generate blocks: from a running asyncio loop, use submit")

    async def _collect(
        self, requests: list[tuple[list[list[int]], GenerationSettings, int]]
    ) -> list[list[Choice]]:
        generations: list[Generation] = []
        try:
            while len(generations) < len(requests):
                # Queue as many as there is room for before the worker forms its next batch
                # (it waits for this lock); then wait for room instead of failing.
                with self._intake:
                    for prompts, settings, n in requests[len(generations) :]:
                        try:
                            generations.append(self.submit(prompts, settings, n))
                        except EngineBusy:
                            break
                if len(generations) < len(requests):
                    await asyncio.sleep(0.005)
            return [await generation.choices() for generation in generations]
        finally:  # on failure or interruption, rows still queued are dropped
            for generation in generations:
                generation.cancel()

    # The worker thread.

    def _work(self) -> None:
        while not self._closing.is_set():
            if not self._pending and not self._take(wait=0.2):
                continue
            batch = self._admit(self.max_batch)
            if not batch:
                continue
            self.stats.batches += 1
            self.stats.rows += len(batch)
            self.stats.largest_batch = max(self.stats.largest_batch, len(batch))
            try:
                self._decode(batch)
            except Exception as e:  # a failed batch fails its requests, not the server
                logger.exception("generation failed")
                for row in batch:
                    if row.finish_reason is None and not row.generation.cancelled:
                        row.generation.deliver(EngineError(f"generation failed: {e}"))
                        row.generation.cancel()  # its rows still waiting are dropped

    def _take(self, wait: float | None) -> bool:
        """Move one waiting request's rows to the pending rows, waiting up to ``wait``
        seconds for one (None: not at all); False if none came."""
        try:
            generation = self._queue.get(timeout=wait) if wait else self._queue.get_nowait()
        except queue.Empty:
            return False
        self._pending.extend(self._rows_of(generation))
        return True

    def _rows_of(self, generation: Generation) -> list[_Row]:
        settings = generation.settings
        n = generation.rows // len(generation.prompts)
        rows = []
        for index in range(generation.rows):
            generator = None
            if settings.sampling_temperature > 0:
                generator = torch.Generator(device=self.device)
                if settings.seed is None:
                    generator.seed()
                else:
                    generator.manual_seed(settings.seed + index)
            rows.append(
                _Row(
                    generation=generation,
                    index=index,
                    prompt=generation.prompts[index // n],
                    settings=settings,
                    sampling=RowSampling(settings.sampling_temperature, settings.top_p, generator),
                    text=TextStream(self._decode_text, settings.stop),
                )
            )
        return rows

    def _decode_text(self, ids: list[int]) -> str:
        with self._tokenizer_lock:
            return self.tokenizer.decode(ids, skip_special_tokens=True)

    @torch.inference_mode()
    def _decode(self, batch: list[_Row]) -> None:
        """Decode ``batch`` until every row has finished; rows waiting meanwhile join it
        (their prompts run once, their caches are merged in) while there is room. Rows
        that join are appended to ``batch``, so a failure reaches them too."""
        rows = list(batch)
        logits, cache, mask, positions = self._prefill(rows)  # (B, V), cache, (B, L) × 2
        joinable = _mergeable(cache)
        while True:
            chosen = next_tokens(logits, [row.sampling for row in rows])  # (B,)
            self._advance(rows, logits, chosen)
            live = [b for b, row in enumerate(rows) if row.finish_reason is None]
            if not live:
                return
            if self._closing.is_set():
                for row in rows:
                    if row.finish_reason is None:
                        row.generation.deliver(EngineError("the server is shutting down"))
                return
            if len(live) < len(rows):  # drop finished rows from the batch and the cache
                keep = torch.tensor(live, device=self.device)
                cache.batch_select_indices(keep)
                mask, positions, chosen = mask[keep], positions[keep], chosen[keep]
                rows = [rows[b] for b in live]
            mask = torch.cat([mask, mask.new_ones(len(rows), 1)], dim=1)  # (B, L + t)
            positions = positions[:, -1:] + 1  # (B, 1)
            logits, cache = self._forward(chosen[:, None], mask, positions, cache)
            joining = self._admit(self.max_batch - len(rows)) if joinable else []
            if joining:
                batch.extend(joining)
                new_logits, new_cache, new_mask, new_positions = self._prefill(joining)
                mask = _merge_caches(cache, mask, new_cache, new_mask)
                positions = torch.cat([positions, new_positions[:, -1:]])
                logits = torch.cat([logits, new_logits])
                rows += joining
                self.stats.rows += len(joining)
                self.stats.joined += len(joining)
                self.stats.largest_batch = max(self.stats.largest_batch, len(rows))

    def _prefill(self, rows: list[_Row]) -> tuple[torch.Tensor, Any, torch.Tensor, torch.Tensor]:
        """Run the rows' prompts, left-padded: (last logits (B, V), cache, mask (B, L),
        positions (B, L))."""
        ids, mask = self._left_pad([row.prompt for row in rows])  # (B, L) each
        positions = (mask.cumsum(dim=-1) - 1).clamp_min(0)  # (B, L); pads sit at 0, masked
        logits, cache = self._forward(ids, mask, positions, cache=None)  # (B, V)
        return logits, cache, mask, positions

    def _admit(self, room: int) -> list[_Row]:
        """Up to ``room`` rows that are waiting (taken from the queue as needed), for a new
        batch or one already decoding; cancelled rows are dropped."""
        if room < 1 or (not self._pending and self._queue.empty()):
            return []
        with self._intake:  # an offline caller's rows all queued first: full batches
            while len(self._pending) < room and self._take(wait=None):
                pass
        rows: list[_Row] = []
        while self._pending and len(rows) < room:
            row = self._pending.popleft()
            if not row.generation.cancelled:
                rows.append(row)
        return rows

    def _advance(self, rows: list[_Row], logits: torch.Tensor, chosen: torch.Tensor) -> None:
        """Give each row its chosen token; send what became final.

        Args:
            logits: ``(B, V)`` the raw logits the tokens were chosen from.
            chosen: ``(B,)`` the chosen tokens.
        """
        wanted = [row.settings.top_logprobs for row in rows]
        logprobs = None
        if any(k is not None for k in wanted):
            top_k = max(k or 0 for k in wanted)
            chosen_lp, top_ids, top_lp = token_logprobs(logits, chosen, top_k)
            logprobs = (chosen_lp.tolist(), top_ids.tolist(), top_lp.tolist())
        for b, (row, token_id) in enumerate(zip(rows, chosen.tolist(), strict=True)):
            row.generated += 1
            if token_id in self.end_ids:
                piece, row.finish_reason = row.text.finish(), "stop"
            else:
                piece = row.text.push(token_id)
                if logprobs is not None and row.settings.top_logprobs is not None:
                    k = row.settings.top_logprobs
                    top = tuple(zip(logprobs[1][b][:k], logprobs[2][b][:k], strict=True))
                    row.tokens.append((token_id, logprobs[0][b], top))
                if row.text.stopped:
                    row.finish_reason = "stop"
                elif row.generated >= row.settings.max_tokens:
                    piece += row.text.finish()
                    row.finish_reason = "length"
                elif row.generation.cancelled:
                    row.finish_reason = "stop"
            self._publish(row, piece)

    def _publish(self, row: _Row, piece: str) -> None:
        """Send the row's new text with the logprobs of the tokens behind it."""
        if row.finish_reason is None:
            limit = row.text.released  # tokens whose text has (partly) gone out
        elif row.text.stopped:
            limit = len(row.text.text)  # tokens that put text before the stop string
        else:
            limit = None  # every token
        offsets = row.text.offsets
        sent = row.tokens_sent
        upto = sent
        while upto < len(row.tokens) and (limit is None or offsets[upto] < limit):
            upto += 1
        row.tokens_sent = upto
        if piece or upto > sent or row.finish_reason is not None:
            tokens = tuple(TokenLogprob(*row.tokens[i], offsets[i]) for i in range(sent, upto))
            update = RowUpdate(row.index, piece, tokens, row.finish_reason, row.generated)
            row.generation.deliver(update)

    def _left_pad(self, prompts: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(ids, mask)``, both ``(B, L)`` long on the device, prompts flush right."""
        length = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), length), self._pad_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), length), dtype=torch.long)
        for b, prompt in enumerate(prompts):
            ids[b, length - len(prompt) :] = torch.tensor(prompt, dtype=torch.long)
            mask[b, length - len(prompt) :] = 1
        return ids.to(self.device), mask.to(self.device)

    def _fail_waiting(self) -> None:
        """Fail every request not yet decoded (at shutdown)."""
        waiting = {id(row.generation): row.generation for row in self._pending}
        self._pending.clear()
        while True:
            try:
                generation = self._queue.get_nowait()
            except queue.Empty:
                break
            waiting[id(generation)] = generation
        for generation in waiting.values():
            generation.deliver(EngineError("the server is shutting down"))


def _mergeable(cache: Any) -> bool:
    """Whether rows can join ``cache``: a cache of plain growing layers (transformers'
    ``DynamicCache`` with ``DynamicLayer`` s); others (sliding windows, older versions)
    keep their batch as it started."""
    layers = getattr(cache, "layers", None)
    return bool(layers) and all(
        type(layer).__name__ == "DynamicLayer"
        and isinstance(getattr(layer, "keys", None), torch.Tensor)
        for layer in layers
    )


def _merge_caches(
    cache: Any, mask: torch.Tensor, joining: Any, joining_mask: torch.Tensor
) -> torch.Tensor:
    """Append ``joining``'s rows to ``cache`` in place and return the merged mask.

    Both caches are left-padded: the shorter one gets zero keys and values (masked out) on
    the left, so both have ``L = max`` positions, and the rows are concatenated.

    Args:
        mask: ``(B, L1)`` the running rows' attention mask (0 = pad).
        joining_mask: ``(J, L2)`` the joining rows'.

    Returns the ``(B + J, L)`` mask.
    """
    width = max(mask.shape[1], joining_mask.shape[1])

    def left(t: torch.Tensor, length: int) -> torch.Tensor:
        missing = width - length
        if missing == 0:
            return t
        pad = t.new_zeros((*t.shape[:-2], missing, t.shape[-1]))
        return torch.cat([pad, t], dim=-2)

    ours_len, theirs_len = mask.shape[1], joining_mask.shape[1]
    for ours, theirs in zip(cache.layers, joining.layers, strict=True):
        ours.keys = torch.cat([left(ours.keys, ours_len), left(theirs.keys, theirs_len)])
        ours.values = torch.cat([left(ours.values, ours_len), left(theirs.values, theirs_len)])
    pad = torch.nn.functional.pad
    return torch.cat([pad(mask, (width - ours_len, 0)), pad(joining_mask, (width - theirs_len, 0))])
