"""Rolling a run that broke back to its last good point, at half the learning rate.

Skipping spiked updates (`potstill.train.spikes`) catches a gradient that jumps in one
step. It does not catch a slow blow-up: on code text the default's cross-entropy baseline
(seed 1, lr 2e-3) climbed over steps 41–47 with every norm under the spike threshold and
ended at 582 perplexity, where the same run at lr 1e-3 reached 100 (bench/results/
heldout.md). Large-model trainers restart such a run from an earlier checkpoint with a
lower rate; the loop does it in memory, for every model of a run alike (the distilled
student, its baseline, any task's students), so neither side of a comparison is left
broken while the other is not.

The rule. Every ``train.eval_every`` steps the loop *checks* one number: the held-out loss
when the flow gives one (the language-model flow does), else the mean training loss of the
steps since the last check (skipped updates left out). A check *rose* when its number is
not finite, or is above the lowest accepted check so far by more than `ABSOLUTE_MARGIN`
nats and more than `RELATIVE_MARGIN` of it (the report's health rule, `rose`, uses the same
margins: 0.3 nats is a perplexity ×1.35 that no healthy run gives back). A check that did
not rise is *accepted*: the run's state there (trained weights, optimizer, scheduler, RNG,
position) becomes the *good point*. A check that rose, while fewer than ``train.rollbacks``
rollbacks have happened, puts the good point back, multiplies the learning rate by
`LR_FACTOR` for the rest of the run, and trains the steps since the good point again on
the batches that come after the ones that broke it (PaLM's remedy for a loss spike: restart
from an earlier checkpoint and skip the data around it). Replaying the same batches did not
help: on the code corpus the baseline went back to step 40 three times, at lr x0.5, x0.25
and x0.125, and each time steps 41-50 sent its held-out loss up again (6.45 to 7.72, 7.76,
6.78 nats). The data order stays a function of the step plus the batches passed over
(``TrainState.data_skip``); the schedule's length, and so the lr, is unchanged. Steps that
the skip pushes past the schedule's end take its first batches again, so a run visits only
the blocks its schedule plans: a teacher cache taught for that schedule (``teach.blocks:
schedule``) holds every one (before, a rollback near the end asked it for blocks it
lacked). Once the rollbacks are used up a check that rose is neither accepted nor acted
on; the report's health check judges the end.

A rollback is logged in ``metrics.jsonl`` as a row with ``event: rollback`` (the step it
went back to, the step and number that rose, the best, the new learning-rate scale); the
rows of the abandoned steps are dropped, as a resume drops the rows past its checkpoint.

Resume. The good point is kept in memory. A checkpoint taken at a check's step (the default
cadences: checkpoints every 50 steps, checks every 10) is itself the good point; one taken
between checks (``until``, or cadences that do not divide) also stores the good point in its
``good/`` folder, so a resumed run rolls back to the same step an unbroken one would. Under
FSDP across processes that copy is not written (its tensors are shards); a run resumed from
such a checkpoint rolls back to the checkpoint instead.
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from potstill.train.checkpoint import TrainState
from potstill.util.errors import PotstillError

ABSOLUTE_MARGIN = 0.3  # nats
RELATIVE_MARGIN = 0.05  # of the best
LR_FACTOR = 0.5
FOLDER = "good"  # inside a checkpoint taken between checks


def rose(value: float, best: float) -> bool:
    """Whether ``value`` is not finite, or above ``best`` by more than both margins.

    >>> rose(4.8, 4.4), rose(4.6, 4.4), rose(float("nan"), 4.4), rose(12.0, 11.5)
    (True, False, True, False)
    """
    if not math.isfinite(value):
        return True
    return value - best > ABSOLUTE_MARGIN and value - best > RELATIVE_MARGIN * abs(best)


@dataclass
class GoodPoint:
    """A copy of everything a step's training depends on, to go back to."""

    params: dict[str, torch.Tensor]  # the trained modules' parameters, by name
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    rng: torch.Tensor
    state: TrainState

    @classmethod
    def take(
        cls,
        trained: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        state: TrainState,
    ) -> GoodPoint:
        return cls(
            params={name: p.detach().clone() for name, p in trained.named_parameters()},
            optimizer=_clone(optimizer.state_dict()),
            scheduler=_clone(scheduler.state_dict()),
            rng=torch.get_rng_state(),
            state=copy.deepcopy(state),
        )

    def restore(
        self,
        trained: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
    ) -> TrainState:
        """Put the trained modules, optimizer, scheduler and RNG back; returns a copy of
        the position (the caller carries its rollback count and rate scale over). The
        copies handed over are fresh, so the point can be restored again."""
        with torch.no_grad():
            for name, param in trained.named_parameters():
                param.copy_(self.params[name])
        optimizer.load_state_dict(_clone(self.optimizer))
        scheduler.load_state_dict(_clone(self.scheduler))
        torch.set_rng_state(self.rng)
        return copy.deepcopy(self.state)

    def save(self, checkpoint: Path) -> None:
        """Into the ``good/`` folder of ``checkpoint`` (a checkpoint folder being written;
        whole tensors only)."""
        folder = checkpoint / FOLDER
        folder.mkdir(parents=True, exist_ok=True)
        params = {name: value.contiguous() for name, value in self.params.items()}
        save_file(params, str(folder / "params.safetensors"))
        torch.save(
            {"optimizer": self.optimizer, "scheduler": self.scheduler, "rng": self.rng},
            folder / "optim.pt",
        )
        (folder / "state.json").write_text(json.dumps(self.state.__dict__) + "\n")

    @staticmethod
    def kept_in(checkpoint: Path) -> bool:
        """Whether ``checkpoint`` holds a good point (it was taken between checks)."""
        return (checkpoint / FOLDER / "state.json").is_file()

    @classmethod
    def load(cls, checkpoint: Path) -> GoodPoint:
        folder = checkpoint / FOLDER
        try:
            saved = torch.load(folder / "optim.pt", weights_only=True, map_location="cpu")
            return cls(
                params=load_file(str(folder / "params.safetensors")),
                optimizer=saved["optimizer"],
                scheduler=saved["scheduler"],
                rng=saved["rng"],
                state=TrainState(**json.loads((folder / "state.json").read_text())),
            )
        except (OSError, ValueError, RuntimeError, KeyError, TypeError) as e:
            raise PotstillError(
                f"checkpoint {checkpoint} is unreadable ({type(e).__name__}); delete that "
                "folder to restart this stage from the beginning"
            ) from e


def apply_lr(
    optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LambdaLR
) -> None:
    """Set each group's rate from the scheduler's multipliers at its current step (after a
    restore changed what the multipliers read)."""
    for group, base, multiplier in zip(
        optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas, strict=True
    ):
        group["lr"] = base * multiplier(scheduler.last_epoch)
    scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]  # what it reports


def _clone(tree: Any) -> Any:
    """A deep copy whose tensors are fresh clones (an optimizer's state dict holds its live
    tensors, and loading one may keep the tensors it is given)."""
    if isinstance(tree, torch.Tensor):
        return tree.detach().clone()
    if isinstance(tree, dict):
        return {key: _clone(value) for key, value in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(_clone(value) for value in tree)
    return copy.deepcopy(tree)
