"""Resolve a model reference (hub id, local folder, ``bundled:NAME``) and load it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from potstill.errors import PotstillError
from potstill.models import bundled

BUNDLED_PREFIX = "bundled:"


def resolve(ref: str, log: Callable[[str], None] = lambda _: None) -> str:
    """Return something ``from_pretrained`` accepts: a local folder, or a hub id."""
    if ref.startswith(BUNDLED_PREFIX):
        return str(bundled.pull(ref.removeprefix(BUNDLED_PREFIX), log=log))
    path = Path(ref).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise PotstillError(
                f"model folder {ref} has no config.json: give an HF model folder "
                "(config.json + weights), a hub id, or bundled:NAME"
            )
        return str(path)
    if ref.startswith((".", "/", "~")) or ref.count("/") > 1:
        raise PotstillError(
            f"model {ref} not found: no such folder; give an HF model folder, a hub id, "
            "or bundled:NAME (`potstill models` lists them)"
        )
    return ref


def load_causal_lm(
    ref: str,
    *,
    trust_remote_code: bool = False,
    attn_implementation: str | None = None,
    log: Callable[[str], None] = lambda _: None,
) -> tuple[torch.nn.Module, Any]:
    """Load ``(model, tokenizer)`` in float32 (bf16 is far slower than fp32 on CPU)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    location = resolve(ref, log=log)
    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    try:
        tokenizer = AutoTokenizer.from_pretrained(location, **kwargs)
        if attn_implementation is not None:
            kwargs["attn_implementation"] = attn_implementation
        model = AutoModelForCausalLM.from_pretrained(location, dtype=torch.float32, **kwargs)
    except (OSError, ValueError) as e:
        if location != ref:  # a local or bundled folder exists but does not load
            raise PotstillError(f"model {ref} could not be loaded ({_first_line(e)})") from e
        raise PotstillError(
            f"model {ref} not found: not a local folder or bundled:NAME, and not in the local "
            "hub cache; pass a local folder, or set HF_HUB_OFFLINE=0 to let potstill download "
            "hub ids"
        ) from e
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.eval()
    return model, tokenizer


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0][:200] if text else type(error).__name__
