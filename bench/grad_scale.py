"""Why the default uses AdamW's eps = 1e-6: the gradient scale of the tied embedding
against a decoder block's, on the default student's first cross-entropy step.

    .venv/bin/python bench/grad_scale.py [--blocks 4]

AdamW updates a weight by about ``lr · m / (sqrt(v) + eps)``: a weight whose gradients are
far above ``eps`` moves by about ``lr`` whatever their size. The printout is the share of
gradient entries below each threshold, before and after the run's clipping (norm 1).
"""

from __future__ import annotations

import argparse

import torch

from potstill.config import load_recipe
from potstill.data import load_data
from potstill.losses import LossTerm
from potstill.models.load import load_causal_lm
from potstill.models.student import build_student
from potstill.tasks.causal_lm import CausalLM


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=4, help="training blocks in the batch")
    args = parser.parse_args()
    recipe = load_recipe(None, [])
    teacher, tokenizer = load_causal_lm(recipe.teacher)
    data = load_data(recipe.data, tokenizer)
    student, _ = build_student(recipe.student, teacher, tokenizer)
    task = CausalLM([LossTerm("cross_entropy")])
    batch = data.train.batch(torch.arange(args.blocks))
    loss, _ = task.loss(student, batch, None, num_tokens=task.count(batch))
    loss.backward()
    params = [p for p in student.parameters() if p.grad is not None]
    norm = float(torch.nn.utils.clip_grad_norm_(params, float("inf")))
    embedding = student.get_input_embeddings().weight.grad.abs()
    block = student.model.layers[3].mlp.down_proj.weight.grad.abs()
    print(f"loss {loss.item():.3f}, gradient norm {norm:.1f} (clipped to 1: × {1 / norm:.3f})")
    print(f"median |g|: tied embedding {embedding.median():.2e}, block 3 {block.median():.2e}")
    head = f"{'embedding':>11}{'clipped':>9}{'block':>9}{'clipped':>9}"
    print(f"{'share of entries with |g| <':<28}{head}")
    for threshold in (1e-8, 1e-7, 1e-6, 1e-5, 1e-4):
        shares = [
            float((g < threshold).float().mean())
            for g in (embedding, embedding / max(norm, 1.0), block, block / max(norm, 1.0))
        ]
        print(
            f"{threshold:<28g}"
            + "".join(f"{s:>9.3f}" if i else f"{s:>11.3f}" for i, s in enumerate(shares))
        )


if __name__ == "__main__":
    main()
