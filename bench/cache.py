"""Teacher cache size and fidelity for several k, and students trained from it vs live.

    .venv/bin/python bench/cache.py [--blocks 32] [--train-steps 60]

1. Size and fidelity. The bundled teacher runs over ``--blocks`` training blocks of the
   default data (127 predicted positions each). For every k the top-k signal is encoded
   with the cache's codec at ``teach.bits``; reported: bytes per token (the payload, as a
   shard stores it), the mean ``KL(teacher ‖ reconstruction)`` (the k dequantized
   probabilities, the tail mass spread evenly over the other ids), the part of it due to
   quantization alone (the same with exact log-probabilities), and the mean tail mass.
   Dense fp16 logits would take ``2 V`` bytes per token (98,304 at V = 49,152).
2. Cache vs live (``--train-steps`` > 0). The default student trains ``--train-steps``
   steps with the default loss twice, once fed by the cache (top-64) and once by the live
   teacher, same data order and seed; both are scored on the default held-out split.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from potstill.cache import codec
from potstill.cache.teach import teach
from potstill.config import load_recipe
from potstill.data import load_data
from potstill.evaluate import score_models
from potstill.losses import top_k_signal
from potstill.models.load import load_causal_lm
from potstill.models.student import build_student, wrap_adapter
from potstill.train.loop import train
from potstill.train.teacher import LiveTeacher

KS = (8, 16, 32, 64, 128)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=32, help="training blocks measured")
    parser.add_argument("--train-steps", type=int, default=60, help="0 skips part 2")
    parser.add_argument("--out", type=Path, help="also write the results as JSON here")
    args = parser.parse_args()

    recipe = load_recipe(None, [f"train.steps={max(args.train_steps, 1)}"])
    teacher, tokenizer = load_causal_lm(recipe.teacher)
    data = load_data(recipe.data, tokenizer)
    results = {"fidelity": size_and_fidelity(teacher, data.train.input_ids[: args.blocks], recipe)}
    if args.train_steps > 0:
        results["students"] = cache_vs_live(recipe, teacher, tokenizer, data)
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")


def size_and_fidelity(teacher: torch.nn.Module, input_ids: torch.Tensor, recipe) -> list[dict]:
    bits, temperature = recipe.teach.bits, recipe.teach_temperature
    with torch.inference_mode():
        logits = torch.cat(
            [
                teacher(input_ids=input_ids[i : i + 8]).logits[:, :-1]
                for i in range(0, len(input_ids), 8)
            ]
        )
    vocab = logits.shape[-1]
    full = F.log_softmax(logits.float() / temperature, dim=-1).reshape(-1, vocab)
    rows = []
    print(f"{len(full):,} tokens, V = {vocab:,}, bits = {bits}, T = {temperature:g}")
    print(f"{'k':>5}{'bytes/token':>13}{'KL total':>11}{'KL quant.':>11}{'tail mass':>11}")
    for k in KS:
        signal = top_k_signal(full[None], k)
        ids = signal.ids[0].numpy()
        logprobs = signal.logprobs[0].numpy()
        tail = signal.tail_logprob[0].numpy()
        payload = codec.encode(ids, logprobs, tail, vocab_size=vocab, bits=bits)
        decoded = codec.decode(payload)
        kl = codec.reconstruction_kl(full.numpy(), *decoded).mean()
        exact = codec.reconstruction_kl(full.numpy(), ids, logprobs, tail).mean()
        row = {
            "k": k,
            "bytes_per_token": len(payload) / len(full),
            "kl": float(kl),
            "kl_quantization": float(kl - exact),
            "tail_mass": float(np.exp(tail).mean()),
        }
        rows.append(row)
        print(
            f"{k:>5}{row['bytes_per_token']:>13.1f}{row['kl']:>11.4f}"
            f"{row['kl_quantization']:>11.5f}{row['tail_mass']:>11.4f}"
        )
    print(f"(dense fp16 logits: {2 * vocab:,} bytes/token)")
    return rows


def cache_vs_live(recipe, teacher, tokenizer, data) -> dict:
    students, seconds = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        cache = teach(recipe, teacher, tokenizer, data, directory=Path(tmp) / "cache")
        seconds["teach"] = time.perf_counter() - started
        for mode, source in (("cache", cache), ("live", LiveTeacher(teacher))):
            student, _ = build_student(recipe.student, teacher, tokenizer, seed=0)
            model = wrap_adapter(student, recipe.student)
            run = Path(tmp) / mode
            result = train(
                model,
                data.train,
                recipe.loss,
                recipe.train,
                teacher=source,
                name=mode,
                checkpoint_dir=run / "ckpt",
                metrics_path=run / "metrics.jsonl",
            )
            students[mode], seconds[mode] = model, result.seconds
    scores = score_models(
        {"teacher": teacher, **students},
        data.heldout.input_ids,
        data.heldout.labels,
        teacher="teacher",
        batch_size=recipe.eval.batch_size,
    )
    out = {
        mode: {
            "perplexity": scores[mode].perplexity,
            "top1": scores[mode].top1,
            "kl": scores[mode].kl,
            "train_seconds": seconds[mode],
        }
        for mode in students
    }
    out["teach_seconds"] = seconds["teach"]
    heldout = data.heldout.num_tokens
    print(f"\nstudents after {recipe.train.steps} steps, held-out ({heldout:,} tokens):")
    print(f"{'from':<7}{'perplexity':>12}{'top-1':>8}{'KL':>8}{'train s':>9}")
    for mode in students:
        o = out[mode]
        print(
            f"{mode:<7}{o['perplexity']:>12.2f}{o['top1']:>8.3f}{o['kl']:>8.3f}{o['train_seconds']:>9.0f}"
        )
    print(f"(teacher: {scores['teacher'].perplexity:.2f}; teaching took {seconds['teach']:.0f} s)")
    return out


if __name__ == "__main__":
    main()
