"""Where a default training step's time goes, against what this machine's GEMM can do.

    .venv/bin/python bench/profile_step.py [--steps 6]

Measures, in one process on this machine: the fp32 GEMM rate (square 1024 and 2048
matmuls, and the LM head's own shape), the memory bandwidth (a 256 MB copy), and one
cross-entropy training step of the default student (6 of SmolLM2's 30 layers, batch
4 x 128) split into its phases: decoder forward, the loss fused with the LM head (its
backward runs inside, chunk by chunk), decoder backward, clip + AdamW. Each phase's
FLOPs (2 per multiply-add, from the layer shapes) divided by its time gives the rate it
reaches; a phase far below the GEMM rate is bound by something else (memory traffic,
elementwise kernels, the allocator). Median of ``--steps`` steps after one warm-up.

Then the teacher pass the default run's `teach` makes, batch by batch (``teach.batch_size``
blocks): the teacher's decoder forward (30 layers, keeping every hidden state), its LM
head over every position, the cache signal (192 draws per token from the softmax), the
hidden states kept (five layers to float16) and the entropy coder. Median of ``--steps``
batches after one warm-up.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from potstill.cache import codec
from potstill.config import Recipe, load_recipe
from potstill.data import LMData, load_data
from potstill.losses import LossTerm, chunked_kd_loss, signal_request
from potstill.losses.sampled import sampled_signal
from potstill.models.load import load_causal_lm
from potstill.models.student import build_student
from potstill.pipeline.context import kept_layers
from potstill.tasks.causal_lm import find_fused_head, resolve_inside


def gemm_rate(m: int, k: int, n: int, repeats: int = 5) -> float:
    a, b = torch.randn(m, k), torch.randn(k, n)
    a @ b  # warm-up
    times = []
    for _ in range(repeats):
        begin = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - begin)
    return 2 * m * k * n / min(times) / 1e9


def bandwidth() -> float:
    src = torch.empty(64 * 1024 * 1024)  # 256 MB of float32
    dst = torch.empty_like(src)
    dst.copy_(src)
    begin = time.perf_counter()
    for _ in range(5):
        dst.copy_(src)
    return 5 * 2 * src.numel() * 4 / (time.perf_counter() - begin) / 1e9  # read + write


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6)
    args = parser.parse_args()
    print(f"threads: {torch.get_num_threads()}, torch {torch.__version__}")
    square = {n: gemm_rate(n, n, n) for n in (1024, 2048)}
    for n, rate in square.items():
        print(f"fp32 GEMM {n}x{n}x{n}: {rate:6.1f} GFLOP/s")

    recipe = load_recipe(None, ["budget_minutes=null"])
    teacher, tokenizer = load_causal_lm(recipe.teacher)
    data = load_data(recipe.data, tokenizer)
    student, _ = build_student(recipe.student, teacher, tokenizer)
    fused = find_fused_head(student, data.train.input_ids[:1])
    assert fused is not None
    hidden_size = student.config.hidden_size
    vocab = fused.head.weight.shape[0]
    b, t = recipe.train.batch_size, recipe.data.block_size
    tokens = b * (t - 1)
    head_rate = gemm_rate(tokens, hidden_size, vocab)
    print(f"fp32 GEMM LM-head shape {tokens}x{hidden_size}x{vocab}: {head_rate:6.1f} GFLOP/s")
    print(f"memory bandwidth (copy): {bandwidth():6.1f} GB/s")

    decoder_params = sum(
        p.numel() for n, p in student.named_parameters() if "layers." in n and p.dim() == 2
    )
    flops = {
        "decoder forward": 2 * decoder_params * b * t,
        "fused head loss": 6 * hidden_size * vocab * tokens,  # forward + both backward GEMMs
        "decoder backward": 4 * decoder_params * b * t,
        "clip + AdamW": 0,
    }
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-5)
    terms = [LossTerm("cross_entropy")]
    phases: dict[str, list[float]] = {name: [] for name in flops}
    student.train()
    for step in range(args.steps + 1):
        batch = data.train.batch(torch.arange(step * b, (step + 1) * b))
        marks = [time.perf_counter()]
        hidden = fused.decoder(input_ids=batch.input_ids, use_cache=False).last_hidden_state
        marks.append(time.perf_counter())
        loss, _ = chunked_kd_loss(
            hidden[:, :-1], fused.head.weight, None, terms, batch.labels[:, 1:], chunk_size=128
        )
        marks.append(time.perf_counter())
        loss.backward()
        marks.append(time.perf_counter())
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        marks.append(time.perf_counter())
        if step > 0:
            for name, begin, end in zip(flops, marks[:-1], marks[1:], strict=True):
                phases[name].append(end - begin)
    total = sum(statistics.median(v) for v in phases.values())
    print(f"\ndefault student step (CE, {b}x{t} tokens), median of {args.steps}: {total:.3f} s")
    peak = max(square.values())
    all_flops = print_phases(phases, flops, peak, "step")
    print(
        f"\nat this machine's best GEMM rate ({peak:.0f} GFLOP/s) the step's matmuls alone take "
        f"{all_flops / peak:.3f} s; the step takes {total / (all_flops / peak):.2f}x that"
    )
    profile_teach(recipe, teacher, student, data, args.steps, peak)


def print_phases(
    phases: dict[str, list[float]], flops: dict[str, int], peak: float, whole: str
) -> float:
    """A table of each phase's median seconds, share, GFLOP and rate against the GEMM
    ``peak``, then the ``whole``; returns the whole's GFLOP."""
    total = sum(statistics.median(v) for v in phases.values())
    print(f"{'phase':<18} {'seconds':>8} {'share':>6} {'GFLOP':>7} {'GFLOP/s':>8} {'of GEMM':>8}")
    for name, times in phases.items():
        seconds = statistics.median(times)
        gflop = flops[name] / 1e9
        rate = gflop / seconds if gflop else 0.0
        share = f"{rate / peak:7.0%}" if gflop else "      –"
        print(
            f"{name:<18} {seconds:8.3f} {seconds / total:6.0%} {gflop:7.1f} {rate:8.1f} {share:>8}"
        )
    all_flops = sum(flops.values()) / 1e9
    print(f"{whole:<18} {total:8.3f} {'100%':>6} {all_flops:7.1f} {all_flops / total:8.1f}")
    return all_flops


def profile_teach(
    recipe: Recipe, teacher: nn.Module, student: nn.Module, data: LMData, batches: int, peak: float
) -> None:
    """The default run's teacher pass, phase by phase, as `potstill teach` runs it."""
    resolved = resolve_inside(recipe.terms, student, teacher, kept=kept_layers(recipe))
    layers = signal_request(resolved).hidden_layers
    fused = find_fused_head(teacher, data.train.input_ids[:1])
    assert fused is not None
    b, t = recipe.teach.batch_size, recipe.data.block_size
    hidden_size, vocab = teacher.config.hidden_size, fused.head.weight.shape[0]
    decoder_params = sum(
        p.numel() for n, p in teacher.named_parameters() if "layers." in n and p.dim() == 2
    )
    flops = {
        "decoder forward": 2 * decoder_params * b * t,
        "LM head": 2 * hidden_size * vocab * b * t,
        "192 draws": 0,
        "hidden states": 0,
        "entropy coder": 0,
    }
    phases: dict[str, list[float]] = {name: [] for name in flops}
    generator = torch.Generator().manual_seed(0)
    teacher.eval()
    for step in range(batches + 1):
        batch = data.train.batch(torch.arange(step * b, (step + 1) * b))
        marks = [time.perf_counter()]
        with torch.inference_mode():
            out = fused.decoder(
                input_ids=batch.input_ids, use_cache=False, output_hidden_states=True
            )
            marks.append(time.perf_counter())
            logits = fused.head(out.last_hidden_state)[:, :-1]  # (B, L − 1, V)
            marks.append(time.perf_counter())
            signal = sampled_signal(
                logits, recipe.teach.samples, top=recipe.teach.top_k, generator=generator
            )
            marks.append(time.perf_counter())
            stacked = torch.stack([out.hidden_states[i] for i in layers], dim=2)[:, :-1]
            stacked.to(torch.float16).numpy().astype("<f2").tobytes()
            marks.append(time.perf_counter())
        k = signal.ids.shape[-1]
        codec.encode(
            signal.ids.reshape(-1, k).numpy(),
            signal.logprobs.reshape(-1, k).float().numpy(),
            signal.tail_logprob.reshape(-1).float().numpy(),
            vocab_size=vocab,
            bits=recipe.teach.bits,
        )
        marks.append(time.perf_counter())
        if step > 0:
            for name, begin, end in zip(flops, marks[:-1], marks[1:], strict=True):
                phases[name].append(end - begin)
    total = sum(statistics.median(v) for v in phases.values())
    tokens = b * (t - 1)
    print(
        f"\ndefault teacher pass ({b}x{t} tokens a batch, hidden layers {list(layers)}), "
        f"median of {batches}: {total:.3f} s, {tokens / total:.0f} tokens/s"
    )
    all_flops = print_phases(phases, flops, peak, "batch")
    print(
        f"\nthe pass's matmuls at {peak:.0f} GFLOP/s take {all_flops / peak:.3f} s a batch; "
        f"the batch takes {total / (all_flops / peak):.2f}x that ({all_flops / total / peak:.0%} "
        "of the GEMM rate over the whole batch)"
    )


if __name__ == "__main__":
    main()
