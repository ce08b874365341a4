"""Hand-made report inputs shared by the report tests: plain dicts, as the pipeline passes."""

from __future__ import annotations

import math

from potstill.evaluation.report import Report, build_report

RUN = {"name": "tiny", "wall_seconds": 12.5, "device": "cpu", "threads": 2}
DATA = {"name": "shakespeare", "train_tokens": 120_000, "heldout_tokens": 6_000, "split": "5%"}
RECIPE = {
    "loss": [
        {"loss": "forward_kl", "weight": 0.5, "temperature": 2.0},
        {"loss": "cross_entropy", "weight": 0.5},
    ],
    "steps": 300,
    "batch_size": 8,
    "block_size": 256,
    "lr": 3e-4,
}


def entry(params, ppl, tps, agreement=None, **extra) -> dict:
    model = {
        "ref": "local",
        "params": params,
        "size_bytes": params * 4,
        "perplexity": ppl,
        "loss": math.log(ppl) if ppl else None,
        "tokens_per_second": tps,
        **extra,
    }
    if agreement is not None:
        model["agreement"] = {"top1": agreement[0], "kl": agreement[1]}
    return model


def three_models() -> dict[str, dict]:
    """Baseline first on purpose: the report puts the roles in order."""
    return {
        "baseline": entry(25_000_000, 40.0, 80.0, (0.31, 1.9), train_seconds=100.0),
        "teacher": entry(100_000_000, 10.0, 20.0),
        "student": entry(25_000_000, 20.0, 80.0, (0.52, 0.7), train_seconds=150.0),
    }


def plausible_report(name: str = "shakespeare-smollm2") -> Report:
    """Numbers shaped like a real default run (SmolLM2-135M teacher, 6-layer student)."""

    def model(params, ppl, tps, agreement=None, train_seconds=None):
        entry = {
            "ref": "bundled:smollm2-135m-instruct" if agreement is None else "runs/x",
            "params": params,
            "size_bytes": params * 4,
            "perplexity": ppl,
            "loss": math.log(ppl),
            "tokens_per_second": tps,
        }
        if agreement is not None:
            entry["agreement"] = {"top1": agreement[0], "kl": agreement[1]}
            entry["train_seconds"] = train_seconds
        return entry

    return build_report(
        kind="lm",
        run={"name": name, "wall_seconds": 1830.0, "device": "cpu", "threads": 2},
        data={"name": "shakespeare", "train_tokens": 2_400_000, "heldout_tokens": 120_000},
        recipe=RECIPE,
        models={
            "teacher": model(134_515_008, 18.7, 21.3),
            "student": model(49_600_000, 31.2, 52.8, (0.58, 0.61), 640.0),
            "baseline": model(49_600_000, 44.9, 53.1, (0.41, 1.37), 410.0),
        },
    )


def plausible_curves() -> dict[str, list[dict]]:
    """metrics.jsonl rows of a KD student and a CE-only baseline, held-out loss every 60."""
    student, baseline = [], []
    for step in range(0, 300, 5):
        decay = math.exp(-step / 80)
        ce = 3.4 + 2.5 * decay + 0.08 * math.sin(step)
        kl = 0.6 + 1.8 * decay
        student.append(
            {"step": step, "loss": 0.5 * ce + 0.5 * kl, "cross_entropy": ce, "forward_kl": kl}
        )
        baseline.append({"step": step, "loss": 3.8 + 2.3 * decay + 0.08 * math.cos(step)})
    for rows, level in ((student, 3.45), (baseline, 3.8)):
        for row in rows[::12]:
            row["heldout_loss"] = level + 2.0 * math.exp(-row["step"] / 80)
    return {"student": student, "baseline": baseline}
