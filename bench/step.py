"""One training step of the default student: cache-fed KD vs live-teacher KD vs CE only.

    .venv/bin/python bench/step.py [--steps 8] [--rounds 2] [--top-k K]

The default recipe's student (6 of the bundled SmolLM2's 30 layers, 49.6M parameters)
trains through potstill's real loop (`potstill.train.loop.train`) on the default data,
batch 4 × 128 tokens, in three modes, each from the same fresh student:

- ``ce``: cross-entropy only (the baseline's step);
- ``cache``: the default KD loss fed from the teacher cache (top-k, ``--top-k`` or the
  recipe's default; no teacher forward);
- ``live``: the same KD loss with the teacher running forward at every step.

Each mode runs ``--steps`` steps per round; the first two of a round are warm-up and
dropped, and the rounds alternate the modes so that drift in the machine's speed hits all
three alike. A step's time is the loop's own (forward, backward, clip, optimizer step).
The cache is taught first, into a temporary folder, for exactly the blocks the steps visit.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from _common import teach_cache

from potstill.config import load_recipe
from potstill.data import load_data
from potstill.losses import LossTerm
from potstill.models.load import load_causal_lm
from potstill.models.student import build_student, wrap_adapter
from potstill.tasks.causal_lm import CausalLM
from potstill.teachers import LiveTeacher
from potstill.train.loop import train

WARMUP = 2
CE_ONLY = [LossTerm("cross_entropy")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8, help="steps per mode and round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--top-k", type=int, help="the cache's k (default: the recipe's)")
    parser.add_argument("--out", type=Path, help="also write the results as JSON here")
    args = parser.parse_args()

    overrides = [f"train.steps={args.steps}", "train.log_every=1"]
    if args.top_k is not None:
        overrides.append(f"teach.top_k={args.top_k}")
    recipe = load_recipe(None, overrides)
    teacher, tokenizer = load_causal_lm(recipe.teacher)
    data = load_data(recipe.data, tokenizer)
    times: dict[str, list[float]] = {"ce": [], "cache": [], "live": []}
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        cache = teach_cache(recipe, teacher, tokenizer, data, directory=Path(tmp) / "cache")
        teach_seconds = time.perf_counter() - started
        sources = {"ce": None, "cache": cache, "live": LiveTeacher(teacher)}
        for round_ in range(args.rounds):
            for mode, source in sources.items():
                terms = CE_ONLY if mode == "ce" else recipe.terms
                run = Path(tmp) / f"{mode}-{round_}"
                student, _ = build_student(recipe.student, teacher, tokenizer, seed=0)
                model = wrap_adapter(student, recipe.student)
                train(
                    model,
                    data.train,
                    CausalLM(terms, chunk_tokens=recipe.train.chunk_tokens),
                    recipe.train,
                    teacher=source,
                    name=mode,
                    checkpoint_dir=run / "ckpt",
                    metrics_path=run / "metrics.jsonl",
                )
                times[mode] += _step_seconds(run / "metrics.jsonl")[WARMUP:]
                print(
                    f"round {round_ + 1} {mode:>5}: median {statistics.median(times[mode]):.3f} s"
                )

    median = {mode: statistics.median(values) for mode, values in times.items()}
    results = {
        "threads": torch.get_num_threads(),
        "tokens_per_step": recipe.train.batch_size * (recipe.data.block_size - 1),
        "teach_seconds": teach_seconds,
        "cache_tokens": cache.manifest.tokens,
        "top_k": cache.manifest.top_k,
        "median_step_seconds": median,
        "steps_measured": {mode: len(values) for mode, values in times.items()},
        "cache_over_ce": median["cache"] / median["ce"],
        "live_over_cache": median["live"] / median["cache"],
    }
    print()
    print(f"{'mode':<8}{'median step':>14}{'vs CE only':>12}")
    for mode in times:
        print(f"{mode:<8}{median[mode]:>12.3f} s{median[mode] / median['ce']:>11.2f}x")
    print(f"\ncache-fed KD step / CE-only step: {results['cache_over_ce']:.2f}x (target <= 1.15)")
    print(f"live-teacher KD step / cache-fed step: {results['live_over_cache']:.2f}x (target >= 2)")
    taught = cache.manifest.tokens
    print(f"(teaching the {taught:,} tokens these steps use took {teach_seconds:.1f} s)")
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")


def _step_seconds(metrics: Path) -> list[float]:
    """Per-step seconds from the loop's cumulative ``elapsed`` (logged every step)."""
    elapsed = [json.loads(line)["elapsed"] for line in metrics.read_text().splitlines()]
    return [b - a for a, b in zip([0.0, *elapsed], elapsed, strict=False)]


if __name__ == "__main__":
    main()
