"""The student's variants side by side: float32, post-training int8 and int4, and
quantization-aware (QAD) int4, with the teacher for reference.

    .venv/bin/python bench/quantize.py --student runs/default-seed0/student \\
        --qad qad-int4=runs/qad-int4/student [--out bench/results/quantize.json]

The post-training variants are made from ``--student`` by `potstill.quantize` (into
``--work``, once). Each model is measured in its own subprocess, so its peak resident
memory (``ru_maxrss``: loading, scoring and generating) is its own: held-out perplexity on
the embedded default's held-out play, top-1 agreement with the teacher's greedy choice
(from the teacher's logits, computed once and stored in ``--work``), size on disk (weight
files), batch-1 greedy generation speed (32 new tokens, best of 3).
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from potstill.api import quantize
from potstill.config import load_recipe
from potstill.data import load_data
from potstill.evaluation.size import count_params, size_on_disk
from potstill.evaluation.speed import generation_tokens_per_second
from potstill.models.load import load_causal_lm, resolve

TEACHER = "bundled:smollm2-135m-instruct"
PTQ = {"ptq-int8": ("int8", None), "ptq-int4": ("int4", 32), "ptq-int4-g16": ("int4", 16)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--student", type=Path, help="the float32 student folder")
    parser.add_argument(
        "--qad",
        action="append",
        default=[],
        help="NAME=FOLDER of a QAD student (a student.qat run's student/); repeatable",
    )
    parser.add_argument("--work", type=Path, default=Path("runs/bench-quantize"))
    parser.add_argument("--out", type=Path, help="write the rows as JSON here")
    parser.add_argument("--measure", help=argparse.SUPPRESS)  # internal: one model
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(_measure(args.measure, args.work)))
        return
    args.work.mkdir(parents=True, exist_ok=True)
    models: dict[str, str] = {"teacher": TEACHER, "fp32": str(args.student)}
    for name, (weights, group) in PTQ.items():
        folder = args.work / name
        if not folder.exists():
            quantize(str(args.student), folder, weights=weights, group_size=group)
        models[name] = str(folder)
    for item in args.qad:
        name, _, folder = item.partition("=")
        models[name] = folder
    _teacher_choices(args.work)
    rows = []
    for name, ref in models.items():
        out = subprocess.run(
            [sys.executable, __file__, "--measure", ref, "--work", str(args.work)],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        row = {"variant": name, "ref": ref, **json.loads(out.strip().splitlines()[-1])}
        rows.append(row)
        print(
            f"{name:<9} ppl {row['perplexity']:8.2f}  top-1 {row['top1']:.3f}  "
            f"size {row['size_bytes'] / 1e6:7.1f} MB  {row['tokens_per_second']:6.1f} tok/s  "
            f"peak RAM {row['peak_rss_bytes'] / 2**20:6.0f} MiB",
            flush=True,
        )
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2) + "\n")
    fp32 = next(r for r in rows if r["variant"] == "fp32")
    print("\n| model | perplexity | vs fp32 | top-1 | size | vs fp32 | tokens/s | peak RAM |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['variant']} | {r['perplexity']:.2f} | "
            f"{r['perplexity'] / fp32['perplexity'] - 1:+.1%} | {r['top1']:.1%} | "
            f"{r['size_bytes'] / 1e6:.1f} MB | {r['size_bytes'] / fp32['size_bytes']:.3f} | "
            f"{r['tokens_per_second']:.1f} | {r['peak_rss_bytes'] / 2**20:.0f} MiB |"
        )


def _data(tokenizer: Any) -> tuple[Any, int]:
    """The embedded default's data (every model here shares the teacher's vocabulary, so
    its own tokenizer gives the same blocks) and the evaluation batch size."""
    recipe = load_recipe(None)
    return load_data(recipe.data, tokenizer), recipe.eval.batch_size


def _teacher_choices(work: Path) -> None:
    """The teacher's greedy next token at every held-out position, stored once."""
    path = work / "teacher-top1.pt"
    if path.is_file():
        return
    teacher, tokenizer = load_causal_lm(TEACHER)
    data, batch_size = _data(tokenizer)
    torch.save(_top1(teacher, data.heldout.input_ids, batch_size), path)
    (work / "teacher-data.txt").write_text(data.fingerprint)


@torch.no_grad()
def _top1(model: torch.nn.Module, input_ids: torch.Tensor, batch_size: int) -> torch.Tensor:
    return torch.cat(
        [model(ids).logits.argmax(-1) for ids in input_ids.split(batch_size)]
    )  # (N, T)


@torch.no_grad()
def _measure(ref: str, work: Path) -> dict[str, Any]:
    began = time.perf_counter()
    model, tokenizer = load_causal_lm(ref)
    load_seconds = time.perf_counter() - began
    data, batch_size = _data(tokenizer)
    if data.fingerprint != (work / "teacher-data.txt").read_text():
        raise SystemExit(f"{ref} tokenizes the data differently from the teacher")
    ids, labels = data.heldout.input_ids, data.heldout.labels
    total, count, agree = 0.0, 0, 0
    teacher_top1 = torch.load(work / "teacher-top1.pt", weights_only=True)
    for i, (x, y) in enumerate(zip(ids.split(batch_size), labels.split(batch_size), strict=True)):
        # HF labels (unshifted): the logits at t are scored against the token at t + 1.
        logits = model(x).logits.float()[:, :-1]  # (B, T-1, V)
        target = y[:, 1:]  # (B, T-1)
        valid = target != -100
        logprobs = torch.log_softmax(logits, -1)
        picked = logprobs.gather(-1, target.clamp_min(0).unsqueeze(-1)).squeeze(-1)
        total -= picked[valid].sum().item()
        count += int(valid.sum())
        theirs = teacher_top1[i * batch_size : i * batch_size + len(x), :-1]
        agree += int((logits.argmax(-1) == theirs)[valid].sum())
    prompt = ids[:1, :16]
    speed = generation_tokens_per_second(model, prompt, new_tokens=32, repeats=3)
    return {
        "perplexity": math.exp(total / count),
        "top1": agree / count,
        "tokens": count,
        "params": count_params(model),
        "size_bytes": size_on_disk(resolve(ref)),
        "tokens_per_second": speed,
        "load_seconds": load_seconds,
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }


if __name__ == "__main__":
    main()
