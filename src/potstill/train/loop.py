"""One readable training loop for any task: the distilled student and the no-KD baseline.

AdamW, linear warm-up + cosine decay, gradient accumulation normalised by the global count
of valid tokens (so accumulation is exact), clipping, seeds, checkpoints every
``checkpoint_every`` steps and resume from the last one. The task (`potstill.tasks`)
supplies the loss of a micro-batch; the teacher source supplies the teacher's outputs;
``extra`` modules (projections for feature losses) train beside the student and are
checkpointed with it, but never saved with it.
"""

from __future__ import annotations

import json
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
from torch import nn

from potstill.data.order import block_indices
from potstill.signals import SignalRequest, TeacherOutputs
from potstill.teachers import TeacherSource
from potstill.train.checkpoint import TrainState, load_checkpoint, save_checkpoint
from potstill.train.curriculum import curriculum_order
from potstill.train.schedule import warmup_cosine
from potstill.train.settings import TrainConfig
from potstill.util.io import atomic_write_text
from potstill.util.log import bar


class MicroBatch(Protocol):
    """What a dataset hands the loop: a `Batch` (token blocks) or a task's own type
    (`potstill.data.examples.ClassBatch`); the loop only moves it and keys teachers by
    ``index``."""

    @property
    def index(self) -> torch.Tensor: ...

    def to(self, device: torch.device | str) -> MicroBatch: ...


class Dataset(Protocol):
    """What the loop draws micro-batches from (packed blocks, labelled examples, …)."""

    def __len__(self) -> int: ...

    def batch(self, index: torch.Tensor) -> MicroBatch: ...


class Task(Protocol):
    """What the loop asks of a task (see `potstill.tasks.causal_lm.CausalLM`).

    ``unit`` names what ``count`` counts (``tok`` for tokens, ``ex`` for examples).
    """

    unit: str

    @property
    def request(self) -> SignalRequest: ...

    def count(self, batch: MicroBatch) -> int: ...

    def prepare(self, model: nn.Module, sample: MicroBatch) -> None: ...

    def loss(
        self,
        model: nn.Module,
        batch: MicroBatch,
        teacher: TeacherOutputs | None,
        *,
        num_tokens: int,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]: ...


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
) -> TrainResult:
    """Train ``model`` in place on ``data`` with ``task``'s loss.

    ``teacher`` (a `LiveTeacher` or a `TeacherCache`) gives the teacher's outputs when
    the task's terms ask for them. Metrics rows are appended to ``metrics_path`` tagged
    with ``name`` ("student", "baseline", …). ``device`` is where the model already is;
    batches and teacher outputs are moved there. ``autocast_dtype`` runs forward passes
    under ``torch.autocast`` (bf16/fp16 on a GPU).
    """
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    if cfg.freeze_embeddings:
        model.get_input_embeddings().weight.requires_grad_(False)
    modules = nn.ModuleDict({"student": model, **(dict(extra) if extra else {})})
    optimizer = _adamw(modules, cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: warmup_cosine(s, warmup=cfg.warmup, total=cfg.steps, min_ratio=cfg.min_lr_ratio),
    )
    state = TrainState(step=0, tokens=0, elapsed=0.0)
    if resume and (checkpoint_dir / "state.json").is_file():
        state = load_checkpoint(checkpoint_dir, model, optimizer, scheduler, extra=extra)
    _truncate_metrics(metrics_path, name, after_step=state.step)
    schedule = curriculum_order(
        len(data),
        micro_batches=cfg.steps * cfg.grad_accum,
        batch_size=cfg.batch_size,
        seed=cfg.seed,
        curriculum=cfg.curriculum,
        difficulty=getattr(teacher, "block_entropy", None),
    )

    request = task.request
    if not request.empty and teacher is None:
        raise ValueError("a distillation loss term needs a teacher")
    task.prepare(model, data.batch(torch.tensor([0])).to(device))
    autocast = (
        torch.autocast(torch.device(device).type, dtype=autocast_dtype)
        if autocast_dtype is not None
        else nullcontext()
    )
    # fp16 needs loss scaling against gradient underflow; bf16 and fp32 do not.
    scaler = torch.amp.GradScaler(enabled=autocast_dtype == torch.float16)
    modules.train()
    loss_value = float("nan")
    with bar(f"{name:>8}", total=cfg.steps, completed=state.step) as progress:
        while state.step < cfg.steps:
            started = time.perf_counter()
            micro = [
                data.batch(
                    _micro_index(len(data), cfg, state.step * cfg.grad_accum + i)
                    if schedule is None
                    else torch.tensor(schedule[state.step * cfg.grad_accum + i])
                )
                for i in range(cfg.grad_accum)
            ]
            # Normalise by the step's global valid-token count: every micro-batch's loss is a
            # sum over its tokens divided by the same number, so accumulation is exact.
            num_tokens = sum(task.count(batch) for batch in micro)
            total = torch.zeros((), device=device)
            parts_sum: dict[str, float] = {}
            for batch in micro:
                outputs = None if request.empty else teacher.outputs(batch, request)
                with autocast:
                    loss, parts = task.loss(
                        model,
                        batch.to(device),
                        _to(outputs, device),
                        num_tokens=max(num_tokens, 1),
                    )
                scaler.scale(loss).backward()
                total += loss.detach()
                # Parts are already divided by the step's count, so they simply add up.
                for key, value in parts.items():
                    parts_sum[key] = parts_sum.get(key, 0.0) + float(value)
            scaler.unscale_(optimizer)
            grad_norm = _clip(modules, cfg.clip)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)

            seconds = time.perf_counter() - started
            state.step += 1
            state.tokens += num_tokens
            state.elapsed += seconds
            loss_value = float(total)
            tokens_per_second = num_tokens / seconds
            if state.step % cfg.log_every == 0 or state.step == cfg.steps:
                _append_metrics(
                    metrics_path,
                    {
                        "model": name,
                        "step": state.step,
                        "loss": loss_value,
                        **parts_sum,
                        "lr": scheduler.get_last_lr()[0],
                        "grad_norm": grad_norm,
                        "tokens": state.tokens,
                        "tokens_per_second": tokens_per_second,
                        "elapsed": state.elapsed,
                    },
                )
            if state.step % cfg.checkpoint_every == 0 or state.step == cfg.steps:
                save_checkpoint(checkpoint_dir, model, optimizer, scheduler, state, extra=extra)
            progress.advance(
                1, loss=f"loss {loss_value:.3f}", rate=f"{tokens_per_second:,.0f} {task.unit}/s"
            )
    modules.eval()
    return TrainResult(state.step, state.tokens, state.elapsed, loss_value)


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
    params = [p for p in modules.parameters() if p.grad is not None]
    if not params:
        return 0.0
    max_norm = clip if clip is not None else float("inf")
    return float(torch.nn.utils.clip_grad_norm_(params, max_norm))


def _append_metrics(path: Path, row: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")


def _truncate_metrics(path: Path, name: str, *, after_step: int) -> None:
    """Drop this run's rows past the checkpoint we resume from (they will be redone)."""
    if not path.is_file():
        return
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    kept = [r for r in rows if r.get("model") != name or r["step"] <= after_step]
    if len(kept) != len(rows):
        atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in kept))
