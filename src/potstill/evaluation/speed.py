"""Generation speed: batch-1 greedy decoding, the way a laptop user would run the model."""

from __future__ import annotations

import math
import time

import torch

from potstill.util.modes import eval_mode


def pad_token_id(model: torch.nn.Module) -> int:
    """A pad id for generate(): the model's own, else its end-of-sequence id, else 0."""
    for source in (getattr(model, "generation_config", None), getattr(model, "config", None)):
        for attr in ("pad_token_id", "eos_token_id"):
            value = getattr(source, attr, None)
            if isinstance(value, (list, tuple)):
                value = value[0] if value else None
            if value is not None:
                return int(value)
    return 0


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def generation_tokens_per_second(
    model: torch.nn.Module,
    prompt_ids: torch.Tensor,
    new_tokens: int = 32,
    repeats: int = 2,
) -> float:
    """Best-of-`repeats` greedy generation speed at batch 1, in new tokens per second.

    prompt_ids: (1, P) long. Exactly `new_tokens` tokens are generated each time (no early
    stop at end-of-sequence), after one short warm-up that is not timed. The model is put
    in eval mode and handed back in the mode it had.
    """
    if prompt_ids.dim() != 2 or prompt_ids.shape[0] != 1:
        raise ValueError(f"prompt_ids must be (1, P), got {tuple(prompt_ids.shape)}")
    if new_tokens < 1 or repeats < 1:
        raise ValueError(f"new_tokens and repeats must be >= 1, got {new_tokens}, {repeats}")
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    prompt_ids = prompt_ids.to(device)
    attention_mask = torch.ones_like(prompt_ids)  # (1, P)
    pad_id = pad_token_id(model)

    def generate(n: int) -> int:
        out = model.generate(
            input_ids=prompt_ids,
            attention_mask=attention_mask,
            do_sample=False,
            min_new_tokens=n,
            max_new_tokens=n,
            pad_token_id=pad_id,
        )  # (1, P + n)
        return out.shape[-1] - prompt_ids.shape[-1]

    with eval_mode(model):
        generate(min(4, new_tokens))  # warm-up: allocations, kernels, lazy init
        best = 0.0
        for _ in range(repeats):
            _synchronize(device)
            start = time.perf_counter()
            made = generate(new_tokens)
            _synchronize(device)
            elapsed = time.perf_counter() - start
            best = max(best, made / max(elapsed, 1e-9))
    if not math.isfinite(best) or best <= 0:
        raise RuntimeError(f"generation speed came out as {best}; the model generated nothing")
    return best
