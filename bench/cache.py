"""Teacher cache size and fidelity for several k, and students trained from it vs live.

    .venv/bin/python bench/cache.py [--blocks 32] [--train-steps 60]
        [--caches top64,s96,t8s80] [--seeds 0,1,2]

1. Size and fidelity. The bundled teacher runs over ``--blocks`` training blocks of the
   default data (127 predicted positions each). For every k the top-k signal is encoded
   with the cache's codec at ``teach.bits``; reported: bytes per token (the payload, as a
   shard stores it), the mean ``KL(teacher ‖ reconstruction)`` (the k dequantized
   probabilities, the tail mass spread evenly over the other ids), the part of it due to
   quantization alone (the same with exact log-probabilities), and the mean tail mass.
   Then the sampled caches (`potstill.losses.sampled`) of ``SAMPLED``: bytes per token,
   and the mean total variation between the estimate and the teacher (an estimate's KL
   from the teacher is infinite: it puts no mass on ids it did not draw).
   Dense fp16 logits would take ``2 V`` bytes per token (98,304 at V = 49,152).
2. Cache vs live (``--train-steps`` > 0). For every seed in ``--seeds``, the default
   student trains ``--train-steps`` steps with the default loss from each cache in
   ``--caches`` (``topK``: top-k with a tail bucket; ``sN``: N draws; ``tKsN``: the top K
   exactly and N draws from the rest; sampled caches draw at the seed) and from the live
   teacher, same data order; each is scored on the default held-out split, and the mean
   and standard deviation over the seeds close the table.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from _common import heldout_score, teach_cache

from potstill.cache import codec
from potstill.config import load_recipe
from potstill.data import load_data
from potstill.losses import top_k_signal
from potstill.losses.sampled import sampled_signal
from potstill.models.load import load_causal_lm
from potstill.models.student import build_student, wrap_adapter
from potstill.tasks.causal_lm import CausalLM
from potstill.teachers import LiveTeacher
from potstill.train.loop import train

KS = (8, 16, 32, 64, 128)
SAMPLED = ("s64", "s128", "s192", "s256", "t4s48", "t8s32", "t8s48", "t16s32")


def parse_cache(spec: str) -> tuple[int, int]:
    """``(top_k, samples)`` of a cache spec: ``top64`` → (64, 0), ``s96`` → (0, 96),
    ``t8s80`` → (8, 80)."""
    found = re.fullmatch(r"top(\d+)|s(\d+)|t(\d+)s(\d+)", spec)
    if found is None:
        raise SystemExit(f"cache spec {spec!r}: give topK, sN or tKsN")
    top, draws, hybrid_top, hybrid_draws = found.groups()
    if top is not None:
        return int(top), 0
    if draws is not None:
        return 0, int(draws)
    return int(hybrid_top), int(hybrid_draws)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=32, help="training blocks measured")
    parser.add_argument("--train-steps", type=int, default=60, help="0 skips part 2")
    parser.add_argument("--caches", default="top64", help="comma-separated caches for part 2")
    parser.add_argument("--seeds", default="0", help="comma-separated training seeds for part 2")
    parser.add_argument("--out", type=Path, help="also write the results as JSON here")
    args = parser.parse_args()

    recipe = load_recipe(None, [f"train.steps={max(args.train_steps, 1)}"])
    teacher, tokenizer = load_causal_lm(recipe.teacher)
    data = load_data(recipe.data, tokenizer)
    results = {"fidelity": size_and_fidelity(teacher, data.train.input_ids[: args.blocks], recipe)}
    if args.train_steps > 0:
        caches = args.caches.split(",")
        for spec in caches:
            parse_cache(spec)
        seeds = [int(seed) for seed in args.seeds.split(",")]
        results["students"] = cache_vs_live(recipe, teacher, tokenizer, data, caches, seeds)
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
    print(f"\n{'cache':>7}{'bytes/token':>13}{'TV to teacher':>15}{'exact mass':>12}")
    p = full.double().exp()  # (n, V)
    for spec in SAMPLED:
        top, draws = parse_cache(spec)
        signal = sampled_signal(
            full[None], draws, top=top, generator=torch.Generator().manual_seed(0)
        )
        ids = signal.ids[0].numpy()
        logprobs = signal.logprobs[0].float().numpy()
        tail = signal.tail_logprob[0].float().numpy()
        payload = codec.encode(ids, logprobs, tail, vocab_size=vocab, bits=bits)
        ids, logprobs, _ = codec.decode(payload)
        estimate = torch.zeros_like(p).scatter_add_(
            -1, torch.from_numpy(ids).long(), torch.from_numpy(logprobs).double().exp()
        )
        exact = p.topk(top, dim=-1).values.sum(-1).mean() if top else torch.tensor(0.0)
        row = {
            "cache": spec,
            "bytes_per_token": len(payload) / len(full),
            "total_variation": float(0.5 * (estimate - p).abs().sum(-1).mean()),
            "exact_mass": float(exact),
        }
        rows.append(row)
        print(
            f"{spec:>7}{row['bytes_per_token']:>13.1f}{row['total_variation']:>15.4f}"
            f"{row['exact_mass']:>12.4f}"
        )
    print(f"(dense fp16 logits: {2 * vocab:,} bytes/token)")
    return rows


def cache_vs_live(
    recipe, teacher, tokenizer, data, caches: list[str], seeds: list[int]
) -> list[dict]:
    """Per seed: one student from the live teacher, one from each cache."""
    rows = []
    for seed in seeds:
        seeded = recipe.model_copy(update={"train": recipe.train.model_copy(update={"seed": seed})})
        for name in [*caches, "live"]:
            bytes_per_token = None
            with tempfile.TemporaryDirectory() as tmp:
                started = time.perf_counter()
                if name == "live":
                    source, teach_seconds = LiveTeacher(teacher), 0.0
                else:
                    top, draws = parse_cache(name)
                    settings = {"top_k": top, "samples": draws, "seed": seed}
                    cfg = seeded.model_copy(
                        update={"teach": seeded.teach.model_copy(update=settings)}
                    )
                    source = teach_cache(
                        cfg, teacher, tokenizer, data, directory=Path(tmp) / "cache"
                    )
                    teach_seconds = time.perf_counter() - started
                    bytes_per_token = source.manifest.bytes_per_token
                student, _ = build_student(seeded.student, teacher, tokenizer, seed=seed)
                model = wrap_adapter(student, seeded.student)
                result = train(
                    model,
                    data.train,
                    CausalLM(seeded.terms, chunk_tokens=seeded.train.chunk_tokens),
                    seeded.train,
                    teacher=source,
                    name=name,
                    checkpoint_dir=Path(tmp) / "ckpt",
                    metrics_path=Path(tmp) / "metrics.jsonl",
                )
            score = heldout_score(teacher, model, data, recipe.eval.batch_size)
            rows.append(
                {
                    "seed": seed,
                    "from": name,
                    "perplexity": score.perplexity,
                    "top1": score.top1,
                    "kl": score.kl,
                    "teach_seconds": teach_seconds,
                    "train_seconds": result.seconds,
                    "bytes_per_token": bytes_per_token,
                }
            )
            print(f"seed {seed} {name}: perplexity {score.perplexity:.2f}", flush=True)
    heldout = data.heldout.num_tokens
    print(f"\nstudents after {recipe.train.steps} steps, held-out ({heldout:,} tokens):")
    header = f"{'seed':<6}{'from':<15}{'bytes/tok':>10}{'perplexity':>11}{'top-1':>8}{'KL':>8}"
    print(f"{header}{'teach s':>9}{'train s':>9}")
    for r in rows:
        size = "-" if r["bytes_per_token"] is None else f"{r['bytes_per_token']:.1f}"
        print(
            f"{r['seed']:<6}{r['from']:<15}{size:>10}{r['perplexity']:>11.2f}{r['top1']:>8.3f}"
            f"{r['kl']:>8.3f}{r['teach_seconds']:>9.0f}{r['train_seconds']:>9.0f}"
        )
    live = [r["perplexity"] for r in rows if r["from"] == "live"]
    print(f"\nover seeds {seeds}: perplexity mean ± sd (vs live)")
    for name in [*caches, "live"]:
        values = [r["perplexity"] for r in rows if r["from"] == name]
        mean, sd = statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0
        ratio = mean / statistics.mean(live)
        print(f"{name:<15}{mean:>11.2f} ± {sd:<7.2f}{ratio:>8.3f}×")
    return rows


if __name__ == "__main__":
    main()
