"""The model's forward pass for decoding with a KV cache, and the tokens that end a row."""

from __future__ import annotations

import inspect
from typing import Any

import torch


class Forward:
    """The model's forward for decoding, whatever this transformers version calls its
    KV-cache argument (``cache`` from 5.x, ``past_key_values`` before)."""

    def __init__(self, model: Any) -> None:
        self._model = model
        params = inspect.signature(model.forward).parameters
        self._cache_arg = "cache" if "cache" in params else "past_key_values"
        # Models with absolute or rotary positions take them; ALiBi models (BLOOM) do not.
        self._takes_positions = "position_ids" in params
        self._keep_arg = next(
            (name for name in ("logits_to_keep", "num_logits_to_keep") if name in params), None
        )

    def __call__(
        self, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, cache: Any
    ) -> tuple[torch.Tensor, Any]:
        """Run ``ids`` ``(B, T)`` after the cached tokens.

        Args:
            ids: ``(B, T)`` new token ids.
            mask: ``(B, S + T)`` attention mask over the cached and new tokens (0 = pad).
            positions: ``(B, T)`` the new tokens' position ids.
            cache: the KV cache of the ``S`` earlier tokens, or None for a fresh one (the
                model makes a ``DynamicCache``).

        Returns ``(logits (B, V), cache)``: the last position's logits and the cache
        extended by the new tokens.
        """
        kwargs: dict[str, Any] = {self._cache_arg: cache, "use_cache": True}
        if self._takes_positions:
            kwargs["position_ids"] = positions
        if self._keep_arg is not None:
            kwargs[self._keep_arg] = 1  # only the last position's logits: (B, 1, V)
        out = self._model(input_ids=ids, attention_mask=mask, **kwargs)
        new_cache = next(
            value
            for name in ("cache", "past_key_values")
            if (value := getattr(out, name, None)) is not None
        )
        return out.logits[:, -1], new_cache


def end_token_ids(model: Any, tokenizer: Any) -> frozenset[int]:
    """The tokens that end a row: the generation config's end tokens and the tokenizer's."""
    ids: set[int] = set()
    config = getattr(model, "generation_config", None)
    configured = getattr(config, "eos_token_id", None)
    if isinstance(configured, int):
        ids.add(configured)
    elif configured is not None:
        ids.update(configured)
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return frozenset(ids)
