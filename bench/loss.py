"""Benchmark the distillation loss alone: forward + backward, 4,096 tokens, V = 49,152, H = 576.

Every alternative starts from the same inputs, built from one seed:

- ``hidden``  ``(4096, 576)`` the student's final hidden states (requires grad),
- ``weight``  ``(49152, 576)`` the student's lm-head weight (requires grad),
- ``teacher`` ``(4096, 49152)`` dense teacher logits (no grad),

and computes, at temperature 1, forward ``KL(teacher ‖ student)`` averaged over tokens,
making its own student logits from ``hidden @ weight.T`` as it would inside its trainer:

- ``naive``: plain torch on the full ``(4096, V)`` logits.
- ``potstill``: `potstill.losses.chunked_kd_loss`, the lm head fused into the loss, chunked.
- ``torchtune``: ``ForwardKLWithChunkedOutputLoss`` (0.6.1) on the list of chunked logits
  that its decoder's ``chunked_output`` makes (8 chunks, its recipes' default). It returns
  KL plus the teacher's entropy (the cross-entropy to the teacher): the same gradient, so
  its value is compared after subtracting that entropy.
- ``trl``: ``GKDTrainer.generalized_jsd_loss`` (TRL 1.16, ``trl.experimental.gkd``) with
  ``beta=0``, which is ``KL(teacher ‖ student)``, on the full logits, called as
  ``GKDTrainer.compute_loss`` calls it (with the labels, so that its "batchmean" divides by
  the number of valid tokens; without labels it would divide by the batch size).

How it is measured: each alternative runs in a fresh subprocess of its own, one after
another (never at the same time: they would compete for the cores). The subprocess
imports everything, builds the inputs (each tensor allocated once, scaled in place, so the
construction sets no higher peak than the resident set it leaves), and reads its resident
set size from ``/proc/self/statm`` as the baseline. It then runs one forward + backward;
``ru_maxrss`` after it, minus the baseline, is the *peak extra memory* (this includes the
gradients themselves). That first run is also the warm-up; the time is the median of
``--repeats`` more runs (gradients reset to None before each). Loss values and the
gradients w.r.t. the hidden states and the weight are compared with the naive ones.
Memory is reported in GB = 10^9 bytes.

    bash bench/setup.sh && .venv-bench/bin/python bench/loss.py
    .venv-bench/bin/python bench/loss.py --chunk-sizes 256,512,1024 --out loss.json

Without torchtune or TRL importable, those alternatives are skipped with a note.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

TOKENS, VOCAB, HIDDEN = 4096, 49_152, 576
# potstill's tokens per chunk. At 128 a chunk's (c, V) float32 temporaries are 25 MB, under
# glibc's 32 MB mmap ceiling, so freed ones are reused from the heap; from 256 up each is a
# fresh mmap, page-faulted anew every chunk (~2.4M faults, ~4.5 s of system time per run).
# Measured: 128 -> 0.17x naive's memory, 0.78x its time; 256 -> 0.15x, 1.23x; 512 -> 0.28x.
DEFAULT_CHUNK_SIZE = 128
TORCHTUNE_CHUNKS = 8  # num_output_chunks in torchtune's KD recipes
ALTERNATIVES = ("naive", "potstill", "torchtune", "trl")
REFERENCE = "naive"
SEED = 0
# Our issue's targets for potstill, as ratios to naive.
MEMORY_TARGET, TIME_TARGET = 0.20, 1.0
# Agreement with naive in float32: |ΔKL| relative to KL, max |Δ∇| relative to max |∇|.
KL_RTOL, GRAD_RTOL = 1e-5, 1e-4


@dataclass
class Inputs:
    hidden: torch.Tensor  # (N, H) requires grad
    weight: torch.Tensor  # (V, H) requires grad
    teacher: torch.Tensor  # (N, V)
    labels: torch.Tensor  # (1, N) all valid


def make_inputs(tokens: int = TOKENS, seed: int = SEED) -> Inputs:
    """The shared inputs. Every tensor is allocated once and scaled in place, so building
    them leaves the resident set at its peak so far."""
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(tokens, HIDDEN, generator=gen).requires_grad_()
    # Student logits of std ~1.5 and teacher logits of std 2: a KL of a few nats.
    weight = torch.randn(VOCAB, HIDDEN, generator=gen).mul_(1.5 / HIDDEN**0.5).requires_grad_()
    teacher = torch.randn(tokens, VOCAB, generator=gen).mul_(2.0)
    labels = torch.randint(0, VOCAB, (1, tokens), generator=gen)
    return Inputs(hidden, weight, teacher, labels)


# --- the alternatives: each returns the scalar loss, ready for backward ----------------


def naive_loss(x: Inputs, chunk_size: int) -> torch.Tensor:
    student_logits = x.hidden @ x.weight.T  # (N, V)
    teacher_probs = F.softmax(x.teacher, dim=-1)
    kl = teacher_probs * (F.log_softmax(x.teacher, dim=-1) - F.log_softmax(student_logits, dim=-1))
    return kl.sum(-1).mean()


def potstill_loss(x: Inputs, chunk_size: int) -> torch.Tensor:
    from potstill.losses import LossTerm, chunked_kd_loss

    terms = [LossTerm(loss="forward_kl", weight=1.0, temperature=1.0)]
    total, _ = chunked_kd_loss(
        x.hidden[None], x.weight, x.teacher[None], terms, x.labels, chunk_size=chunk_size
    )
    return total


def torchtune_loss(x: Inputs, chunk_size: int) -> torch.Tensor:
    from torchtune.modules.loss import ForwardKLWithChunkedOutputLoss

    # As TransformerDecoder.chunked_output: the lm head applied to each chunk of the
    # hidden states; the teacher's logits arrive chunked the same way.
    student_chunks = [F.linear(h, x.weight) for h in x.hidden[None].chunk(TORCHTUNE_CHUNKS, 1)]
    teacher_chunks = list(x.teacher[None].chunk(TORCHTUNE_CHUNKS, 1))
    loss_fn = ForwardKLWithChunkedOutputLoss(num_output_chunks=TORCHTUNE_CHUNKS)
    return loss_fn(student_chunks, teacher_chunks, x.labels)


def trl_loss(x: Inputs, chunk_size: int) -> torch.Tensor:
    from trl.experimental.gkd import GKDTrainer

    student_logits = F.linear(x.hidden[None], x.weight)  # (1, N, V), the model's .logits
    return GKDTrainer.generalized_jsd_loss(
        student_logits, x.teacher[None], labels=x.labels, beta=0.0
    )


LOSSES: dict[str, Callable[[Inputs, int], torch.Tensor]] = {
    "naive": naive_loss,
    "potstill": potstill_loss,
    "torchtune": torchtune_loss,
    "trl": trl_loss,
}
IMPORTS = {
    "potstill": "potstill.losses",
    "torchtune": "torchtune.modules.loss",
    "trl": "trl.experimental.gkd",
}


def teacher_entropy(teacher: torch.Tensor, chunk_size: int = 512) -> float:
    """Mean over tokens of the teacher's entropy, a chunk of rows at a time."""
    total = 0.0
    for rows in teacher.split(chunk_size):
        logprobs = F.log_softmax(rows, dim=-1)
        total -= (logprobs.exp() * logprobs).sum().item()
    return total / teacher.shape[0]


# --- one alternative in its own process ------------------------------------------------


def rss_bytes() -> int:
    """The resident set size now."""
    resident_pages = int(Path("/proc/self/statm").read_text().split()[1])
    return resident_pages * os.sysconf("SC_PAGE_SIZE")


def peak_rss_bytes() -> int:
    """The resident set's high-water mark so far (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def forward_backward(
    loss_fn: Callable[[Inputs, int], torch.Tensor], x: Inputs, chunk_size: int
) -> tuple[torch.Tensor, float]:
    """One forward + backward from fresh gradients: the loss and the seconds it took."""
    x.hidden.grad = x.weight.grad = None
    start = time.perf_counter()
    loss = loss_fn(x, chunk_size)
    loss.backward()
    return loss.detach(), time.perf_counter() - start


def run_worker(name: str, tokens: int, chunk_size: int, repeats: int, grads_path: Path) -> dict:
    """Measure one alternative in this (fresh) process; the result is JSON-able."""
    if name in IMPORTS:
        try:
            __import__(IMPORTS[name])
        except Exception as error:  # torchtune fails with other than ImportError too
            return {"status": "skipped", "note": f"cannot import {IMPORTS[name]}: {error!r}"}
    x = make_inputs(tokens)
    gc.collect()
    baseline, peak_before = rss_bytes(), peak_rss_bytes()

    loss, first_s = forward_backward(LOSSES[name], x, chunk_size)  # memory run and warm-up
    peak_extra = peak_rss_bytes() - baseline
    torch.save({"hidden": x.hidden.grad, "weight": x.weight.grad}, grads_path)

    times = [forward_backward(LOSSES[name], x, chunk_size)[1] for _ in range(repeats)]
    value = loss.item()
    entropy = teacher_entropy(x.teacher) if name == "torchtune" else 0.0
    return {
        "status": "ok",
        "raw_value": value,
        "kl": value - entropy,  # torchtune's value is KL + H(teacher)
        "teacher_entropy_subtracted": entropy,
        "first_s": first_s,
        "times_s": times,
        "median_s": statistics.median(times),
        "baseline_rss_bytes": baseline,
        "peak_extra_bytes": peak_extra,
        # If construction had peaked above the baseline, a loss peaking lower would be hidden.
        "construction_peak_above_baseline_bytes": max(0, peak_before - baseline),
        "threads": torch.get_num_threads(),
    }


# --- the driver -------------------------------------------------------------------------


@dataclass
class Run:
    label: str  # as printed: "potstill c=1024"
    name: str  # one of ALTERNATIVES
    chunk_size: int


def launch(run: Run, tokens: int, repeats: int, workdir: Path) -> dict:
    """Run one alternative in a fresh subprocess and return its result."""
    grads_path = workdir / f"{run.label.replace(' ', '_').replace('=', '')}.pt"
    cmd = [sys.executable, __file__, "--worker", run.name, "--chunk-sizes", str(run.chunk_size)]
    cmd += ["--tokens", str(tokens), "--repeats", str(repeats), "--grads", str(grads_path)]
    env = {**os.environ, "TRL_EXPERIMENTAL_SILENCE": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        tail = proc.stderr.strip().splitlines()[-5:]
        return {"status": "failed", "note": f"exit {proc.returncode}: " + " | ".join(tail)}
    result = json.loads(lines[-1])
    if result["status"] == "ok":
        result["grads_path"] = str(grads_path)
    return result


def compare(results: dict[str, dict]) -> None:
    """Add each result's differences from the reference's value and gradients."""
    reference = results.get(REFERENCE, {})
    if reference.get("status") != "ok":
        return
    ref_grads = torch.load(reference["grads_path"])
    for result in results.values():
        if result["status"] != "ok":
            continue
        grads = torch.load(result["grads_path"])
        result["kl_abs_diff"] = abs(result["kl"] - reference["kl"])
        for key in ("hidden", "weight"):
            diff = (grads[key] - ref_grads[key]).abs().max().item()
            result[f"grad_{key}_max_abs_diff"] = diff
            result[f"grad_{key}_ref_max_abs"] = ref_grads[key].abs().max().item()
        kl_close = result["kl_abs_diff"] <= KL_RTOL * max(1.0, abs(reference["kl"]))
        grads_close = all(
            result[f"grad_{key}_max_abs_diff"] <= GRAD_RTOL * result[f"grad_{key}_ref_max_abs"]
            for key in ("hidden", "weight")
        )
        result["agrees"] = kl_close and grads_close
        result["memory_ratio"] = result["peak_extra_bytes"] / reference["peak_extra_bytes"]
        result["time_ratio"] = result["median_s"] / reference["median_s"]
        if result["name"] == "potstill":
            result["meets_targets"] = (
                result["memory_ratio"] <= MEMORY_TARGET and result["time_ratio"] <= TIME_TARGET
            )


def print_table(results: dict[str, dict], repeats: int) -> None:
    header = (
        f"{'alternative':<18}{'time s':>8}{'x naive':>9}{'extra GB':>10}{'x naive':>9}"
        f"{'KL':>12}{'|ΔKL|':>10}{'|Δ∇hidden|':>12}{'|Δ∇weight|':>12}{'agree':>7}"
    )
    print(header)
    print("-" * len(header))
    for label, r in results.items():
        if r["status"] != "ok":
            print(f"{label:<18}{r['status']}: {r['note']}")
            continue
        print(
            f"{label:<18}{r['median_s']:>8.2f}{r.get('time_ratio', float('nan')):>9.2f}"
            f"{r['peak_extra_bytes'] / 1e9:>10.2f}{r.get('memory_ratio', float('nan')):>9.2f}"
            f"{r['kl']:>12.6f}{r.get('kl_abs_diff', float('nan')):>10.1e}"
            f"{r.get('grad_hidden_max_abs_diff', float('nan')):>12.1e}"
            f"{r.get('grad_weight_max_abs_diff', float('nan')):>12.1e}"
            f"{_yes_no(r.get('agrees')):>7}"
        )
    ref = results.get(REFERENCE, {})
    if ref.get("status") == "ok":
        print(
            f"\ntime: median of {repeats} runs after a warm-up; extra GB: peak RSS above the "
            f"inputs' (10^9 bytes); Δ: vs {REFERENCE}, whose largest |∇hidden| is "
            f"{ref['grad_hidden_ref_max_abs']:.1e}, |∇weight| "
            f"{ref['grad_weight_ref_max_abs']:.1e}"
        )
    for label, r in results.items():
        if r.get("teacher_entropy_subtracted"):
            print(
                f"{label}: returned {r['raw_value']:.6f} = KL + H(teacher); "
                f"H(teacher) = {r['teacher_entropy_subtracted']:.6f} subtracted"
            )
        if r.get("construction_peak_above_baseline_bytes", 0) > 50e6:
            print(f"warning: {label}'s input construction peaked above its baseline")
        if "meets_targets" in r:
            print(
                f"{label}: memory {r['memory_ratio']:.2f}x naive (target <= {MEMORY_TARGET:.2f}x), "
                f"time {r['time_ratio']:.2f}x (target <= {TIME_TARGET:.2f}x): "
                f"{'targets met' if r['meets_targets'] else 'TARGETS MISSED'}"
            )


def _yes_no(flag: bool | None) -> str:
    return "-" if flag is None else ("yes" if flag else "NO")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=",".join(ALTERNATIVES), help="comma-separated names")
    parser.add_argument(
        "--chunk-sizes", default=str(DEFAULT_CHUNK_SIZE), help="potstill's, comma-separated"
    )
    parser.add_argument("--tokens", type=int, default=TOKENS, help="fewer for a quick check")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs after the warm-up")
    parser.add_argument("--out", type=Path, help="also write the results here as JSON")
    parser.add_argument("--worker", choices=ALTERNATIVES, help=argparse.SUPPRESS)
    parser.add_argument("--grads", type=Path, help=argparse.SUPPRESS)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    chunk_sizes = [int(c) for c in args.chunk_sizes.split(",")]
    if args.worker:
        result = run_worker(args.worker, args.tokens, chunk_sizes[0], args.repeats, args.grads)
        print(json.dumps(result))
        return

    names = args.only.split(",")
    unknown = set(names) - set(ALTERNATIVES)
    if unknown:
        sys.exit(f"unknown alternatives {sorted(unknown)}; choose from {ALTERNATIVES}")
    runs: list[Run] = []
    for name in (n for n in ALTERNATIVES if n in names):
        if name == "potstill":
            runs += [Run(f"potstill c={c}", name, c) for c in chunk_sizes]
        else:
            runs.append(Run(name, name, 0))
    print(
        f"KD loss forward + backward: {args.tokens} tokens, V={VOCAB}, H={HIDDEN}, fp32, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for run in runs:
            print(f"running {run.label} ...", flush=True)
            results[run.label] = {"name": run.name, "chunk_size": run.chunk_size}
            results[run.label] |= launch(run, args.tokens, args.repeats, Path(tmp))
        compare(results)
    for result in results.values():
        result.pop("grads_path", None)
    print()
    print_table(results, args.repeats)
    if args.out:
        config = {"tokens": args.tokens, "vocab": VOCAB, "hidden": HIDDEN, "repeats": args.repeats}
        config |= {"torch": torch.__version__, "torchtune_chunks": TORCHTUNE_CHUNKS}
        args.out.write_text(json.dumps({"config": config, "results": results}, indent=2) + "\n")
        print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
