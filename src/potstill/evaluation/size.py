"""What a model costs to keep: parameters and bytes on disk."""

from __future__ import annotations

from pathlib import Path

import torch

from potstill.models.load import WEIGHT_SUFFIXES
from potstill.util.errors import PotstillError

# `.bin` files that a training run leaves beside the weights but that are not weights.
NOT_WEIGHTS = frozenset({"training_args.bin", "optimizer.bin", "scheduler.bin", "rng_state.bin"})


def count_params(model: torch.nn.Module) -> int:
    """Every parameter held by the module, counted once (tied weights once).

    For a PEFT-wrapped model this is the base plus the adapter parameters as they exist in
    the module (a merged adapter adds nothing).
    """
    return sum(param.numel() for param in model.parameters())


def size_on_disk(path: str | Path) -> int:
    """Bytes of a weights file, or of the weight files in a model folder.

    For a folder, the sum of its top-level `*.safetensors`, `*.bin` and `*.gguf` files;
    tokenizer, config and training-state files are not counted.
    """
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    if not path.is_dir():
        raise PotstillError(f"no model file or folder at {path}; check the path")
    return sum(
        file.stat().st_size
        for file in path.iterdir()
        if file.is_file() and file.suffix in WEIGHT_SUFFIXES and file.name not in NOT_WEIGHTS
    )
