"""The shipped classification task over several seeds: mean ± sd of every model's test
accuracy and macro-F1, so one run's ranking (full / LoRA / PiSSA / baseline) can be
trusted or not.

The teacher labels the texts once (the first seed's run); the other seeds start from a
copy of its ``labels.parquet``, so only the students and the baselines change with the
seed (head initialisation, LoRA initialisation, data order). Extra ``key=value``
arguments are recipe overrides, applied to every seed.

    python bench/classify_seeds.py [--seeds 0 1 2] [--out bench/results/classify_seeds.md]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import time
from pathlib import Path

import potstill
from potstill.evaluation.report import Report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="recipes/classify-polarity.yaml")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--runs-dir", default="runs/bench-classify-seeds")
    parser.add_argument("--out", type=Path, default=Path("bench/results/classify_seeds.md"))
    parser.add_argument("overrides", nargs="*", help="recipe overrides, key.sub=value")
    args = parser.parse_args()
    overrides = dict(_split(item) for item in args.overrides)

    reports: dict[int, Report] = {}
    first_labels: Path | None = None
    started = time.perf_counter()
    for seed in args.seeds:
        name = f"seed-{seed}"
        run_dir = Path(args.runs_dir) / name
        if first_labels is not None and not (run_dir / "labels.parquet").exists():
            run_dir.mkdir(parents=True, exist_ok=True)
            shutil.copy2(first_labels, run_dir / "labels.parquet")
        result = potstill.run(
            args.recipe,
            resume=True,
            name=name,
            runs_dir=args.runs_dir,
            train__seed=seed,
            **overrides,
        )
        reports[seed] = result.report
        first_labels = first_labels or result.run_dir / "labels.parquet"
        print(f"seed {seed}: " + _line(result.report), flush=True)
    text = _table(reports, args.recipe, args.overrides, time.perf_counter() - started)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text, encoding="utf-8")
    print(text)


def _split(item: str) -> tuple[str, object]:
    import yaml

    key, _, value = item.partition("=")
    return key.replace(".", "__"), yaml.safe_load(value)


def _line(report: Report) -> str:
    return ", ".join(f"{n} {e.accuracy:.1%}" for n, e in report.models.items())


def _mean_sd(values: list[float]) -> str:
    mean = statistics.fmean(values) * 100
    sd = statistics.stdev(values) * 100 if len(values) > 1 else 0.0
    return f"{mean:.1f} ± {sd:.1f}"


def _table(reports: dict[int, Report], recipe: str, overrides: list[str], seconds: float) -> str:
    seeds = list(reports)
    names = list(next(iter(reports.values())).models)
    lines = [
        f"# {recipe} over seeds {', '.join(map(str, seeds))}",
        "",
        f"`python bench/classify_seeds.py --seeds {' '.join(map(str, seeds))}"
        + "".join(f" {o}" for o in overrides)
        + f"` — {seconds / 60:.1f} min on this machine. Accuracy and macro-F1 in %, mean ± sd "
        "over the seeds (the teacher's labels are the same for every seed, so its row has "
        "sd 0).",
        "",
        "| model | accuracy | macro-F1 | agreement with teacher | "
        + " | ".join(f"seed {s}" for s in seeds)
        + " |",
        "|---|---:|---:|---:|" + "---:|" * len(seeds),
    ]
    for name in names:
        entries = [reports[s].models[name] for s in seeds]
        agreement = [e.agreement.top1 for e in entries if e.agreement and e.agreement.top1]
        lines.append(
            f"| {name} | {_mean_sd([e.accuracy for e in entries])} | "
            f"{_mean_sd([e.f1 for e in entries])} | "
            f"{_mean_sd(agreement) if agreement else '–'} | "
            + " | ".join(f"{e.accuracy:.1%}" for e in entries)
            + " |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
