"""The default settings, unchanged, on text nobody tuned them on (issue 22, item 7).

For each corpus of `heldout_corpora` (news, prose, code) and each seed, one
``potstill run`` with no recipe: the embedded default's models and every schema default,
``data.path`` the corpus, ``train.seed`` the seed, and no time budget (the default's 130
steps on any machine, so the numbers do not depend on how fast the box is). Each run's
report gives the student's, the baseline's and the teacher's held-out perplexity, the share
of the teacher–baseline log-perplexity gap the student closed, and whether each model
trained healthily (and how many updates were skipped as gradient spikes).

    python bench/heldout.py --out bench/results/heldout --seeds 0 1 2
    python bench/heldout.py --corpora news --seeds 0      # one row

Runs already finished in ``--runs`` are read back, not redone (``potstill run --resume``
semantics), so the script can be stopped and started again. Writes ``OUT.json`` (every
run) and ``OUT.md`` (per corpus: mean ± sd over the seeds, with the teacher–baseline gap
and what the student gained over the baseline in nats per token, log of the perplexity
ratios, so corpora whose gaps differ can be compared).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path
from typing import Any

import heldout_corpora

import potstill
from potstill.evaluation.report import Report
from potstill.util.io import atomic_write_text


def run_one(corpus: Path, name: str, seed: int, runs: Path) -> dict[str, Any]:
    """One default run on ``corpus`` at ``seed`` (read back if it finished before)."""
    report_path = runs / name / "report.json"
    started = time.perf_counter()
    if not report_path.is_file():
        potstill.run(
            None,
            resume=True,
            verbose=True,
            name=name,
            runs_dir=str(runs),
            data__path=str(corpus),
            train__seed=seed,
            budget_minutes=None,
        )
    report = Report.load(report_path)
    models = report.models
    row: dict[str, Any] = {
        "corpus": corpus.stem,
        "seed": seed,
        "steps": report.recipe.get("steps"),
        "train_tokens": report.data.train_tokens,
        "heldout_tokens": report.data.heldout_tokens,
        "gap_closed": report.summary.gap_closed,
        # this call's seconds; a run read back from an earlier call reports its own
        "wall_seconds": round(report.run.wall_seconds or time.perf_counter() - started, 1),
    }
    for role in ("teacher", "student", "baseline"):
        entry = models[role]
        row[role] = entry.perplexity
        training = getattr(entry, "training", None)
        if training is not None:
            row[f"{role}_training"] = training.model_dump()
    return row


def summarise(rows: list[dict[str, Any]]) -> str:
    """Markdown: one line per corpus, mean ± sd over its seeds."""
    lines = [
        "| corpus | healthy seeds | teacher | student | baseline | gap closed | gap (nats) | "
        "gained (nats) | runs with a broken model | skipped updates (student / baseline) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for corpus in dict.fromkeys(r["corpus"] for r in rows):
        runs = [r for r in rows if r["corpus"] == corpus]
        # A run whose student or baseline broke compares nothing: its numbers stay in the
        # JSON and the per-run table, out of the means.
        mine = [r for r in runs if _healthy(r)] or runs
        broken = len(runs) - sum(_healthy(r) for r in runs)
        skipped = [
            "+".join(str(r.get(f"{role}_training", {}).get("skipped_steps", 0)) for r in runs)
            for role in ("student", "baseline")
        ]
        lines.append(
            f"| {corpus} | {len(mine)} of {len(runs)} | "
            f"{_mean_sd([r['teacher'] for r in mine], '.2f')} | "
            f"{_mean_sd([r['student'] for r in mine], '.2f')} | "
            f"{_mean_sd([r['baseline'] for r in mine], '.2f')} | "
            f"{_mean_sd([r['gap_closed'] for r in mine], '.1%')} | "
            f"{_mean_sd([_nats(r['baseline'], r['teacher']) for r in mine], '.2f')} | "
            f"{_mean_sd([_nats(r['baseline'], r['student']) for r in mine], '.2f')} | {broken} | "
            f"{' / '.join(skipped)} |"
        )
    return "\n".join(lines) + "\n"


def _healthy(row: dict[str, Any]) -> bool:
    """Neither the student nor the baseline diverged (the report's health check)."""
    return all(
        row.get(f"{role}_training", {}).get("status", "ok") == "ok"
        for role in ("student", "baseline")
    )


def _nats(higher: float | None, lower: float | None) -> float | None:
    """log(higher / lower): a perplexity ratio in nats per token (the gap's units)."""
    return None if not higher or not lower else math.log(higher / lower)


def _mean_sd(values: list[float | None], spec: str) -> str:
    known = [v for v in values if v is not None]
    if not known:
        return "–"
    if len(known) == 1:
        return format(known[0], spec)
    return f"{format(statistics.mean(known), spec)} ± {format(statistics.stdev(known), spec)}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpora", nargs="+", default=list(heldout_corpora.CORPORA))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--data", type=Path, default=Path("bench/corpora"))
    parser.add_argument("--runs", type=Path, default=Path("runs/heldout"))
    parser.add_argument("--out", type=Path, default=Path("bench/results/heldout"))
    args = parser.parse_args()
    args.data.mkdir(parents=True, exist_ok=True)
    paths = {corpus: heldout_corpora.write(args.data, corpus) for corpus in args.corpora}
    rows = []
    # Seed by seed, so a stopped bench has every corpus at its first seeds.
    for seed in args.seeds:
        for corpus, path in paths.items():
            rows.append(run_one(path, f"{corpus}-s{seed}", seed, args.runs))
            print(json.dumps(rows[-1]), flush=True)
            atomic_write_text(args.out.with_suffix(".json"), json.dumps(rows, indent=1) + "\n")
            atomic_write_text(args.out.with_suffix(".md"), summarise(rows))
    print(summarise(rows))


if __name__ == "__main__":
    main()
