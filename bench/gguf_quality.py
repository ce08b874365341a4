"""Held-out perplexity of GGUF files run in llama.cpp, on the embedded default's held-out
play: does a quantized student keep its quality on the fast CPU path?

    .venv/bin/python bench/gguf_quality.py --student runs/default-seed0/student \\
        NAME=FILE.gguf [NAME=FILE.gguf ...] [--out bench/results/gguf_quality.json]

Needs ``llama-cpp-python`` (``pip install -e '.[llama]'``). The held-out blocks are the
default recipe's, tokenized by the student's tokenizer (every file here shares it); each
block is evaluated alone (``n_ctx`` = the block) and token ``t + 1`` scored from the logits
at ``t``, as `potstill.evaluation` scores the HF models (`bench/quantize.py` gives those).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from potstill.config import load_recipe
from potstill.data import load_data
from potstill.models.load import load_causal_lm


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--student", required=True, help="the float32 student folder")
    parser.add_argument("gguf", nargs="+", help="NAME=FILE.gguf; repeatable")
    parser.add_argument("--out", type=Path, help="write the rows as JSON here")
    args = parser.parse_args()
    from llama_cpp import Llama

    _, tokenizer = load_causal_lm(args.student)
    data = load_data(load_recipe(None).data, tokenizer)
    ids, labels = data.heldout.input_ids, data.heldout.labels  # (N, T)
    rows = []
    for item in args.gguf:
        name, _, path = item.partition("=")
        began = time.perf_counter()
        llm = Llama(
            model_path=path,
            n_ctx=ids.shape[1],
            logits_all=True,
            n_threads=torch.get_num_threads(),
            verbose=False,
        )
        total, count = 0.0, 0
        for x, y in zip(ids.tolist(), labels, strict=True):
            llm.reset()
            llm.eval(x)
            logits = torch.from_numpy(np.array(llm.scores[: len(x)], dtype=np.float32))
            target = y[1:]
            valid = target != -100
            logprobs = torch.log_softmax(logits[:-1], -1)
            picked = logprobs.gather(-1, target.clamp_min(0).unsqueeze(-1)).squeeze(-1)
            total -= float(picked[valid].sum())
            count += int(valid.sum())
        row = {
            "model": name,
            "file": path,
            "bytes": Path(path).stat().st_size,
            "perplexity": math.exp(total / count),
            "tokens": count,
            "seconds": time.perf_counter() - began,
        }
        rows.append(row)
        print(
            f"{name:<34} ppl {row['perplexity']:8.2f}  {row['bytes'] / 1e6:6.1f} MB  "
            f"({count} tokens, {row['seconds']:.0f} s)",
            flush=True,
        )
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
