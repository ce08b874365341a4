"""On-policy distillation (GKD: Agarwal et al., "On-Policy Distillation of Language Models:
Learning from Self-Generated Mistakes", ICLR 2024).

A student trained only on the teacher's sequences never sees its own mistakes at
training time, yet at test time it reads nothing but its own tokens. GKD fixes the
mismatch: a fraction λ of the training batches are replaced by the student's own
replies to the same prompts, sampled from the current student, and the teacher scores
every token of them. On those batches only the terms that compare with the teacher
apply (the sampled tokens are no ground truth; see `potstill.tasks.causal_lm.CausalLM`).

`OnPolicyChats` wraps the chats a student learns from (`potstill.data.chat.ChatRows`):
which batches are on-policy is a pure function of the seed and the batch's examples, and
each sample is drawn with its own seed, so a resumed run draws what the killed one would.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from transformers import GenerationConfig

from potstill.data.batch import Batch
from potstill.data.chat import ChatRows, padded_chats
from potstill.generation.forward import end_token_ids
from potstill.util.modes import eval_mode


@dataclass
class OnPolicyChats:
    """``chats``, with a ``fraction`` of the batches answered by ``model`` itself.

    Args:
        chats: the prompts and the reference replies (used on the other batches).
        model: the student being trained (its current weights sample each batch).
        tokenizer: the student's tokenizer (end tokens, padding).
        fraction: λ, the share of batches that are the student's own samples, in [0, 1].
        temperature: sampling temperature (GKD samples at 1: the student's own
            distribution), > 0.
        max_tokens: most tokens per sampled reply; also cut to fit ``max_length``.
        max_length: most tokens per chat, prompt included.
        seed: picks the on-policy batches and seeds each sample.
    """

    chats: ChatRows
    model: nn.Module
    tokenizer: Any
    fraction: float
    temperature: float = 1.0
    max_tokens: int = 256
    max_length: int = 512
    seed: int = 0
    sampled_batches: int = field(default=0, init=False)
    sampled_tokens: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        if not 0.0 <= self.fraction <= 1.0:
            raise ValueError(f"fraction must be in [0, 1], got {self.fraction}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be at least 1, got {self.max_tokens}")
        self._ends = sorted(end_token_ids(self.model, self.tokenizer))
        if not self._ends:
            raise ValueError("the student has no end token to stop its samples at")

    def __len__(self) -> int:
        return len(self.chats)

    def is_on_policy(self, index: torch.Tensor) -> bool:
        """Whether the batch of examples ``index`` is sampled by the student: a uniform
        draw keyed by the seed and the examples, below ``fraction``."""
        return _uniform(self.seed, index) < self.fraction

    def batch(self, index: torch.Tensor) -> Batch:
        """Examples ``index``: the reference replies, or, on an on-policy batch, replies
        the student samples now (labelled, and marked ``sampled``)."""
        if not self.is_on_policy(index):
            return self.chats.batch(index)
        rows = index.tolist()
        prompts = [self.chats.ids[i][: self.chats.prompt[i]] for i in rows]
        replies = self.sample(prompts, seed=int(_uniform(self.seed + 1, index) * 2**31))
        self.sampled_batches += 1
        self.sampled_tokens += sum(map(len, replies))
        return padded_chats(
            [p + r for p, r in zip(prompts, replies, strict=True)],
            [len(p) for p in prompts],
            index,
            self.chats.pad_id,
            sampled=True,
        )

    def sample(self, prompts: list[list[int]], *, seed: int) -> list[list[int]]:
        """One reply per prompt from the current student (plain sampling at
        ``temperature``: no top-k, top-p or repetition penalty), each through its end
        token when it stops in time."""
        room = min(self.max_tokens, self.max_length - max(map(len, prompts)))
        if room < 1:
            raise ValueError(
                f"a prompt of {max(map(len, prompts))} tokens leaves no room for a reply "
                f"within max_length {self.max_length}"
            )
        device = next(self.model.parameters()).device
        width = max(map(len, prompts))
        pad = self.chats.pad_id
        ids = torch.full((len(prompts), width), pad, dtype=torch.long)  # (B, P), left-padded
        mask = torch.zeros((len(prompts), width), dtype=torch.long)  # (B, P)
        for r, prompt in enumerate(prompts):
            ids[r, width - len(prompt) :] = torch.tensor(prompt)
            mask[r, width - len(prompt) :] = 1
        config = GenerationConfig(
            do_sample=True,
            temperature=self.temperature,
            top_k=0,
            top_p=1.0,
            repetition_penalty=1.0,
            max_new_tokens=room,
            eos_token_id=self._ends,
            pad_token_id=pad,
        )
        with torch.random.fork_rng(devices=[]), eval_mode(self.model), torch.no_grad():
            torch.manual_seed(seed)
            out = self.model.generate(
                input_ids=ids.to(device), attention_mask=mask.to(device), generation_config=config
            )
        return [_through_end(row.tolist(), self._ends) for row in out[:, width:].cpu()]


def _through_end(tokens: list[int], ends: list[int]) -> list[int]:
    """``tokens`` up to and including the first end token (the rest is padding)."""
    for t, token in enumerate(tokens):
        if token in ends:
            return tokens[: t + 1]
    return tokens


def _uniform(seed: int, index: torch.Tensor) -> float:
    """A number in [0, 1) fixed by ``seed`` and the examples ``index`` (any process)."""
    key = f"{seed}:{','.join(map(str, index.tolist()))}".encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "big") / 2**64
