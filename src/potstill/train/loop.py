"""One readable training loop for any task: the distilled student and the no-KD baseline.

AdamW, linear warm-up + cosine decay, gradient accumulation normalised by the global count
of valid tokens (so accumulation is exact), clipping, updates skipped on gradient spikes
(`potstill.train.spikes`), seeds, checkpoints every
``checkpoint_every`` steps and resume from the last one. The task (`potstill.tasks`)
supplies the loss of a micro-batch; the teacher source supplies the teacher's outputs;
``extra`` modules (projections for feature losses) train beside the student and are
checkpointed with it, but never saved with it. An optional ``evaluate`` (the held-out loss)
is logged every ``eval_every`` steps without touching the weights or the RNG.

Under ``torchrun`` / ``accelerate launch`` the same loop is data parallel, DDP or FSDP
(``train.parallel``, `potstill.train.parallel`): each micro-batch of ``batch_size``
examples is split across the processes (rank ``r`` takes every ``size``-th example from
``r``), the valid-token count is summed over all of them and gradients are summed (not
averaged), so a step of N processes computes the same gradient as one process at the same
global batch. Rank 0 alone writes metrics and checkpoints; a checkpoint holds full tensors
and resumes in either mode on any number of processes that divides the batch.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from potstill.data.order import block_indices
from potstill.signals import TeacherOutputs
from potstill.teachers import TeacherSource
from potstill.train.checkpoint import TrainState, load_checkpoint, save_checkpoint
from potstill.train.curriculum import curriculum_order
from potstill.train.parallel import Objective, Spread, spread
from potstill.train.protocols import Dataset, Task
from potstill.train.rollback import LR_FACTOR, GoodPoint, apply_lr, rose
from potstill.train.schedule import warmup_cosine
from potstill.train.settings import TrainConfig
from potstill.train.spikes import early_norm, is_spike, remember
from potstill.util.distributed import (
    all_sum,
    all_sum_dict,
    barrier,
    current_world,
    launched_world,
    my_share,
    on_main,
)
from potstill.util.errors import PotstillError
from potstill.util.io import atomic_write_text, settle_dir
from potstill.util.log import bar, log


@dataclass
class TrainResult:
    steps: int
    tokens: int
    seconds: float
    final_loss: float


def train(
    model: nn.Module,
    data: Dataset,
    task: Task,
    cfg: TrainConfig,
    *,
    teacher: TeacherSource | None,
    name: str,
    checkpoint_dir: Path,
    metrics_path: Path,
    resume: bool = False,
    extra: nn.ModuleDict | None = None,
    device: torch.device | str = "cpu",
    autocast_dtype: torch.dtype | None = None,
    until: int | None = None,
    evaluate: Callable[[nn.Module], float] | None = None,
) -> TrainResult:
    """Train ``model`` in place on ``data`` with ``task``'s loss.

    ``teacher`` (a `LiveTeacher` or a `TeacherCache`) gives the teacher's outputs when
    the task's terms ask for them. Metrics rows are appended to ``metrics_path`` tagged
    with ``name`` ("student", "baseline", …). ``device`` is where the model already is
    (under FSDP the model may stay on the host: its shards go to ``device``); batches and
    teacher outputs are moved there. ``autocast_dtype`` runs forward passes
    under ``torch.autocast`` (bf16/fp16 on a GPU). ``until`` stops after that step with a
    checkpoint there (as a preempted job would); training again with ``resume`` goes on.
    ``evaluate`` (the held-out loss of the model handed to it) runs every
    ``cfg.eval_every`` steps and at the last, in every process, and goes into that step's
    metrics row as ``heldout_loss``; it leaves the weights and every RNG as they were.
    """
    processes = launched_world().size
    if cfg.batch_size % processes:
        raise PotstillError(
            f"train.batch_size {cfg.batch_size} does not split over {processes} processes: "
            f"make it a multiple of {processes} (each process takes an equal share)"
        )
    if cfg.parallel == "fsdp" and autocast_dtype == torch.float16:
        raise PotstillError(
            "train.parallel fsdp does not scale fp16 losses; use train.precision bf16 or fp32"
        )
    if cfg.parallel == "fsdp" and processes > 1 and getattr(data, "model", None) is model:
        # FSDP trains a sharded twin; the caller's model is only brought up to date at
        # checkpoints, so data sampled from it (on-policy) would come from stale weights.
        raise PotstillError(
            "on-policy data samples from the student as it trains, which FSDP holds only in "
            "shards: use train.parallel ddp"
        )
    world = current_world()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    if cfg.freeze_embeddings:
        model.get_input_embeddings().weight.requires_grad_(False)
    modules = nn.ModuleDict({"student": model, **(dict(extra) if extra else {})})
    request = task.request
    if not request.empty and teacher is None:
        raise ValueError("a distillation loss term needs a teacher")
    home = next(model.parameters()).device  # `device`, or the host under FSDP
    task.prepare(model, data.batch(torch.tensor([0])).to(home))
    if cfg.gradient_checkpointing:
        checkpoint_blocks(model)
    # One process, DDP or FSDP: `trained` holds the parameters the optimizer updates (under
    # FSDP a sharded twin of `modules`, gathered back into them for checkpoints and at the end).
    parallel = spread(Objective(modules, task), world, device, cfg.parallel)
    optimizer = _adamw(parallel.trained, cfg)
    state = TrainState(step=0, tokens=0, elapsed=0.0)
    # `state` is read when the multiplier is asked for: a rollback rebinds it and lowers
    # its lr_scale.
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: (
            state.lr_scale
            * warmup_cosine(s, warmup=cfg.warmup, total=cfg.steps, min_ratio=cfg.min_lr_ratio)
        ),
    )
    on_main(lambda: settle_dir(checkpoint_dir))  # a save killed between its two renames
    if resume and (checkpoint_dir / "state.json").is_file():
        state, saved = load_checkpoint(checkpoint_dir, model, scheduler, extra=extra)
        parallel.scatter()
        parallel.load_optimizer_state(optimizer, saved)
    on_main(lambda: _truncate_metrics(metrics_path, name, after_step=state.step))
    sharded = cfg.parallel == "fsdp" and world.size > 1
    good = _good_point(cfg, checkpoint_dir, parallel, optimizer, scheduler, state)
    schedule = curriculum_order(
        len(data),
        micro_batches=cfg.steps * cfg.grad_accum,
        batch_size=cfg.batch_size,
        seed=cfg.seed,
        curriculum=cfg.curriculum,
        difficulty=getattr(teacher, "block_entropy", None),
    )
    objective = parallel.objective
    autocast = (
        torch.autocast(torch.device(device).type, dtype=autocast_dtype)
        if autocast_dtype is not None
        else nullcontext()
    )
    # fp16 needs loss scaling against gradient underflow; bf16 and fp32 do not.
    scaler = torch.amp.GradScaler(enabled=autocast_dtype == torch.float16)
    modules.train()
    parallel.trained.train()
    loss_value = float("nan")
    stop = cfg.steps if until is None else min(until, cfg.steps)
    with bar(f"{name:>8}", total=cfg.steps, completed=state.step) as progress:
        while state.step < stop:
            started = time.perf_counter()
            # The step's micro-batches: past any a rollback passed over (`data_skip`). The
            # schedule starts again from its beginning when that runs it out, so a run only
            # ever visits the blocks its schedule plans (all a `teach.blocks: schedule`
            # cache holds).
            first = (state.step + state.data_skip) * cfg.grad_accum
            planned = cfg.steps * cfg.grad_accum
            micro = [
                data.batch(
                    my_share(
                        _micro_index(len(data), cfg, (first + i) % planned)
                        if schedule is None
                        else torch.tensor(schedule[(first + i) % planned]),
                        world,
                    )
                )
                for i in range(cfg.grad_accum)
            ]
            # Normalise by the step's global valid-token count (over every process): each
            # micro-batch's loss is a sum over its tokens divided by the same number, so
            # accumulation, and the sum of the processes' gradients, is exact.
            num_tokens = int(all_sum(float(sum(task.count(batch) for batch in micro))))
            total = torch.zeros((), device=device)
            parts_sum: dict[str, float] = {}
            for i, batch in enumerate(micro):
                outputs = None if request.empty else teacher.outputs(batch, request)
                # Gradients are summed across processes once per step, on the last micro-batch.
                with parallel.no_sync(last=i == len(micro) - 1):
                    with autocast:
                        loss, parts = objective(
                            batch.to(device), _to(outputs, device), max(num_tokens, 1)
                        )
                    scaler.scale(loss).backward()
                total += loss.detach()
                # Parts are already divided by the step's count, so they simply add up.
                for key, value in parts.items():
                    parts_sum[key] = parts_sum.get(key, 0.0) + float(value)
            parts_sum = all_sum_dict(parts_sum)
            scaler.unscale_(optimizer)
            grad_norm = _clip(parallel.trained, cfg.clip)
            # Every process sees the same summed gradients, so they all decide alike.
            skip = is_spike(grad_norm, state.grad_norms, cfg.spike_skip, state.early_norm)
            state.grad_norms = remember(state.grad_norms, grad_norm)
            if state.early_norm is None:
                state.early_norm = early_norm(state.grad_norms)
            if skip:
                state.skipped += 1
            else:
                scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)

            seconds = time.perf_counter() - started
            state.step += 1
            state.tokens += num_tokens
            state.elapsed += seconds
            loss_value = all_sum(float(total))
            if not skip:
                state.window.append(loss_value)
            tokens_per_second = num_tokens / seconds
            heldout = None
            check = _eval_due(state.step, cfg)
            if evaluate is not None and check:
                heldout = _held_out(parallel, evaluate, device)
                modules.train()
                parallel.trained.train()
            logged = state.step % cfg.log_every == 0 or state.step == cfg.steps
            if world.main and (logged or heldout is not None):
                _append_metrics(
                    metrics_path,
                    {
                        "model": name,
                        "step": state.step,
                        "loss": loss_value,
                        **parts_sum,
                        "lr": scheduler.get_last_lr()[0],
                        "grad_norm": grad_norm,
                        **({"skipped": True} if skip else {}),
                        **({"heldout_loss": heldout} if heldout is not None else {}),
                        "tokens": state.tokens,
                        "tokens_per_second": tokens_per_second,
                        "elapsed": state.elapsed,
                    },
                )
            if good is not None and check:
                value = heldout if heldout is not None else _mean(state.window)
                best = math.inf if state.best is None else state.best
                if value is not None and rose(value, best):
                    if state.rollbacks < cfg.rollbacks:
                        went_from = state.step
                        state = _roll_back(good, parallel, optimizer, scheduler, state)
                        apply_lr(optimizer, scheduler)  # the multiplier reads the new state
                        event = {
                            "model": name,
                            "step": state.step,
                            "event": "rollback",
                            "from_step": went_from,
                            "checked": "heldout_loss" if heldout is not None else "loss",
                            "value": value,
                            "best": state.best,
                            "lr_scale": state.lr_scale,
                            "skipped_batches": went_from - state.step,
                        }
                        if world.main:
                            _record_rollback(metrics_path, name, event)
                        log(
                            f"{name}: {event['checked']} {value:.3f} at step {went_from} rose "
                            f"above its best {state.best:.3f}: back to step {state.step} at "
                            f"lr x{state.lr_scale:g}"
                        )
                        progress.advance(state.step - went_from)
                        continue
                    state.window = []
                elif value is not None:
                    state.best = min(best, value)
                    state.good_step, state.window = state.step, []
                    good = GoodPoint.take(parallel.trained, optimizer, scheduler, state)
            if state.step % cfg.checkpoint_every == 0 or state.step in (cfg.steps, stop):
                parallel.gather()  # every process takes part; rank 0 writes
                saved = parallel.optimizer_state(optimizer)
                # Between checks, the good point goes with the checkpoint (module docstring
                # of `potstill.train.rollback`); shards under FSDP do not.
                keep = good if good is not None and state.good_step != state.step else None
                if world.main:
                    save_checkpoint(
                        checkpoint_dir,
                        model,
                        saved,
                        scheduler,
                        state,
                        extra=extra,
                        also=None if keep is None or sharded else keep.save,
                    )
                barrier()  # no process reads a checkpoint rank 0 is still writing
            progress.advance(
                1, loss=f"loss {loss_value:.3f}", rate=f"{tokens_per_second:,.0f} {task.unit}/s"
            )
    parallel.gather()
    modules.eval()
    return TrainResult(state.step, state.tokens, state.elapsed, loss_value)


def _good_point(
    cfg: TrainConfig,
    checkpoint_dir: Path,
    parallel: Spread,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LambdaLR,
    state: TrainState,
) -> GoodPoint | None:
    """Where a rollback goes back to, as training starts: the state now (a fresh start, or
    a checkpoint taken at a check), or the good point a checkpoint between checks kept.
    None when rollbacks are off (nothing is copied)."""
    if not cfg.rollbacks or cfg.eval_every is None:
        return None
    if state.step != state.good_step and GoodPoint.kept_in(checkpoint_dir):
        return GoodPoint.load(checkpoint_dir)
    state.good_step = state.step  # FSDP kept no copy: the checkpoint is the good point
    return GoodPoint.take(parallel.trained, optimizer, scheduler, state)


def _roll_back(
    good: GoodPoint,
    parallel: Spread,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LambdaLR,
    state: TrainState,
) -> TrainState:
    """Back to ``good``, one more rollback counted, the rate scaled down for good, and the
    batches of the abandoned steps passed over: the steps from the good point on train on
    the data after them."""
    back = good.restore(parallel.trained, optimizer, scheduler)
    back.rollbacks = state.rollbacks + 1
    back.lr_scale = state.lr_scale * LR_FACTOR
    back.data_skip = state.data_skip + state.step - back.step
    return back


def _record_rollback(metrics_path: Path, name: str, event: dict) -> None:
    """Drop the abandoned steps' rows and log the rollback in their place."""
    _truncate_metrics(metrics_path, name, after_step=event["step"])
    _append_metrics(metrics_path, event)


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _eval_due(step: int, cfg: TrainConfig) -> bool:
    return cfg.eval_every is not None and (step % cfg.eval_every == 0 or step == cfg.steps)


def _held_out(
    parallel: Spread, evaluate: Callable[[nn.Module], float], device: torch.device | str
) -> float:
    """``evaluate`` on the student as it is now, with no gradients and every RNG put back
    (a forked generator), so the weights trained are the same with or without it."""
    where = torch.device(device)
    devices = []
    if where.type == "cuda":
        devices = [where.index if where.index is not None else torch.cuda.current_device()]
    with torch.random.fork_rng(devices=devices), torch.no_grad():
        return float(parallel.call(evaluate))


def checkpoint_blocks(model: nn.Module) -> None:
    """Have ``model`` recompute its blocks' activations in the backward pass (transformers'
    gradient checkpointing, non-reentrant, so frozen inputs and adapters work too)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # PEFT
    enable = getattr(base, "gradient_checkpointing_enable", None)
    if enable is None or not getattr(base, "supports_gradient_checkpointing", False):
        raise PotstillError(
            f"train.gradient_checkpointing: {type(base).__name__} cannot recompute its "
            "blocks (a transformers model that supports it can); set it to false"
        )
    enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def _adamw(modules: nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    # Decay matrices only; norms and biases keep their scale (the usual GPT recipe). The
    # input embedding (tied or not) gets its own group at lr × embedding_lr_scale.
    student = modules["student"]
    embedding = student.get_input_embeddings() if hasattr(student, "get_input_embeddings") else None
    special = (
        {id(embedding.weight)} if embedding is not None and cfg.embedding_lr_scale != 1 else set()
    )
    params = [p for p in modules.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2 and id(p) not in special]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    scaled = [p for p in params if id(p) in special]
    if scaled:
        groups.append(
            {
                "params": scaled,
                "weight_decay": cfg.weight_decay,
                "lr": cfg.lr * cfg.embedding_lr_scale,
            }
        )
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.95), eps=cfg.adam_eps)


def _micro_index(n: int, cfg: TrainConfig, micro_index: int) -> torch.Tensor:
    """The examples of the ``micro_index``-th micro-batch (`potstill.data.order`)."""
    return torch.tensor(
        block_indices(n, batch_size=cfg.batch_size, seed=cfg.seed, micro_index=micro_index)
    )


def _to(outputs: TeacherOutputs | None, device: torch.device | str) -> TeacherOutputs | None:
    """The teacher's outputs on ``device`` (a cache decodes on the CPU)."""
    if outputs is None:
        return None
    signal = outputs.distributions
    if signal is not None:
        signal = type(signal)(
            *(
                value.to(device) if isinstance(value, torch.Tensor) else value
                for value in vars(signal).values()
            )
        )
    return TeacherOutputs(
        signal,
        {k: v.to(device) for k, v in outputs.hidden_states.items()},
        {k: v.to(device) for k, v in outputs.attentions.items()},
    )


def _clip(modules: nn.Module, clip: float | None) -> float:
    """Clip the gradients' global norm to ``clip``; returns the norm before clipping. Under
    FSDP the gradients are shards (DTensors): their norm is reduced over the processes."""
    from torch.distributed.tensor import DTensor

    params = [p for p in modules.parameters() if p.grad is not None]
    if not params:
        return 0.0
    norm = torch.nn.utils.get_total_norm([p.grad for p in params])
    if isinstance(norm, DTensor):
        norm = norm.full_tensor()
    if clip is not None:
        torch.nn.utils.clip_grads_with_norm_(params, clip, norm)
    return float(norm)


def _append_metrics(path: Path, row: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")


def read_metrics(path: Path) -> list[dict]:
    """The rows of a ``metrics.jsonl`` (none if it is missing). Rows are appended one line
    at a time, so a process killed mid-append can leave a torn last line: it is skipped
    (the step it described is redone on resume); a bad line before the last is an error."""
    return _parse_metrics(path, _metric_lines(path))


def _metric_lines(path: Path) -> list[str]:
    if not path.is_file():
        return []
    return [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _parse_metrics(path: Path, lines: list[str]) -> list[dict]:
    rows = []
    for number, line in enumerate(lines, 1):
        try:
            rows.append(json.loads(line))
        except ValueError:
            if number == len(lines):
                break
            raise PotstillError(
                f"{path}:{number} is not valid JSON; delete the line (or the file) and rerun"
            ) from None
    return rows


def _truncate_metrics(path: Path, name: str, *, after_step: int) -> None:
    """Drop this run's rows past the checkpoint we resume from (they will be redone), and
    a torn last line."""
    lines = _metric_lines(path)
    kept = [
        r for r in _parse_metrics(path, lines) if r.get("model") != name or r["step"] <= after_step
    ]
    if len(kept) != len(lines):
        atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in kept))
