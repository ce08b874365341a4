"""The one way a student is trained, whatever the kind of run.

Read top to bottom, `train_student` is the whole wiring: fingerprint every input →
skip a student that finished from the same ones → discard a checkpoint made from other
inputs → build → train (resuming this fingerprint's own checkpoint) → save → mark
finished → remove the checkpoints. A kind of distillation (language model, classify,
reason, context) brings only what differs: the inputs it adds to the fingerprint, how
its model and data are built (`Trainee`) and how the trained model is saved.
"""

from __future__ import annotations

import itertools
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from potstill.config import Recipe
from potstill.losses import LossTerm
from potstill.models.classifier import trainable_params
from potstill.pipeline.budget import student_steps
from potstill.pipeline.context import RunContext
from potstill.pipeline.markers import finished, forget, mark_finished
from potstill.teachers import TeacherSource
from potstill.train.loop import Dataset, Task, read_metrics, train
from potstill.train.settings import TrainConfig
from potstill.util.distributed import on_main
from potstill.util.errors import PotstillError
from potstill.util.fingerprint import fingerprint
from potstill.util.io import atomic_write_text
from potstill.util.log import log


@dataclass(frozen=True)
class Trainee:
    """What a flow's ``build`` hands the stage: the model (on its home device), what it
    learns from, and the tokenizer it is saved with. ``extra`` modules (feature-loss
    projections) train and are checkpointed beside it, never saved with it. ``evaluate``
    (the model's held-out loss) is logged as it trains (`potstill.train.loop.train`)."""

    model: nn.Module
    data: Dataset
    task: Task
    tokenizer: Any
    teacher: TeacherSource | None = None
    extra: nn.ModuleDict | None = None
    evaluate: Callable[[nn.Module], float] | None = None


def loss_identity(terms: list[LossTerm]) -> list[dict[str, Any]]:
    """The loss terms as a fingerprint reads them: every field, the loss's own
    parameters (jsd's ``beta``) and layer maps included.

    >>> loss_identity([LossTerm("jsd", 0.5, 2.0, {"beta": 0.3})])[0]["params"]
    {'beta': 0.3}
    """
    return [
        {
            "loss": t.loss,
            "weight": t.weight,
            "temperature": t.temperature,
            "params": dict(t.params),
            "layers": None if t.layers is None else [list(pair) for pair in t.layers],
            "heads": t.heads,
        }
        for t in terms
    ]


def train_config(recipe: Recipe, adapter: str) -> TrainConfig:
    """The recipe's training settings for a student with ``adapter``: an adapter (LoRA,
    PiSSA) trains at ``student.lora.lr`` when that is set."""
    lr = recipe.student.lora.lr
    if adapter == "full" or lr is None:
        return recipe.train
    return recipe.train.model_copy(update={"lr": lr})


def train_student(
    ctx: RunContext,
    *,
    name: str,
    folder: Path,
    terms: list[LossTerm],
    inputs: Mapping[str, Any],
    build: Callable[[], Trainee],
    save: Callable[[Trainee], Mapping[str, Any] | None],
    cfg: TrainConfig,
    device: torch.device | str,
    autocast_dtype: torch.dtype | None = None,
) -> dict[str, Any]:
    """Train the student ``name`` into ``folder`` and return its stage marker.

    The marker's fingerprint covers ``terms`` (with their parameters), ``cfg``'s
    identity (the settings that decide the weights) and the caller's ``inputs`` (the
    student, the data, the teacher's signal, ...). A student that finished with the same
    fingerprint is not trained again; a checkpoint left by other inputs is discarded, so
    a changed input always trains from the start. ``build`` runs after the RNG is seeded
    with ``cfg.seed`` (a head's or adapter's initialisation does not depend on what ran
    before); ``save`` writes ``folder`` on rank 0 and returns what the marker adds to
    ``seconds``, ``steps`` and ``trainable_params``.
    """
    run_dir = ctx.run_dir
    if ctx.recipe.task.kind != "lm":  # the lm flow fits train.steps before teaching
        steps = student_steps(ctx, lambda: _step_seconds(ctx, build, cfg, device, autocast_dtype))
        cfg = cfg.model_copy(update={"steps": steps})
    print_ = fingerprint(name, loss_identity(terms), cfg.identity(), dict(inputs))
    checkpoints = run_dir / "checkpoints" / name
    owner = run_dir / "checkpoints" / f"{name}.fingerprint"

    def claim() -> dict[str, Any] | None:  # rank 0 decides and tidies; the others follow
        done = finished(run_dir, name, print_)
        if done is not None and (folder / "config.json").is_file():
            return done
        forget(run_dir, name)
        if checkpoints.exists() and (not owner.is_file() or owner.read_text() != print_):
            log(f"{name}: its checkpoint was made from other inputs; starting again")
            shutil.rmtree(checkpoints)
        return None

    done = on_main(claim)
    if done is not None:
        log(f"{name}: already trained, skipping ({folder})")
        return done
    torch.manual_seed(cfg.seed)
    trainee = build()

    def own() -> None:  # the checkpoints about to be written are this fingerprint's
        owner.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(owner, print_)

    on_main(own)
    try:
        result = train(
            trainee.model,
            trainee.data,
            trainee.task,
            cfg,
            teacher=trainee.teacher,
            name=name,
            checkpoint_dir=checkpoints,
            metrics_path=run_dir / "metrics.jsonl",
            resume=True,
            extra=trainee.extra,
            device=device,
            autocast_dtype=autocast_dtype,
            evaluate=trainee.evaluate,
        )
    except PotstillError:  # refused before a first checkpoint: leave no owner behind
        if not checkpoints.exists():
            owner.unlink(missing_ok=True)
        raise

    def finish() -> dict[str, Any]:  # every process holds the same weights: rank 0 writes
        trained = trainable_params(trainee.model)  # before `save` may convert the model
        info = save(trainee) or {}
        marker = mark_finished(
            run_dir,
            name,
            print_,
            seconds=result.seconds,
            steps=result.steps,
            trainable_params=trained,
            **info,
        )
        # Finished: a checkpoint left here would be "resumed" by a later change of inputs.
        shutil.rmtree(checkpoints, ignore_errors=True)
        owner.unlink(missing_ok=True)
        return marker

    return on_main(finish)


PROBE_STEPS = 3  # the first warms up; the fastest of the others is the step's time


def _step_seconds(
    ctx: RunContext,
    build: Callable[[], Trainee],
    cfg: TrainConfig,
    device: torch.device | str,
    autocast_dtype: torch.dtype | None,
) -> float:
    """Seconds of one training step of the student ``build`` makes: `PROBE_STEPS`
    throwaway steps through the real loop (its teacher, its loss, its batches), in a
    folder removed after; the model is thrown away (the stage builds it again)."""
    torch.manual_seed(cfg.seed)
    trainee = build()
    folder = ctx.run_dir / "checkpoints" / ".step-probe"
    on_main(lambda: shutil.rmtree(folder, ignore_errors=True))
    quick = cfg.model_copy(
        update={
            "steps": PROBE_STEPS,
            "warmup": 0,
            "eval_every": None,
            "rollbacks": 0,
            "checkpoint_every": PROBE_STEPS,
            "log_every": 1,
        }
    )
    try:
        train(
            trainee.model,
            trainee.data,
            trainee.task,
            quick,
            teacher=trainee.teacher,
            name="step-probe",
            checkpoint_dir=folder / "checkpoint",
            metrics_path=folder / "metrics.jsonl",
            extra=trainee.extra,
            device=device,
            autocast_dtype=autocast_dtype,
        )

        def fastest() -> float:
            elapsed = [row["elapsed"] for row in read_metrics(folder / "metrics.jsonl")]
            return min(b - a for a, b in itertools.pairwise(elapsed))

        return on_main(fastest)
    finally:
        on_main(lambda: shutil.rmtree(folder, ignore_errors=True))
