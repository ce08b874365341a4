"""The peer in the ablation table: TRL's GKDTrainer on the default student, data and time.

    bash bench/setup.sh   # .venv-bench: potstill plus trl 1.16 (and torchtune, torchao)
    .venv-bench/bin/python bench/peer_trl.py --seconds 256 [--seed 0] [--out FILE]

The default run's student (the teacher's layers ``[0, 1, 2, 27, 28, 29]``), its training
blocks (4 × 128 tokens per step, the same data order as potstill's seed), its learning rate,
warm-up and cosine schedule, trained by ``trl.experimental.gkd.GKDTrainer`` with ``lmbda=0``
(no on-policy samples) and ``beta=0`` (forward KL at temperature 1, the teacher live at every
step), for as many steps as fit ``--seconds`` of wall clock (potstill's teach + train seconds
for its student: equal time). The step count is fitted from three timed steps first, so
the schedule runs to its end inside the budget. The student is then scored by potstill's
own scorer on the default held-out play, like every row of `bench/ablate.py`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
import time
from pathlib import Path

import torch

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

from _common import heldout_score
from datasets import Dataset
from trl.experimental.gkd import GKDConfig, GKDTrainer

from potstill.config import load_recipe
from potstill.data import load_data
from potstill.data.order import block_indices
from potstill.models.load import load_causal_lm
from potstill.models.student import build_student


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, required=True, help="wall-clock budget")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-steps", type=int, default=1000, help="an upper bound")
    parser.add_argument("--out", type=Path, help="append the result as a JSON row here")
    args = parser.parse_args()

    recipe = load_recipe(None, [f"train.seed={args.seed}"])
    cfg = recipe.train
    teacher, tokenizer = load_causal_lm(recipe.teacher)
    data = load_data(recipe.data, tokenizer)
    teacher.eval()

    def blocks(steps: int) -> Dataset:
        """potstill's data order for ``steps`` steps, one row per block."""
        order = [
            b
            for m in range(steps)
            for b in block_indices(
                len(data.train), batch_size=cfg.batch_size, seed=args.seed, micro_index=m
            )
        ]
        ids = data.train.input_ids[order]
        return Dataset.from_dict({"input_ids": ids.tolist()})

    def collate(rows: list[dict]) -> dict[str, torch.Tensor]:
        ids = torch.tensor([row["input_ids"] for row in rows])
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}

    def trainer(steps: int, out: str) -> GKDTrainer:
        student, _ = build_student(recipe.student, teacher, tokenizer, seed=args.seed)
        config = GKDConfig(
            output_dir=out,
            lmbda=0.0,
            beta=0.0,
            max_steps=steps,
            per_device_train_batch_size=cfg.batch_size,
            learning_rate=cfg.lr,
            lr_scheduler_type="cosine",
            warmup_steps=cfg.warmup,
            max_grad_norm=cfg.clip,
            weight_decay=cfg.weight_decay,
            adam_beta2=0.95,
            adam_epsilon=cfg.adam_eps,
            seed=args.seed,
            data_seed=args.seed,
            logging_steps=10,
            save_strategy="no",
            report_to=[],
            use_cpu=True,
            dataloader_num_workers=0,
        )
        return GKDTrainer(
            model=student,
            teacher_model=teacher,
            args=config,
            train_dataset=blocks(steps),
            processing_class=tokenizer,
            data_collator=collate,
        )

    with tempfile.TemporaryDirectory() as tmp:
        probe = trainer(3, tmp)
        started = time.perf_counter()
        probe.train()
        per_step = (time.perf_counter() - started) / 3
        steps = max(1, min(args.max_steps, math.floor(args.seconds / per_step)))
        print(f"TRL GKD: {per_step:.2f} s/step → {steps} steps in {args.seconds:.0f} s", flush=True)
        run = trainer(steps, tmp)
        started = time.perf_counter()
        run.train()
        seconds = time.perf_counter() - started
        student = run.model
    score = heldout_score(teacher, student, data, recipe.eval.batch_size)
    row = {
        "peer": "trl GKDTrainer (lmbda=0, beta=0, live teacher)",
        "seed": args.seed,
        "budget_seconds": args.seconds,
        "steps": steps,
        "train_seconds": seconds,
        "perplexity": score.perplexity,
        "top1": score.top1,
    }
    print(json.dumps(row), flush=True)
    if args.out:
        rows = json.loads(args.out.read_text()) if args.out.is_file() else []
        args.out.write_text(json.dumps([*rows, row], indent=2) + "\n")


if __name__ == "__main__":
    main()
