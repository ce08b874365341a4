"""One readable training loop for the distilled student and the no-KD baseline.

AdamW, linear warm-up + cosine decay, gradient accumulation normalised by the global count
of valid tokens (so accumulation is exact), clipping, seeds, checkpoints every
``checkpoint_every`` steps and resume from the last one.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from potstill.config import LossTerm, TrainConfig
from potstill.data import Blocks
from potstill.util.io import atomic_write_text
from potstill.util.log import bar
from potstill.train.checkpoint import TrainState, load_checkpoint, save_checkpoint
from potstill.train.schedule import warmup_cosine
from potstill.train.student_step import find_fused_head, student_loss
from potstill.train.teacher import TeacherSource


@dataclass
class TrainResult:
    steps: int
    tokens: int
    seconds: float
    final_loss: float


def train(
    model: torch.nn.Module,
    blocks: Blocks,
    terms: Sequence[LossTerm],
    cfg: TrainConfig,
    *,
    teacher: TeacherSource | None,
    name: str,
    checkpoint_dir: Path,
    metrics_path: Path,
    resume: bool = False,
) -> TrainResult:
    """Train ``model`` in place on ``blocks`` with the weighted loss ``terms``.

    ``teacher`` (a `LiveTeacher` or a `TeacherCache`) gives the teacher's signal when a
    term needs it. Metrics rows are appended to ``metrics_path`` tagged with ``name``
    ("student", "baseline", …).
    """
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    if cfg.freeze_embeddings:
        model.get_input_embeddings().weight.requires_grad_(False)
    optimizer = _adamw(model, cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: warmup_cosine(s, warmup=cfg.warmup, total=cfg.steps, min_ratio=cfg.min_lr_ratio),
    )
    state = TrainState(step=0, tokens=0, elapsed=0.0)
    if resume and (checkpoint_dir / "state.json").is_file():
        state = load_checkpoint(checkpoint_dir, model, optimizer, scheduler)
    _truncate_metrics(metrics_path, name, after_step=state.step)

    needs_teacher = any(t.loss != "cross_entropy" for t in terms)
    if needs_teacher and teacher is None:
        raise ValueError("a distillation loss term needs a teacher")
    fused = find_fused_head(model, blocks.input_ids[:1])
    model.train()
    loss_value = float("nan")
    with bar(f"{name:>8}", total=cfg.steps, completed=state.step) as progress:
        while state.step < cfg.steps:
            started = time.perf_counter()
            micro = [
                _batch(blocks, cfg, state.step * cfg.grad_accum + i) for i in range(cfg.grad_accum)
            ]
            # Normalise by the step's global valid-token count: every micro-batch's loss is a
            # sum over its tokens divided by the same number, so accumulation is exact.
            num_tokens = sum(int((labels[:, 1:] != -100).sum()) for _, _, labels in micro)
            total = torch.zeros(())
            parts_sum: dict[str, float] = {}
            for index, input_ids, labels in micro:
                signal = teacher.signal(input_ids, index) if needs_teacher else None
                loss, parts = student_loss(
                    model,
                    fused,
                    input_ids,
                    labels,
                    signal,
                    terms,
                    num_tokens=max(num_tokens, 1),
                    chunk_tokens=cfg.chunk_tokens,
                )
                loss.backward()
                total += loss.detach()
                # Parts are already divided by the step's count, so they simply add up.
                for key, value in parts.items():
                    parts_sum[key] = parts_sum.get(key, 0.0) + float(value)
            grad_norm = _clip(model, cfg.clip)
            optimizer.step()
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
                save_checkpoint(checkpoint_dir, model, optimizer, scheduler, state)
            progress.advance(
                1, loss=f"loss {loss_value:.3f}", rate=f"{tokens_per_second:,.0f} tok/s"
            )
    model.eval()
    return TrainResult(state.step, state.tokens, state.elapsed, loss_value)


def _adamw(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    # Decay matrices only; norms and biases keep their scale (the usual GPT recipe).
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.95), eps=1e-8)


def _batch(
    blocks: Blocks, cfg: TrainConfig, micro_index: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The ``micro_index``-th micro-batch ``(block indices, input_ids, labels)``."""
    index = torch.tensor(_block_indices(len(blocks), cfg, micro_index))
    return index, blocks.input_ids[index], blocks.labels[index]


def _block_indices(n: int, cfg: TrainConfig, micro_index: int) -> list[int]:
    """The blocks of the ``micro_index``-th micro-batch: a deterministic function of the
    position alone, so a resumed run sees exactly the batches an uninterrupted one would
    have (and ``teach`` knows in advance which blocks training will visit)."""
    start = micro_index * cfg.batch_size
    positions = [divmod(p, n) for p in range(start, start + cfg.batch_size)]
    return [int(_epoch_order(n, cfg.seed, epoch)[i]) for epoch, i in positions]


def scheduled_blocks(n: int, cfg: TrainConfig) -> list[int]:
    """Every block ``cfg.steps`` training steps visit, in order of first visit.

    >>> from potstill.config import TrainConfig
    >>> sorted(scheduled_blocks(5, TrainConfig(steps=3, batch_size=2)))  # 6 visits, 5 blocks
    [0, 1, 2, 3, 4]
    >>> len(scheduled_blocks(100, TrainConfig(steps=3, batch_size=2)))
    6
    """
    micro_batches = cfg.steps * cfg.grad_accum
    if micro_batches * cfg.batch_size >= n:  # epoch 0 visits every block, in its order
        return [int(i) for i in _epoch_order(n, cfg.seed, 0)]
    visits = (b for m in range(micro_batches) for b in _block_indices(n, cfg, m))
    return list(dict.fromkeys(visits))


@functools.lru_cache(maxsize=4)
def _epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=generator)


def _clip(model: torch.nn.Module, clip: float | None) -> float:
    params = [p for p in model.parameters() if p.grad is not None]
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
