"""The recipe's `train` section: optimizer, schedule, batches, checkpoints."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from potstill.util.schema import Strict


class TrainConfig(Strict):
    # The settings measured best on the default run (bench/results/stability.md,
    # bench/results/defaults.md): lr 2e-3 with AdamW eps 1e-6.
    steps: int = Field(130, ge=1)
    """Optimizer steps each model of the run trains for; with `budget_minutes`, fitted to
    the time budget instead."""
    batch_size: int = Field(4, ge=1)
    """Examples (blocks, texts or chats) per micro-batch; under `torchrun` split across
    the processes, so the global batch stays the same."""
    grad_accum: int = Field(1, ge=1)
    """Micro-batches summed into one optimizer step (a step sees `batch_size × grad_accum`
    examples); exact, as the loss is normalised by the step's count of valid tokens."""
    # seed 0, distilled student: 103.6 / 94.8 / 93.4 perplexity at lr 1e-3 / 2e-3 / 3e-3,
    # the cross-entropy baseline unchanged (docs/benchmarks.md, bench/results/ablate.json).
    lr: float = Field(2.0e-3, gt=0.0)
    """The peak learning rate, reached after `warmup` steps and decayed along a cosine to
    `lr × min_lr_ratio`. 2e-3: the distilled student gains from the larger step where the
    baseline does not; a run that breaks is caught by `spike_skip`, `rollbacks` and the
    report's health check."""
    min_lr_ratio: float = Field(0.1, ge=0.0, le=1.0)
    """The learning rate at the last step, as a fraction of `lr` (the cosine's floor)."""
    weight_decay: float = Field(0.0, ge=0.0)
    """AdamW's weight decay, on matrices only (norms and biases are not decayed)."""
    warmup: int = Field(10, ge=0)
    """Steps of linear warm-up from `lr / warmup` to `lr`."""
    clip: float | None = Field(1.0, gt=0.0)
    """The largest gradient norm: a step's gradient is scaled down to it; null = no
    clipping."""
    spike_skip: float | None = Field(10.0, gt=1.0)
    """Skip an update whose gradient norm (before clipping) is over this many times the
    median of the last 32 steps', or not finite: the step counts, its change does not
    (`potstill.train.spikes`). null = never skip a finite one."""
    rollbacks: int = Field(3, ge=0)
    """How many times a run may go back to its last good check: when a check (every
    `eval_every` steps: the held-out loss where the flow has one, else the mean training
    loss since the last check) rose 0.3 nats and 5% above its best, the run returns there
    and trains on at half the lr (`potstill.train.rollback`). 0 = never; every model of a
    run gets the same."""
    seed: int = 0
    """The seed of training: the order blocks are visited in, a fresh student's and an
    adapter's or head's initialisation, and the examples `task.shots` picks."""
    freeze_embeddings: bool = False
    """Keep the input embedding (and a tied output layer) fixed while training."""
    # On the default run's seed 1 (lr 7e-4, eps 1e-8) a 0.1 multiple stopped the baseline's
    # collapse (175.2 to 132.1 perplexity) but cost the student 5.5; eps 1e-6 cost it 1.0
    # (bench/results/stability.md).
    embedding_lr_scale: float = Field(1.0, ge=0.0)
    """The input embedding's learning rate as a multiple of `lr` (with tied embeddings, the
    output layer's too). Adam moves a rarely seen token's row by about lr whenever it
    appears, whatever its gradient; a smaller multiple keeps a big tied vocabulary from
    destabilising a small-batch run, but costs the distilled student more than `adam_eps`
    does."""
    # 1e-6: the tied 49k embedding's gradients sit near 1e-7, and at 1e-8 the cross-entropy
    # baseline's rows drifted by about lr a step and its result depended on the seed (143
    # to 175 perplexity; bench/results/stability.md).
    adam_eps: float = Field(1.0e-6, gt=0.0)
    """AdamW's epsilon: an update is `m / (sqrt(v) + eps)`, so a parameter whose gradients
    are far below eps barely moves instead of moving by about lr on noise. 1e-6 steadies
    the tied embedding of the bundled SmolLM2 (`bench/results/stability.md`)."""
    curriculum: Literal["none", "easy_first", "hard_first"] = "none"
    """The order training visits the scheduled blocks in: `none` = random, `easy_first` /
    `hard_first` = by the teacher's entropy, read from the cache (`potstill.train.curriculum`;
    needs `teach.enabled` and a distillation term)."""
    log_every: int = Field(1, ge=1)
    """Write a row to `metrics.jsonl` every this many steps (and at the last)."""
    eval_every: int | None = Field(10, ge=1)
    """Every this many steps, and at the last, the `lm` flow scores its held-out loss
    (`heldout_loss` in `metrics.jsonl`) and every flow checks for `rollbacks`; it changes no
    weight. null = no held-out loss and no checks."""
    eval_blocks: int = Field(8, ge=1)
    """How many held-out blocks (the first) each held-out check scores."""
    checkpoint_every: int = Field(50, ge=1)
    """Save a checkpoint every this many steps (and at the last), for `--resume` after a
    kill."""
    threads: int | None = Field(None, ge=1)
    """CPU threads torch uses (`torch.set_num_threads`); null = torch's default."""
    parallel: Literal["ddp", "fsdp"] = "ddp"
    """Under `torchrun` / `accelerate launch`: `ddp` keeps the whole student in every
    process; `fsdp` shards parameters, gradients and optimizer state over them (students
    that do not fit one device). One process ignores it; checkpoints resume in either."""
    chunk_tokens: int = Field(128, ge=1)
    """Tokens per chunk of the loss fused with the student's output projection: the
    student's (tokens × vocab) logits exist one chunk at a time. 128 keeps a chunk's float32
    temporaries under glibc's 32 MB mmap threshold at a 49,152 vocabulary, so they are
    reused instead of mapped afresh (`bench/results/defaults.md`, `bench/loss.py`)."""
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    """The autocast precision of training: `auto` = bf16 on a GPU (fp16 where bf16 is
    missing), fp32 on the CPU; fp16 needs a GPU."""
    gradient_checkpointing: bool = False
    """Recompute each decoder block's activations during the backward pass instead of
    keeping them from the forward: activation memory falls to about one block's, for
    about one more forward pass of compute. For students whose activations do not fit
    the device; the weights trained are the same."""

    def identity(self) -> dict[str, Any]:
        """The settings that decide the trained weights, for a stage's fingerprint: not
        threads, logging, checkpoint cadence, the parallel mode or gradient checkpointing, so
        changing those resumes a checkpoint instead of starting again; the held-out
        evaluation's cadence and slice only when rollbacks are off (with them on, its checks
        decide where a run goes back)."""
        exclude = {
            "threads",
            "log_every",
            "checkpoint_every",
            "parallel",
            "gradient_checkpointing",
        }
        if not self.rollbacks:
            exclude |= {"eval_every", "eval_blocks"}
        return self.model_dump(exclude=exclude)
