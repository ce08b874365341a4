"""A cache taught through a server against one taught here, on the bundled default teacher.

Students of the default recipe's data and student with the loss terms a server can teach
(0.5 forward KL at T = 1 + 0.5 cross-entropy: no hidden_mse), 130 steps (the default
run's, with no time budget, so every student takes the same steps) and no baseline:

- ``ep-local-top20[-seedS]``: a top-20 cache (``teach.top_k=20``) taught here;
- ``ep-endpoint-top20[-seedS]``: the same cache taught through ``potstill serve`` on
  loopback (``teach.endpoint.model``), the server started here as its own process;
- ``ep-local-sampled``: the default 192-draw cache (``teach.samples=192 teach.top_k=0``),
  seed 0: the bias top-k alone adds;
- ``ep-local-top20-1thread`` and ``ep-local-top20-lr``: two controls, students of the
  local top-20 cache itself (seed 0) trained on one thread instead of two, and at an lr
  moved by 5e-5 of itself: how far a change that small moves one student.

Each is a ``potstill run`` subprocess, one after another; a run whose ``report.json``
exists is kept, not run again. ``train.seed`` (the data order, so the blocks taught)
differs by seed. The top-20 caches of each seed are compared block by block, and the
tables are written to ``bench/results/endpoint_teach.md``.

    .venv/bin/python bench/endpoint_teach.py [--seeds 0,1,2] [--port 8765] [--runs-dir runs]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from potstill.cache.reader import TeacherCache

ROOT = Path(__file__).resolve().parent.parent
TEACHER = "bundled:smollm2-135m-instruct"
LOSS = (
    "loss=[{loss: forward_kl, weight: 0.5, temperature: 1.0}, {loss: cross_entropy, weight: 0.5}]"
)
COMMON = ["budget_minutes=null", "train.steps=130", "eval.baseline=false", LOSS]
POTSTILL = str(ROOT / ".venv" / "bin" / "potstill")


def endpoint_overrides(port: int) -> list[str]:
    return [
        "teach.top_k=20",
        f"teach.endpoint.model={TEACHER}",
        f"teach.endpoint.base_url=http://127.0.0.1:{port}/v1",
        "teach.endpoint.api_key_env=null",
        # One server process scores one request at a time: two in flight keep it busy,
        # and a generous timeout rides out a box shared with other jobs.
        "teach.endpoint.concurrency=2",
        "teach.endpoint.timeout_s=600",
    ]


def runs(seeds: list[int]) -> dict[str, Callable[[int], list[str]]]:
    """Each run's name and its overrides (given the server's port): the two top-20 caches
    at every seed, the sampled cache and the control at seed 0."""
    found: dict[str, Callable[[int], list[str]]] = {}
    for seed in seeds:
        # --resume keeps a cache an earlier try already taught. (Seeds 1 and 2 first ran
        # with rollbacks off, when a rollback asked a schedule-planned cache for blocks it
        # never taught; fixed in 4f8b471, they ran again with rollbacks on.)
        tag, extra = ("", []) if seed == 0 else (f"-seed{seed}", [f"train.seed={seed}", "--resume"])
        found[f"ep-local-top20{tag}"] = lambda port, extra=extra: ["teach.top_k=20", *extra]
        found[f"ep-endpoint-top20{tag}"] = lambda port, extra=extra: [
            *endpoint_overrides(port),
            *extra,
        ]
    found["ep-local-sampled"] = lambda port: ["teach.samples=192", "teach.top_k=0"]
    # The control: the local top-20 cache itself, trained on one thread instead of two
    # (another summation order in every kernel, nothing else changed).
    found["ep-local-top20-1thread"] = lambda port: [
        "teach.top_k=20",
        "teach.cache=runs/ep-local-top20/cache",
        "train.threads=1",
    ]
    # A second control: the same cache, the learning rate moved by 5e-5 of itself: how far
    # a change as small as the served cache's few one-step differences moves a student.
    found["ep-local-top20-lr"] = lambda port: [
        "teach.top_k=20",
        "teach.cache=runs/ep-local-top20/cache",
        "train.lr=0.0020001",
    ]
    return found


def command(name: str, overrides: list[str], runs_dir: str) -> list[str]:
    where = [] if runs_dir == "runs" else [f"runs_dir={runs_dir}"]
    return [POTSTILL, "run", f"name={name}", *where, *COMMON, *overrides]


def start_server(port: int) -> subprocess.Popen:
    """``potstill serve TEACHER --port PORT`` on 127.0.0.1, ready once /v1/models answers."""
    server = subprocess.Popen(
        [POTSTILL, "serve", TEACHER, "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 600
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"potstill serve exited with {server.returncode}")
        try:
            with opener.open(f"http://127.0.0.1:{port}/v1/models", timeout=5):
                return server
        except OSError:
            time.sleep(1)
    server.kill()
    raise SystemExit("potstill serve did not answer within 600 s")


def run(name: str, overrides: list[str], port: int, runs_dir: str) -> None:
    report = Path(runs_dir) / name / "report.json"
    if report.is_file():
        print(f"{name}: {report} exists, kept")
        return
    server = start_server(port) if name.startswith("ep-endpoint") else None
    try:
        print(" ".join(command(name, overrides, runs_dir)), flush=True)
        subprocess.run(command(name, overrides, runs_dir), check=True)
    finally:
        if server is not None:
            os.killpg(server.pid, signal.SIGINT)
            server.wait(timeout=60)


def compare_caches(local: Path, served: Path) -> dict[str, Any]:
    """The two top-20 caches over the blocks both hold: how often a position keeps the
    same 20 ids, how far the log-probabilities of the ids both keep are apart, the tails."""
    a, b = TeacherCache.load(local, {}), TeacherCache.load(served, {})
    blocks = torch.tensor(sorted(set(a.manifest.plan) & set(b.manifest.plan)))
    sa, sb = a.signal(blocks), b.signal(blocks)
    ids_a, ids_b = sa.ids.flatten(0, 1).numpy(), sb.ids.flatten(0, 1).numpy()  # (N, K)
    lp_a, lp_b = sa.logprobs.flatten(0, 1).numpy(), sb.logprobs.flatten(0, 1).numpy()
    order_a, order_b = np.argsort(ids_a, axis=1), np.argsort(ids_b, axis=1)
    sorted_a = np.take_along_axis(ids_a, order_a, 1)
    sorted_b = np.take_along_axis(ids_b, order_b, 1)
    same = (sorted_a == sorted_b).all(1)  # (N,)
    diffs = np.abs(
        np.take_along_axis(lp_a, order_a, 1)[same] - np.take_along_axis(lp_b, order_b, 1)[same]
    )
    return {
        "positions": len(same),
        "same_ids": float(same.mean()),
        "max_logprob_diff": float(diffs.max()),
        "mean_logprob_diff": float(diffs.mean()),
        "equal_after_quantization": float((diffs == 0).mean()),
        "tail_mass_local": float(np.exp(sa.tail_logprob.numpy()).mean()),
        "tail_mass_served": float(np.exp(sb.tail_logprob.numpy()).mean()),
        "bytes_per_token_local": a.manifest.bytes_per_token,
        "bytes_per_token_served": b.manifest.bytes_per_token,
        "served_teacher": b.manifest.teacher,
    }


def tag(seed: int) -> str:
    return "" if seed == 0 else f"-seed{seed}"


def largest_rise(run_dir: Path) -> float:
    """The most the student's held-out loss rose above its best so far, in nats (0.3 is
    the rollback rule's margin: a training that broke)."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [
        r["heldout_loss"] for r in rows if r.get("model") == "student" and "heldout_loss" in r
    ]
    return max((loss - min(losses[:i]) for i, loss in enumerate(losses) if i), default=0.0)


def write(plan: dict[str, Callable[[int], list[str]]], seeds: list[int], args: Any) -> None:
    runs_dir = Path(args.runs_dir)
    reports = {name: json.loads((runs_dir / name / "report.json").read_text()) for name in plan}
    ppl = {name: r["models"]["student"]["perplexity"] for name, r in reports.items()}
    teacher_ppl = reports["ep-local-top20"]["models"]["teacher"]["perplexity"]
    lines = [
        "# A cache taught through a server against one taught here",
        "",
        "Written by `bench/endpoint_teach.py` from the runs' `report.json`, `metrics.jsonl`",
        f"and caches, on a shared {os.cpu_count()}-core {platform.machine()} box (other jobs",
        "ran on the same cores: the wall times are what this box gave, not the code's speed).",
        f"Teacher `{TEACHER}`, the default data and student (layers 0, 1, 2, 27, 28, 29),",
        "loss 0.5 forward KL (T = 1) + 0.5 cross-entropy, 130 steps of batch 4 at lr 2e-3",
        "(`train.seed` sets the data order, so the blocks taught); held-out perplexity on",
        f"16,384 tokens. The teacher's own: {teacher_ppl:.2f}. Every run has rollbacks on",
        "(the default). Seeds 1 and 2 first ran with them off: a rollback then asked a",
        "schedule-planned cache for blocks it did not hold (fixed in 4f8b471), and seed 1's",
        "two trainings broke (+39%).",
        "",
        "## Endpoint against local: the same teacher, top 20",
        "",
        "| seed | local top-20 | endpoint top-20 | endpoint vs local "
        "| held-out loss rose (local, endpoint; nats) | same 20 ids "
        "| log-probabilities equal after 8-bit quantization | largest difference (nats) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    gaps, stable = {}, []
    for seed in seeds:
        local, served = f"ep-local-top20{tag(seed)}", f"ep-endpoint-top20{tag(seed)}"
        caches = compare_caches(runs_dir / local / "cache", runs_dir / served / "cache")
        rises = largest_rise(runs_dir / local), largest_rise(runs_dir / served)
        gaps[seed] = ppl[served] / ppl[local] - 1
        if max(rises) < 0.3:
            stable.append(seed)
        lines.append(
            f"| {seed} | {ppl[local]:.2f} | {ppl[served]:.2f} | {100 * gaps[seed]:+.2f}% "
            f"| {rises[0]:.2f}, {rises[1]:.2f} "
            f"| {100 * caches['same_ids']:.3f}% | {100 * caches['equal_after_quantization']:.3f}% "
            f"| {caches['max_logprob_diff']:.4f} |"
        )

    def means(chosen: list[int]) -> tuple[float, float]:
        local = np.mean([ppl[f"ep-local-top20{tag(s)}"] for s in chosen])
        served = np.mean([ppl[f"ep-endpoint-top20{tag(s)}"] for s in chosen])
        return float(local), float(served)

    def mean_gap(chosen: list[int]) -> float:
        local, served = means(chosen)
        return served / local - 1

    broke = [s for s in seeds if s not in stable]
    lines += [
        "",
        f"Seed by seed the gap runs from {100 * min(gaps.values()):+.2f}% to "
        f"{100 * max(gaps.values()):+.2f}%, of either sign; over all {len(seeds)} seeds the "
        f"endpoint students' mean perplexity is {100 * mean_gap(seeds):+.2f}% from the local "
        "ones'. "
        + (
            f"Seed {', '.join(map(str, broke))} is a training that broke: a held-out loss rose "
            "over 0.3 nats above its best (the rollback rule's margin), and the two students "
            "recovered to different points. "
            if broke
            else ""
        )
        + f"Over the seeds whose training did not break ({', '.join(map(str, stable))}) the "
        f"mean perplexities are {means(stable)[0]:.3f} (local) and {means(stable)[1]:.3f} "
        f"(endpoint), {100 * mean_gap(stable):+.3f}% apart (the goal: within 1%).",
        "",
        "The caches themselves hold the same 20 ids at every position, their "
        "log-probabilities equal after quantization but at a few grid boundaries, where "
        "float rounding (the server's log-softmax against the local top-k arithmetic, the "
        "tail as log(1 − Σp) against a log-sum-exp) puts a value one 8-bit step (0.125 nats) "
        "apart.",
        "",
        "## Top-k against the sampled cache, and two controls (seed 0)",
        "",
        "| student's cache | student perplexity | vs local top-20 | cache bytes/token |",
        "|---|---:|---:|---:|",
    ]
    local0 = ppl["ep-local-top20"]
    for label, name in [
        ("local top-20", "ep-local-top20"),
        ("endpoint top-20", "ep-endpoint-top20"),
        ("local sampled (192 draws)", "ep-local-sampled"),
        ("control: the local top-20 cache, trained on 1 thread", "ep-local-top20-1thread"),
        ("control: the local top-20 cache, lr 2.0001e-3", "ep-local-top20-lr"),
    ]:
        bytes_ = reports[name]["recipe"]["teacher_signal"]["bytes_per_token"]
        lines.append(
            f"| {label} | {ppl[name]:.2f} | {100 * (ppl[name] / local0 - 1):+.2f}% | {bytes_:.1f} |"
        )
    sampled = ppl["ep-local-sampled"]
    threads, lr = ppl["ep-local-top20-1thread"], ppl["ep-local-top20-lr"]
    lines += [
        "",
        f"The bias top-k alone adds: the local top-20 student is "
        f"{100 * (local0 / sampled - 1):+.2f}% against the student of the default sampled "
        "cache, an unbiased estimate of the teacher's distribution (seed 0 only). The "
        "1-thread control trained bit for bit as the 2-thread run did "
        f"({100 * (threads / local0 - 1):+.2f}%): training is deterministic here, so two "
        "students differ only through their inputs. The lr control changes one input by "
        f"5e-5 of itself and moves the student {100 * (lr / local0 - 1):+.2f}%: at lr 2e-3 "
        "130 steps amplify any change, however small, and one seed cannot tell two caches "
        "apart more finely than that.",
        "",
        "## Wall times (this shared box)",
        "",
        "| run | teach s | run wall s |",
        "|---|---:|---:|",
    ]
    for name in plan:
        report = reports[name]
        lines.append(
            f"| {name} | {report['recipe']['teacher_signal']['teach_seconds']:.0f} "
            f"| {report['run']['wall_seconds']:.0f} |"
        )
    lines += [
        "",
        "A reused cache (`teach.cache`) shows 0 teach seconds; a run that was refused and "
        "resumed (`--resume`) shows its first try's teach time and its last try's wall time.",
        "",
        f"Commands (one after another; each `ep-endpoint-*` with `potstill serve {TEACHER} "
        f"--port {args.port}` running, started and stopped by the script):",
        "",
        "```bash",
        f"python bench/endpoint_teach.py --seeds {','.join(map(str, seeds))}",
        *[
            " ".join(
                f"'{w}'" if " " in w else w
                for w in [
                    ".venv/bin/potstill",
                    *command(name, overrides(args.port), args.runs_dir)[1:],
                ]
            )
            for name, overrides in plan.items()
        ],
        "```",
        "",
    ]
    Path(args.out).write_text("\n".join(lines))
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--runs-dir", default="runs")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "endpoint_teach.md"))
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    plan = runs(seeds)
    for name, overrides in plan.items():
        run(name, overrides(args.port), args.port, args.runs_dir)
    write(plan, seeds, args)


if __name__ == "__main__":
    sys.exit(main())
