"""Classifier students for training: full fine-tune or LoRA / PiSSA adapters, and saving.

The model is any ``AutoModelForSequenceClassification`` (see
`potstill.models.load.load_sequence_classifier`). With adapters, the classification head
(``classifier`` on encoders, ``score`` on decoders) is always trained in full: it is new.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch

from potstill.util.io import atomic_dir

Adapter = Literal["full", "lora", "pissa"]
ADAPTERS: tuple[str, ...] = ("full", "lora", "pissa")


def wrap_classifier_adapter(
    model: torch.nn.Module,
    adapter: Adapter,
    *,
    r: int = 8,
    alpha: int = 16,
    dropout: float = 0.0,
    target_modules: Sequence[str] | str | None = None,
) -> torch.nn.Module:
    """Full: the model as is. LoRA / PiSSA: a PEFT model where the adapters and the head
    train and nothing else does.

    ``target_modules=None`` takes PEFT's default for the architecture (BERT's
    ``query``/``value``, Llama's ``q_proj``/``v_proj``). PiSSA (Meng et al. 2024, "PiSSA:
    Principal Singular Values and Singular Vectors Adaptation") initialises the adapters from
    each weight's principal singular vectors (4 subspace iterations of a fast SVD).
    """
    if adapter == "full":
        return model
    if adapter not in ADAPTERS:
        raise ValueError(f"adapter must be one of {', '.join(ADAPTERS)}, got {adapter!r}")
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=(
            target_modules
            if target_modules is None or isinstance(target_modules, str)
            else list(target_modules)
        ),
        init_lora_weights=True if adapter == "lora" else "pissa_niter_4",
        task_type="SEQ_CLS",  # PEFT then keeps the head ("classifier" / "score") trainable
        # BERT-style classifiers read the pooler's output: a sentence encoder's pooler was
        # never trained (they mean-pool), so it trains with the head, as in a full fine-tune.
        modules_to_save=["pooler"] if _has_pooler(model) else None,
    )
    wrapped = get_peft_model(model, lora)
    heads = [n for n, p in wrapped.named_parameters() if p.requires_grad and "lora_" not in n]
    if not heads:
        raise ValueError(
            f"{type(model).__name__} has no head named classifier or score that PEFT keeps "
            "trainable; use adapter full for this model"
        )
    return wrapped


def _has_pooler(model: torch.nn.Module) -> bool:
    return any(name.split(".")[-1] == "pooler" for name, _ in model.named_modules())


def trainable_params(model: torch.nn.Module) -> int:
    """The number of parameters that train (adapters + head, or all of them)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def save_classifier(model: torch.nn.Module, tokenizer: Any, folder: Path) -> None:
    """Write an HF folder that loads with ``AutoModelForSequenceClassification``, atomically.

    Adapter models are saved merged (a plain checkpoint; the model in memory is untouched).
    """
    with atomic_dir(folder) as tmp:
        if hasattr(model, "merge_and_unload"):
            model = copy.deepcopy(model).merge_and_unload()
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
