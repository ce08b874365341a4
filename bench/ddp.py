"""One process against two (DDP over gloo, ``torchrun``) on the default student, from the
default run's teacher cache, at the same global batch.

    .venv/bin/python bench/ddp.py --run runs/default-seed0 --steps 20 --out bench/results/ddp.json

Both runs are `potstill distill` of the run's own recipe (its ``config.yaml``) with
``teach.cache`` pointing at its cache and ``train.steps`` cut to ``--steps``: one
process with ``train.threads`` = the machine's cores, then ``torchrun --nproc-per-node 2``
with one thread each. Reported: each step's loss in both, the largest weight difference of
the two students, and training tokens/s (from ``metrics.jsonl``; the first step, which
warms up, is left out).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from safetensors.torch import load_file


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=Path("runs/default-seed0"))
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--work", type=Path, default=Path("runs/bench-ddp"))
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    common = [
        str(args.run / "config.yaml"),
        f"runs_dir={args.work}",
        f"teach.cache={args.run / 'cache'}",
        f"train.steps={args.steps}",
        "budget_minutes=null",
    ]
    runs = {
        "1 process": ([sys.executable, "-m", "potstill"], f"train.threads={cores}"),
        "2 processes": (_torchrun(2), "train.threads=1"),
    }
    rows = {}
    for label, (launcher, threads) in runs.items():
        name = "one" if label == "1 process" else "two"
        began = time.perf_counter()
        subprocess.run(
            [*launcher, "distill", *common, f"name={name}", threads],
            check=True,
            env={**os.environ, "OMP_NUM_THREADS": "1" if name == "two" else str(cores)},
        )
        wall = time.perf_counter() - began
        metrics = [
            json.loads(line)
            for line in (args.work / name / "metrics.jsonl").read_text().splitlines()
            if json.loads(line)["model"] == "student"
        ]
        first, last = metrics[0], metrics[-1]  # the first step warms up: not timed
        rows[label] = {
            "wall_seconds": wall,
            "losses": [m["loss"] for m in metrics],
            "tokens_per_second": (last["tokens"] - first["tokens"])
            / (last["elapsed"] - first["elapsed"]),
        }
    one = load_file(str(args.work / "one" / "student" / "model.safetensors"))
    two = load_file(str(args.work / "two" / "student" / "model.safetensors"))
    worst = max(float((one[k] - two[k]).abs().max()) for k in one)
    loss_diff = max(
        abs(a - b)
        for a, b in zip(rows["1 process"]["losses"], rows["2 processes"]["losses"], strict=True)
    )
    result = {
        "steps": args.steps,
        "run": str(args.run),
        "cores": cores,
        "max_weight_difference": worst,
        "max_loss_difference": loss_diff,
        "speed_ratio_two_over_one": rows["2 processes"]["tokens_per_second"]
        / rows["1 process"]["tokens_per_second"],
        **rows,
    }
    for label, row in rows.items():
        print(
            f"{label:<12} final loss {row['losses'][-1]:.6f}  "
            f"{row['tokens_per_second']:7.1f} tok/s  wall {row['wall_seconds']:.0f} s"
        )
    print(
        f"largest weight difference {worst:.2e}, largest loss difference {loss_diff:.2e}, "
        f"2 processes / 1 process speed {result['speed_ratio_two_over_one']:.2f}"
    )
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


def _torchrun(processes: int) -> list[str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc-per-node={processes}",
        "--master-addr=127.0.0.1",
        f"--master-port={port}",
        "-m",
        "potstill",
    ]


if __name__ == "__main__":
    main()
