"""The log-probabilities of a prompt's own tokens (``echo`` with ``logprobs``, vLLM's
``prompt_logprobs``): one forward pass over each prompt, no generation.

Position ``t`` of a prompt gets the model's distribution after tokens ``0 … t − 1``: the
log-probability of token ``t``, its rank, and the ``top`` likeliest alternatives. The first
position has none (nothing comes before it). Prompts of one length run as one batch, with
no padding, as a teacher runs over packed training blocks, so their numbers are the ones a
local teacher pass computes (`potstill.teachers.LiveTeacher`).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import torch

MAX_LOGITS_BYTES = 512 * 2**20  # one batch's float32 (B, P, V) logits stay under this


@dataclass(frozen=True)
class PromptToken:
    """One prompt token: its log-probability and rank under the model (None for the first
    token) and the ``top`` alternatives as ``(id, log-probability)``, likeliest first."""

    token_id: int
    logprob: float | None
    rank: int | None
    top: tuple[tuple[int, float], ...]


class PromptScorer:
    """Scores prompts with ``model`` (a causal LM in eval mode, on its device), one call at
    a time: the server runs it in a worker thread beside the generation engine's."""

    def __init__(self, model: Any) -> None:
        self._model = model
        self._lock = threading.Lock()
        self._device = next(model.parameters()).device

    def score(self, prompts: list[list[int]], top: int) -> list[list[PromptToken]]:
        """Every token of every prompt (`PromptToken`), ``top`` alternatives each."""
        if top < 0:
            raise ValueError(f"top must be >= 0, got {top}")
        scored: list[list[PromptToken] | None] = [None] * len(prompts)
        by_length: dict[int, list[int]] = {}
        for i, prompt in enumerate(prompts):
            by_length.setdefault(len(prompt), []).append(i)
        with self._lock, torch.inference_mode():
            for length, members in by_length.items():
                vocab = self._model.get_output_embeddings().weight.shape[0]
                rows = max(1, MAX_LOGITS_BYTES // max(4 * length * vocab, 1))
                for start in range(0, len(members), rows):
                    chosen = members[start : start + rows]
                    batch = [prompts[i] for i in chosen]
                    for i, tokens in zip(chosen, self._score_batch(batch, top), strict=True):
                        scored[i] = tokens
        return [tokens for tokens in scored if tokens is not None]

    def _score_batch(self, prompts: list[list[int]], top: int) -> list[list[PromptToken]]:
        ids = torch.tensor(prompts, device=self._device)  # (B, P)
        logits = self._model(input_ids=ids, use_cache=False).logits[:, :-1]  # (B, P − 1, V)
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        targets = ids[:, 1:]  # (B, P − 1): the token each position predicts
        chosen = logprobs.gather(-1, targets[..., None])  # (B, P − 1, 1)
        ranks = (logprobs > chosen).sum(-1) + 1  # (B, P − 1)
        k = min(top, logprobs.shape[-1])
        top_values, top_ids = logprobs.topk(k, dim=-1)  # (B, P − 1, k)
        chosen_list = chosen[..., 0].cpu().tolist()
        ranks_list = ranks.cpu().tolist()
        values_list, ids_list = top_values.cpu().tolist(), top_ids.cpu().tolist()
        out = []
        for b, prompt in enumerate(prompts):
            tokens = [PromptToken(prompt[0], None, None, ())]
            for t in range(len(prompt) - 1):
                alternatives = tuple(zip(ids_list[b][t], values_list[b][t], strict=True))
                tokens.append(
                    PromptToken(prompt[t + 1], chosen_list[b][t], ranks_list[b][t], alternatives)
                )
            out.append(tokens)
        return out
