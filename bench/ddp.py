"""One process against two (DDP and FSDP over gloo, ``torchrun``) on the default student,
from the default run's teacher cache, at the same global batch.

    .venv/bin/python bench/ddp.py --run runs/default-seed0 --steps 20 --out bench/results/ddp.json

Every run is `potstill distill` of the run's own recipe (its ``config.yaml``) with
``teach.cache`` pointing at its cache and ``train.steps`` cut to ``--steps``: one process
with ``train.threads`` = the machine's cores, then ``torchrun --nproc-per-node 2`` with one
thread each, with ``train.parallel`` ddp and then fsdp; and, as the control for float32
summation order, one process with one thread. For FSDP, the share of the parameter values
rank 0 holds is read from its log. Reported: each step's loss, the largest weight
difference of each student from the one-process one, and training tokens/s (from
``metrics.jsonl``; the first step, which warms up, is left out). Two runs that differ
only in the order float32 sums are taken (the thread count does that too) agree to
rounding for the first steps and then drift apart as training amplifies the differences;
the control shows how far that alone goes.
"""

from __future__ import annotations

import argparse
import json
import os
import re
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
    runs = {  # label: (launcher, run name, threads per process)
        "1 process": ([sys.executable, "-m", "potstill"], "one", cores),
        "2 processes": (_torchrun(2), "two", 1),
        "2 processes, FSDP": (_torchrun(2), "fsdp", 1),
        "1 process, 1 thread (control)": ([sys.executable, "-m", "potstill"], "one-thread", 1),
    }
    rows = {}
    for label, (launcher, name, threads) in runs.items():
        began = time.perf_counter()
        parallel = "fsdp" if name == "fsdp" else "ddp"
        done = subprocess.run(
            [
                *launcher,
                "distill",
                *common,
                f"name={name}",
                f"train.threads={threads}",
                f"train.parallel={parallel}",
            ],
            env={**os.environ, "OMP_NUM_THREADS": str(threads)},
            stderr=subprocess.PIPE,
            text=True,
        )
        wall = time.perf_counter() - began
        sys.stderr.write(done.stderr)
        done.check_returncode()
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
        held = re.search(r"this process holds ([\d,]+) of ([\d,]+) parameter values", done.stderr)
        if held:
            local, whole = (int(g.replace(",", "")) for g in held.groups())
            rows[label] |= {"rank0_parameter_values": local, "parameter_values": whole}
    one = load_file(str(args.work / "one" / "student" / "model.safetensors"))
    reference = rows["1 process"]["losses"]
    for label, (_, name, _) in runs.items():
        weights = load_file(str(args.work / name / "student" / "model.safetensors"))
        losses = rows[label]["losses"]
        rows[label]["max_weight_difference"] = max(
            float((one[k] - weights[k]).abs().max()) for k in one
        )
        gaps = [abs(a - b) for a, b in zip(reference, losses, strict=True)]
        rows[label]["max_loss_difference"] = max(gaps)
        # the last step whose loss still agrees with one process's to 1e-5
        rows[label]["steps_agreeing_to_1e-5"] = next(
            (i for i, gap in enumerate(gaps) if gap > 1e-5), len(gaps)
        )
    result = {
        "steps": args.steps,
        "run": str(args.run),
        "cores": cores,
        "speed_ratio_two_over_one": rows["2 processes"]["tokens_per_second"]
        / rows["1 process"]["tokens_per_second"],
        "speed_ratio_fsdp_over_one": rows["2 processes, FSDP"]["tokens_per_second"]
        / rows["1 process"]["tokens_per_second"],
        **rows,
    }
    for label, row in rows.items():
        print(
            f"{label:<30} final loss {row['losses'][-1]:.6f}  "
            f"{row['tokens_per_second']:7.1f} tok/s  wall {row['wall_seconds']:4.0f} s  "
            f"vs 1 process: weights {row['max_weight_difference']:.2e}, loss "
            f"{row['max_loss_difference']:.2e}, steps agreeing {row['steps_agreeing_to_1e-5']}"
        )
    print(f"2 processes / 1 process speed {result['speed_ratio_two_over_one']:.2f}")
    print(f"FSDP / 1 process speed {result['speed_ratio_fsdp_over_one']:.2f}")
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
