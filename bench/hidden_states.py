"""Compact hidden states: bytes per token and layer against the error kept, for two widths.

    .venv/bin/python bench/hidden_states.py [--teachers bundled:smollm2-135m-instruct,...]
        [--errors 0.01,0.02,0.04,0.08] [--fit-blocks 64] [--test-blocks 32]

For each teacher, the default data's training blocks (128 tokens, 127 positions kept per
block, as the cache keeps them) run through it and the hidden states of five layers are
kept: ``(1, 2, L − 3, L − 2, L − 1)`` of its ``L`` (the default student's auto map picks
``1, 2, 27, 28, 29`` of SmolLM2's 30). For every target error (`teach.hidden_error`), a
basis is fitted (`potstill.cache.states.fit_basis`) on the first ``--fit-blocks`` blocks,
as `teach` fits it on its first shard (64 blocks), and the next ``--test-blocks`` blocks
(other text) are coded in it. Reported per target: the relative squared error measured
on the other text, the coefficients' bytes per token and layer, that as a share of
float16 (``2 × width``), the basis file's size, the directions kept, and the seconds to
fit, encode and decode per 1,000 tokens (this machine, one process; stated with the
teacher's own forward time on the same tokens for scale).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from potstill.cache.states import decode_states, encode_states, fit_basis
from potstill.config import load_recipe
from potstill.data import load_data
from potstill.models.load import load_causal_lm, text_config


def teacher_states(reference: str, blocks: int) -> tuple[np.ndarray, int, float]:
    """``(blocks · 127, 5, width)`` float32 states, the width, and the forward seconds."""
    recipe = load_recipe(None, [f"teacher={reference}"])
    model, tokenizer = load_causal_lm(reference)
    model.eval()
    data = load_data(recipe.data, tokenizer)
    depth = text_config(model).num_hidden_layers
    layers = (1, 2, depth - 3, depth - 2, depth - 1)
    parts, seconds = [], 0.0
    for start in range(0, blocks, 8):
        index = torch.arange(start, min(start + 8, blocks))
        batch = data.train.batch(index)
        begun = time.perf_counter()
        with torch.inference_mode():
            out = model(input_ids=batch.input_ids, output_hidden_states=True)
        seconds += time.perf_counter() - begun
        stacked = torch.stack([out.hidden_states[i] for i in layers], dim=2)[:, :-1]
        parts.append(stacked.float().reshape(-1, len(layers), stacked.shape[-1]).numpy())
    return np.concatenate(parts), text_config(model).hidden_size, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--teachers",
        default="bundled:smollm2-135m-instruct,bundled:qwen2.5-coder-0.5b-instruct",
    )
    parser.add_argument("--errors", default="0.01,0.02,0.04,0.08")
    parser.add_argument("--fit-blocks", type=int, default=64)
    parser.add_argument("--test-blocks", type=int, default=32)
    args = parser.parse_args()
    errors = [float(e) for e in args.errors.split(",")]
    for reference in args.teachers.split(","):
        states, width, forward = teacher_states(reference, args.fit_blocks + args.test_blocks)
        fit_on = states[: args.fit_blocks * 127]
        other = states[args.fit_blocks * 127 :]
        per_k = 1000 / len(other)
        print(
            f"\n{reference}: width {width}, float16 {2 * width} bytes per token and layer; "
            f"fit on {len(fit_on):,} tokens, measured on {len(other):,} others; teacher "
            f"forward {forward / len(states) * 1000:.2f} s per 1,000 tokens"
        )
        print(
            f"{'error':>6} {'measured':>9} {'B/tok/layer':>12} {'of fp16':>8} {'basis MB':>9} "
            f"{'kept':>22} {'fit s':>6} {'enc s/1k':>9} {'dec s/1k':>9}"
        )
        for error in errors:
            begun = time.perf_counter()
            basis = fit_basis(fit_on, error)
            fit = time.perf_counter() - begun
            begun = time.perf_counter()
            payload, measured = encode_states(other, basis)
            encode = time.perf_counter() - begun
            begun = time.perf_counter()
            decoded = decode_states(payload, basis)
            decode = time.perf_counter() - begun
            assert decoded.shape == other.shape
            per_layer = len(payload) / len(other) / states.shape[1]
            kept = "/".join(str(len(c)) for c in basis.components)
            share = per_layer / (2 * width)
            print(
                f"{error:>6.3f} {measured:>9.4f} {per_layer:>12.1f} {share:>8.1%} "
                f"{len(basis.to_bytes()) / 1e6:>9.2f} {kept:>22} {fit:>6.1f} "
                f"{encode * per_k:>9.3f} {decode * per_k:>9.3f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
