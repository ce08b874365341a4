"""Batch-1 greedy generation speed of exported GGUF files in llama.cpp, beside the float32
HF model in PyTorch (the report's measure), in one run.

    .venv/bin/python bench/gguf_speed.py --student runs/default-seed0/student \\
        runs/bench-export/student-*.gguf [--out bench/results/gguf_speed.json]

Needs ``llama-cpp-python`` (``pip install -e '.[llama]'``). Each model generates 32 new
tokens after the same 16-token prompt, greedy, best of 3 after a warm-up, on the threads
torch uses.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from potstill.evaluation.speed import generation_tokens_per_second
from potstill.models.load import load_causal_lm

PROMPT = "To be, or not to be, that is the question: whether 'tis nobler in the mind"
NEW_TOKENS = 32


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--student", required=True, help="the float32 student folder")
    parser.add_argument("gguf", nargs="+", type=Path, help="GGUF files of that student")
    parser.add_argument("--out", type=Path, help="write the rows as JSON here")
    args = parser.parse_args()
    from llama_cpp import Llama

    model, tokenizer = load_causal_lm(args.student)
    prompt = torch.tensor([tokenizer.encode(PROMPT)[:16]])  # (1, 16)
    rows = [
        {
            "model": "hf float32 (PyTorch)",
            "tokens_per_second": generation_tokens_per_second(
                model, prompt, new_tokens=NEW_TOKENS, repeats=3
            ),
        }
    ]
    for path in args.gguf:
        llm = Llama(
            model_path=str(path), n_ctx=256, n_threads=torch.get_num_threads(), verbose=False
        )
        ids = prompt[0].tolist()
        best = 0.0
        for attempt in range(4):  # the first is the warm-up
            llm.reset()
            began = time.perf_counter()
            made = 0
            for _ in llm.generate(ids, temp=0.0, top_k=1, reset=True):
                made += 1
                if made == NEW_TOKENS:
                    break
            if attempt:
                best = max(best, made / (time.perf_counter() - began))
        rows.append({"model": path.name, "bytes": path.stat().st_size, "tokens_per_second": best})
    for row in rows:
        print(f"{row['model']:<28} {row['tokens_per_second']:7.1f} tokens/s")
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
