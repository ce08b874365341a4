"""What `train.gradient_checkpointing` saves and costs, on the default student.

    .venv/bin/python bench/checkpointing.py [--batch 8] [--lengths 128,512] [--steps 3]

For each sequence length, two fresh processes train the default student (6 of SmolLM2's
30 layers, copied from the bundled teacher) for ``--steps`` cross-entropy steps on the
same random token batch, one with and one without `potstill.train.loop.checkpoint_blocks`
(transformers' non-reentrant gradient checkpointing). Each reports its peak resident
memory (``VmHWM``), its peak above what it held before the first step (the weights,
AdamW's state once allocated, the activations), its median step time, and its first
step's gradients; the script compares the two runs' gradients (largest absolute
difference: recomputed activations must give the same gradients up to float rounding).
The processes run one after another; step times are ratios within one pair.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = """
import json, statistics, sys, time
import torch
from safetensors.torch import save_file
from potstill.config import load_recipe
from potstill.models.load import load_causal_lm
from potstill.models.student import build_student
from potstill.train.loop import checkpoint_blocks

def peak_kb():
    status = open("/proc/self/status").read().splitlines()
    return int(next(l.split()[1] for l in status if l.startswith("VmHWM")))

def current_kb():
    status = open("/proc/self/status").read().splitlines()
    return int(next(l.split()[1] for l in status if l.startswith("VmRSS")))

batch, length, steps, ckpt, grads_out = (
    int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1", sys.argv[5])
torch.manual_seed(0)
torch.set_num_threads(2)
recipe = load_recipe(None)
teacher, tokenizer = load_causal_lm(recipe.teacher)
student, _ = build_student(recipe.student, teacher, tokenizer)
del teacher
student.train()
if ckpt:
    checkpoint_blocks(student)
ids = torch.randint(0, student.config.vocab_size, (batch, length),
                    generator=torch.Generator().manual_seed(1))
optimizer = torch.optim.AdamW(student.parameters(), lr=1e-4)
before = current_kb()
times = []
for step in range(steps):
    begin = time.perf_counter()
    loss = student(input_ids=ids, labels=ids).loss
    loss.backward()
    if step == 0:
        save_file({n: p.grad.contiguous() for n, p in student.named_parameters()
                   if p.grad is not None}, grads_out)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    times.append(time.perf_counter() - begin)
print("RESULT", json.dumps({"peak_kb": peak_kb(), "before_kb": before,
      "step_seconds": statistics.median(times[1:] or times), "loss": float(loss)}), flush=True)
"""


def child(batch: int, length: int, steps: int, ckpt: bool, grads: Path) -> dict:
    args = [str(batch), str(length), str(steps), "1" if ckpt else "0", str(grads)]
    done = subprocess.run([sys.executable, "-c", CHILD, *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(done.stderr[-3000:])
    line = next(x for x in done.stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line.removeprefix("RESULT "))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--lengths", default="128,512")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("bench/results/checkpointing.json"))
    args = parser.parse_args()
    from safetensors.torch import load_file

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for length in (int(x) for x in args.lengths.split(",")):
            runs = {}
            for ckpt in (False, True):
                grads = Path(tmp) / f"grads-{length}-{int(ckpt)}.safetensors"
                runs[ckpt] = child(args.batch, length, args.steps, ckpt, grads)
                runs[ckpt]["grads"] = load_file(str(grads))
            plain, ckpt = runs[False], runs[True]
            difference = max(
                float((plain["grads"][n] - ckpt["grads"][n]).abs().max()) for n in plain["grads"]
            )
            scale = max(float(g.abs().max()) for g in plain["grads"].values())
            row = {
                "batch": args.batch,
                "length": length,
                "peak_mb": plain["peak_kb"] / 1024,
                "peak_mb_checkpointing": ckpt["peak_kb"] / 1024,
                "training_mb": (plain["peak_kb"] - plain["before_kb"]) / 1024,
                "training_mb_checkpointing": (ckpt["peak_kb"] - ckpt["before_kb"]) / 1024,
                "step_seconds": plain["step_seconds"],
                "step_seconds_checkpointing": ckpt["step_seconds"],
                "max_grad_difference": difference,
                "max_grad": scale,
            }
            rows.append(row)
            print(
                f"batch {args.batch} x {length}: peak {row['peak_mb']:.0f} -> "
                f"{row['peak_mb_checkpointing']:.0f} MB (above the loaded model "
                f"{row['training_mb']:.0f} -> {row['training_mb_checkpointing']:.0f} MB), "
                f"step x{row['step_seconds_checkpointing'] / row['step_seconds']:.2f}, "
                f"gradients differ by at most {difference:.2e} (largest {scale:.2e})",
                flush=True,
            )
    args.out.write_text(json.dumps(rows, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
