"""The recipe's `train` section: optimizer, schedule, batches, checkpoints."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from potstill.util.schema import Strict


class TrainConfig(Strict):
    # The settings measured best on the default run (bench/results/stability.md,
    # bench/results/defaults.md): lr 2e-3 with AdamW eps 1e-6.
    steps: int = Field(130, ge=1)
    batch_size: int = Field(4, ge=1)
    grad_accum: int = Field(1, ge=1)
    # 2e-3: the distilled student gains from the larger step (seed 0: 103.6 / 94.8 / 93.4
    # perplexity at 1e-3 / 2e-3 / 3e-3) where the baseline does not; a run that breaks
    # is caught by `spike_skip` and by the report's health check.
    lr: float = Field(2.0e-3, gt=0.0)
    min_lr_ratio: float = Field(0.1, ge=0.0, le=1.0)
    weight_decay: float = Field(0.0, ge=0.0)
    warmup: int = Field(10, ge=0)
    clip: float | None = Field(1.0, gt=0.0)
    # Skip an update whose gradient norm (before clipping) is over this many times the
    # median of the last 32 steps', or not finite; the step counts, its change does not
    # (`potstill.train.spikes`). null: never skip a finite one.
    spike_skip: float | None = Field(10.0, gt=1.0)
    # A run whose check (every eval_every steps: the held-out loss where the flow has one,
    # else the mean training loss since the last check) rose 0.3 nats and 5% above its
    # best goes back to its last good check and trains on at half the lr, up to this many
    # times (`potstill.train.rollback`); 0: never. Every model of a run gets the same.
    rollbacks: int = Field(3, ge=0)
    seed: int = 0
    freeze_embeddings: bool = False
    # The input embedding's learning rate as a multiple of lr (with tied embeddings, the
    # output layer's too). Adam moves a rarely seen token's row by about lr whenever it
    # appears, whatever its gradient; a smaller multiple keeps the big tied vocabulary
    # from destabilising a small-batch run (bench/results/defaults.md).
    embedding_lr_scale: float = Field(1.0, ge=0.0)
    # AdamW's epsilon: an update is m / (sqrt(v) + eps), so a parameter whose gradients
    # are far below eps barely moves instead of moving by about lr on noise. 1e-6: the tied
    # 49k embedding's gradients sit near 1e-7, and at 1e-8 the cross-entropy baseline's rows
    # drifted by about lr a step and its result depended on the seed (143 to 175
    # perplexity; bench/results/stability.md).
    adam_eps: float = Field(1.0e-6, gt=0.0)
    # Visit the scheduled blocks easy → hard (or hard → easy) by the teacher's entropy,
    # read from the cache (`potstill.train.curriculum`); none = the random order.
    curriculum: Literal["none", "easy_first", "hard_first"] = "none"
    log_every: int = Field(1, ge=1)
    # The language-model flow's held-out loss (`heldout_loss` in metrics.jsonl): every
    # eval_every steps and at the last, on the first eval_blocks held-out blocks. It
    # changes no weight, but it is what `rollbacks` checks, at this cadence (in any flow);
    # null: no held-out loss and no checks.
    eval_every: int | None = Field(10, ge=1)
    eval_blocks: int = Field(8, ge=1)
    checkpoint_every: int = Field(50, ge=1)
    threads: int | None = Field(None, ge=1)
    # Under torchrun / accelerate launch: ddp keeps the whole student in every process;
    # fsdp shards parameters, gradients and optimizer state over them (students that do
    # not fit one device). One process ignores it; checkpoints resume in either mode.
    parallel: Literal["ddp", "fsdp"] = "ddp"
    # Tokens per chunk of the loss fused with the student's output projection: the
    # student's (tokens x vocab) logits exist one chunk at a time. 128 keeps a chunk's
    # float32 (c, V) temporaries under glibc's 32 MB mmap threshold at V = 49,152, so they
    # are reused instead of mapped afresh (bench/results/defaults.md, bench/loss.py).
    chunk_tokens: int = Field(128, ge=1)
    # auto: bf16 autocast on a GPU (fp16 where bf16 is missing), fp32 on the CPU.
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"

    def identity(self) -> dict[str, Any]:
        """The settings that decide the trained weights, for a stage's fingerprint: not
        threads, logging, checkpoint cadence or the parallel mode, so changing those resumes
        a checkpoint instead of starting again; the held-out evaluation's cadence and slice
        only when rollbacks are off (with them on, its checks decide where a run goes back)."""
        exclude = {"threads", "log_every", "checkpoint_every", "parallel"}
        if not self.rollbacks:
            exclude |= {"eval_every", "eval_blocks"}
        return self.model_dump(exclude=exclude)
