"""Held-out perplexity of GGUF files run in llama.cpp, on the embedded default's held-out
play: does a quantized student keep its quality on the fast CPU path?

    .venv/bin/python bench/gguf_quality.py --student runs/default-seed0/student \\
        NAME=FILE.gguf [NAME=FILE.gguf ...] [--out bench/results/gguf_quality.json]

Needs ``llama-cpp-python`` (``pip install -e '.[llama]'``). The held-out blocks are the
default recipe's, tokenized by the student's tokenizer (every file here shares it); each
block is evaluated alone in llama.cpp (``n_ctx`` = the block) and scored by the scorer the
report uses (`potstill.tasks.causal_lm.metrics.score_models`), as `bench/quantize.py`
scores the HF models.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from types import SimpleNamespace

import torch

from potstill.config import load_recipe
from potstill.data import load_data
from potstill.models.export import llama_cpp_logits
from potstill.models.load import load_causal_lm
from potstill.tasks.causal_lm.metrics import score_models


class LlamaCppLM(torch.nn.Module):
    """A GGUF in llama.cpp as the ``input_ids -> .logits`` model the scorer takes: each
    block of the batch evaluated alone."""

    def __init__(self, llm) -> None:
        super().__init__()
        self.llm = llm

    def forward(self, input_ids: torch.Tensor) -> SimpleNamespace:
        rows = [llama_cpp_logits(self.llm, row) for row in input_ids.tolist()]
        return SimpleNamespace(logits=torch.stack(rows))  # (B, L, V)


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
        scores = score_models({name: LlamaCppLM(llm)}, ids, labels, teacher=None)[name]
        row = {
            "model": name,
            "file": path,
            "bytes": Path(path).stat().st_size,
            "perplexity": scores.perplexity,
            "tokens": scores.tokens,
            "seconds": time.perf_counter() - began,
        }
        rows.append(row)
        print(
            f"{name:<34} ppl {row['perplexity']:8.2f}  {row['bytes'] / 1e6:6.1f} MB  "
            f"({row['tokens']} tokens, {row['seconds']:.0f} s)",
            flush=True,
        )
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
