"""What makes a language-model run's comparison unfair, as text the views share: a student
or baseline whose training broke (no gap closed is given then), a time budget that cut
training to under half the recipe's steps, and updates the training loop skipped."""

from __future__ import annotations

from potstill.evaluation.report.schema import Report
from potstill.evaluation.report.summary import broken_runs

# Under half the recipe's steps, a budget-cut run is a different experiment, not a noisy
# copy of the full one: its student and baseline both stopped early in their schedules.
CUT_SHARE = 0.5
RERUN_FULL = "rerun with budget_minutes=null (or a longer budget_minutes)"


def budget_cut(report: Report) -> tuple[int, int] | None:
    """(steps trained, steps the recipe asked) when the budget kept under half of them."""
    budget = report.budget or {}
    steps, asked = budget.get("steps"), budget.get("requested_steps")
    if not isinstance(steps, int) or not isinstance(asked, int) or asked <= 0:
        return None
    return (steps, asked) if steps < CUT_SHARE * asked else None


def budget_line(report: Report) -> tuple[str, str] | None:
    """(value, sentence) on the time budget, when the run had one; None otherwise."""
    budget = report.budget or {}
    if "steps" not in budget or "requested_steps" not in budget:
        return None
    steps, asked, minutes = budget["steps"], budget["requested_steps"], budget.get("minutes")
    if steps == asked:
        return (
            f"all {steps} steps",
            f"The run had a {minutes:g}-minute budget; measured on this machine, all {steps} "
            f"training steps fit (estimated {budget.get('estimated_minutes', 0):.1f} min).",
        )
    sentence = (
        f"To fit the {minutes:g}-minute budget on this machine (estimated "
        f"{budget.get('estimated_minutes_at_requested', 0):.1f} min at {asked} steps), each "
        f"model trained {steps} steps instead of the recipe's {asked}"
    )
    if budget_cut(report) is not None:
        return (
            f"{steps} of {asked} steps",
            sentence + ": under half, so these numbers are not comparable to a full run; "
            f"to compare, {RERUN_FULL}.",
        )
    return (
        f"{steps} of {asked} steps",
        sentence + ": a slower machine than the recipe was tuned on, so its numbers are not "
        "the full recipe's.",
    )


def gap_caveat(report: Report) -> str | None:
    """The words beside the gap closed of a budget-cut run; None when it needs none."""
    cut = budget_cut(report)
    if cut is None:
        return None
    return f"after {cut[0]} of {cut[1]} steps, not comparable to a full run"


def broken_line(report: Report) -> tuple[str, str] | None:
    """(value, sentence) when the student's or the baseline's training broke: which, why,
    and what to do; None when both trained healthily (or were not judged)."""
    broken = broken_runs(report.models)
    if not broken:
        return None
    why = "; ".join(f"the {role}'s {reason}" for role, reason in broken.items())
    lr = report.recipe.get("lr")
    at = f" (this run: {lr:g})" if isinstance(lr, (int, float)) else ""
    return (
        " and ".join(broken) + " diverged",
        f"{why[0].upper()}{why[1:]}. A broken model's perplexity measures the breakage, not "
        "the distillation, so the student-against-baseline comparison is not meaningful "
        f"and is not given. Rerun with a lower train.lr{at}, e.g. half of it.",
    )


def skipped_line(report: Report) -> tuple[str, str] | None:
    """(value, sentence) on updates the training loop skipped on gradient spikes."""
    counts = {
        name: entry.training.skipped_steps
        for name, entry in report.models.items()
        if entry.training is not None and entry.training.skipped_steps
    }
    if not counts:
        return None
    parts = ", ".join(f"{name} {count}" for name, count in counts.items())
    return (
        parts,
        f"Updates skipped on gradient spikes (the loop threw those steps away; the runs "
        f"are not broken by them): {parts}.",
    )


def rollback_line(report: Report) -> tuple[str, str] | None:
    """(value, sentence) on runs the loop rolled back to a good point at a lower lr."""
    rolled = {
        name: entry.training
        for name, entry in report.models.items()
        if entry.training is not None and entry.training.rollbacks
    }
    if not rolled:
        return None
    parts = ", ".join(f"{name} {training.rollbacks}" for name, training in rolled.items())
    told = " ".join(f"The {name}'s {training.reason}." for name, training in rolled.items())
    return (
        parts,
        "Training went back to its last good check and on at half the lr each time its "
        f"check rose 0.3 nats and 5% above its best (potstill.train.rollback). {told}",
    )
