"""Resumable training state: model, optimizer, scheduler, RNG and data position.

Written atomically (a temp folder renamed into place), so a run killed mid-save keeps its
previous checkpoint. Loaded with ``weights_only=True``: nothing in it can run code.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from potstill.util.errors import PotstillError
from potstill.util.io import atomic_dir


@dataclass
class TrainState:
    step: int  # optimizer steps completed
    tokens: int  # valid training tokens consumed
    elapsed: float  # seconds of training so far
    # The last steps' gradient norms and the updates skipped as spikes (`train.spikes`).
    grad_norms: list[float] = field(default_factory=list)
    skipped: int = 0
    early_norm: float | None = None  # the spike floor, once the first norms are in
    # Rolling back a run that broke (`train.rollback`): the learning-rate multiplier the
    # rollbacks left, how many happened, the lowest accepted check, the step of the good
    # point, the training losses since the last check, and the micro-batches passed over
    # (the ones between a good point and the check that rose are not trained again).
    lr_scale: float = 1.0
    rollbacks: int = 0
    best: float | None = None
    good_step: int = 0
    window: list[float] = field(default_factory=list)
    data_skip: int = 0


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    return {k: v.detach().contiguous().clone() for k, v in model.state_dict().items() if k in names}


def save_checkpoint(
    folder: Path,
    model: torch.nn.Module,
    optimizer: dict,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    state: TrainState,
    *,
    extra: torch.nn.ModuleDict | None = None,
    also: Callable[[Path], None] | None = None,
) -> None:
    """Save the student's trainable tensors, ``extra`` modules (projections; in
    ``extra.safetensors``), the optimizer's state (``optimizer``: a
    ``torch.optim.Optimizer.state_dict()`` with full, unsharded tensors), scheduler, RNG and
    position, atomically; ``also`` writes more into the folder before it is renamed into
    place."""
    with atomic_dir(folder) as tmp:
        save_file(trainable_state(model), str(tmp / "model.safetensors"))
        if extra:
            save_file(trainable_state(extra), str(tmp / "extra.safetensors"))
        torch.save(
            {
                "optimizer": optimizer,
                "scheduler": scheduler.state_dict(),
                "rng": torch.get_rng_state(),
            },
            tmp / "optim.pt",
        )
        (tmp / "state.json").write_text(json.dumps(state.__dict__) + "\n")
        if also is not None:
            also(tmp)


def load_checkpoint(
    folder: Path,
    model: torch.nn.Module,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    *,
    extra: torch.nn.ModuleDict | None = None,
) -> tuple[TrainState, dict]:
    """Load the weights into ``model`` (and ``extra``), the scheduler and the RNG; returns
    the position and the optimizer's saved state, for the caller to load (whole, or as
    shards under FSDP)."""
    try:
        weights = load_file(str(folder / "model.safetensors"))
        extra_weights = load_file(str(folder / "extra.safetensors")) if extra else {}
        saved = torch.load(folder / "optim.pt", weights_only=True, map_location="cpu")
        state = TrainState(**json.loads((folder / "state.json").read_text()))
    except (OSError, ValueError, RuntimeError, KeyError, TypeError) as e:
        raise PotstillError(
            f"checkpoint {folder} is unreadable ({type(e).__name__}); delete that folder to "
            "restart this stage from the beginning"
        ) from e
    missing = set(trainable_state(model)) - set(weights)
    if missing:
        raise PotstillError(
            f"checkpoint {folder} does not match this student ({len(missing)} tensors missing); "
            "it was made by another recipe: delete it or use another run name"
        )
    if extra and set(trainable_state(extra)) - set(extra_weights):
        raise PotstillError(
            f"checkpoint {folder} lacks this recipe's projection weights; it was made by "
            "another recipe: delete it or use another run name"
        )
    model.load_state_dict(weights, strict=False)
    if extra:
        extra.load_state_dict(extra_weights, strict=False)
    scheduler.load_state_dict(saved["scheduler"])
    torch.set_rng_state(saved["rng"])
    return state, saved["optimizer"]
