"""On a GPU: the fused chunked loss equals the unfused one there, and a short default run's
loss falls. Used by bench/gpu_smoke.sh; prints one line per check and exits 1 on a miss.

    python bench/gpu_smoke.py --run-dir runs/gpu-smoke
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

import torch

from potstill.losses import LossTerm, chunked_kd_loss, combine_losses, top_k_signal


def fused_equals_unfused(device: torch.device) -> bool:
    g = torch.Generator(device="cpu").manual_seed(0)
    hidden = torch.randn(2, 300, 64, generator=g).to(device).requires_grad_()
    weight = torch.randn(5000, 64, generator=g).to(device).requires_grad_()
    teacher = torch.randn(2, 300, 5000, generator=g).to(device)
    labels = torch.randint(0, 5000, (2, 300), generator=g).to(device)
    terms = [LossTerm("forward_kl", 0.7, 2.0), LossTerm("cross_entropy", 0.3)]
    ok = True
    for name, signal in (("dense", teacher), ("top-64", top_k_signal(teacher, 64, 2.0))):
        fused, _ = chunked_kd_loss(hidden, weight, signal, terms, labels, chunk_size=128)
        grads = torch.autograd.grad(fused, (hidden, weight))
        plain, _ = combine_losses(terms, hidden @ weight.T, labels, signal)
        want = torch.autograd.grad(plain, (hidden, weight))
        diff = max((a - b).abs().max().item() for a, b in zip(grads, want, strict=True))
        same = torch.allclose(fused, plain, rtol=1e-4, atol=1e-5) and diff < 1e-4
        print(
            f"fused == unfused on {device} ({name}): loss {fused.item():.6f} vs "
            f"{plain.item():.6f}, max grad diff {diff:.2e}: {'ok' if same else 'MISS'}"
        )
        ok &= same
    return ok


def loss_falls(run_dir: str) -> bool:
    text = pathlib.Path(f"{run_dir}/metrics.jsonl").read_text()
    rows = [json.loads(line) for line in text.splitlines()]
    student = [r["loss"] for r in rows if r["model"] == "student"]
    head, tail = sum(student[:5]) / 5, sum(student[-5:]) / 5
    ok = tail < 0.8 * head
    print(f"student loss: first 5 steps {head:.3f}, last 5 {tail:.3f}: {'ok' if ok else 'MISS'}")
    report = json.loads(pathlib.Path(f"{run_dir}/report.json").read_text())
    print(f"report: device {report['run']['device']}, precision {report['run'].get('precision')}")
    return ok


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--run-dir", required=True)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("no CUDA GPU here: run this on a GPU machine")
    good = fused_equals_unfused(torch.device("cuda")) & loss_falls(args.run_dir)
    sys.exit(0 if good else 1)
