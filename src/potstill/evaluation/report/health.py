"""Did a training run end healthy? A verdict from its loss curve (the metrics.jsonl rows),
so the report can say a run broke instead of comparing a broken model as if it had trained.

The rule, on the logged rows of one run in step order:

(a) a loss that is NaN, ±inf or missing at any row, its update skipped or not → diverged:
    the loss is computed before the update, so the weights (or the data) gave it; and
    more than ``MAX_SKIPPED_SHARE`` of the updates skipped on gradient spikes →
    diverged: a run that throws away that much is not training, whatever its loss says;
(b) leaving out the rows whose update the loop skipped (it threw that step away): the run
    ended broken → diverged: with ``w = max(3, ceil(10% of the rows))``, the mean
    loss of the last ``w`` rows is above the lowest mean of any ``w`` consecutive rows
    before them by more than 0.3 nats *and* by more than 5% of that lowest mean
    (`potstill.train.rollback.rose`, the rule the loop's rollbacks use too). Judged only
    with at least ``2 w`` rows. Rows with an ``event`` (a rollback) are not losses: they
    are counted and told in the verdict's reason.

(b) also covers a spike that was never recovered (it lifts the last window); a spike the
run recovered from is not a break. Why both margins: means over ``w >= 3`` rows of a
healthy run's noisy per-step loss wander by tenths of a nat, and the lowest of many
windows is biased low, so a small absolute rise is noise; 0.3 nats is a perplexity ×1.35
that no healthy run gives back at its end. The relative 5% keeps a high-loss run (a tiny
model near ln(vocab) ≈ 10 nats, whose noise is larger) from being called broken on a
0.3-nat wobble. A run that broke gives back far more (a collapse to the unigram or
uniform distribution is nats).

(c) the held-out loss ended high → diverged: when at least ``MIN_HELDOUT_POINTS`` rows
    carry a ``heldout_loss`` (the loop logs one every ``train.eval_every`` steps, skipped
    or not: it measures the weights as they are), the last is not finite, or is above
    the lowest earlier one by more than both margins of (b). The held-out blocks are the
    same at every point, so a single value is not noisy the way a training step's is;
    a run whose training loss still falls while this rises is overfitting or broken.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any

from potstill.evaluation.report.schema import TrainingHealth
from potstill.train.rollback import rose

TAIL_SHARE = 0.1  # the end of the run: the last 10% of its logged rows
MIN_WINDOW = 3  # rows; a mean over fewer is one noisy step
MIN_HELDOUT_POINTS = 3  # held-out losses logged before their end is judged
MAX_SKIPPED_SHARE = 0.1  # of the logged steps


def training_health(rows: Sequence[dict[str, Any]]) -> TrainingHealth:
    """The verdict on one run's metrics rows (dicts with ``step`` and ``loss``, optionally
    ``skipped`` and ``heldout_loss``): diverged by rule (a), (b) or (c) of the module
    docstring, else ok.

    >>> rows = [{"step": s, "loss": 5.0 - 0.1 * s} for s in range(1, 21)]
    >>> training_health(rows).status
    'ok'
    >>> training_health(rows + [{"step": 21, "loss": float("nan")}]).reason
    'training loss was not finite (nan) at step 21'
    """
    rollbacks = [row for row in rows if row.get("event") == "rollback"]
    rows = [row for row in rows if "event" not in row]
    skipped = sum(_skipped(row) for row in rows)
    kept = [row for row in rows if not _skipped(row)]
    verdict = (
        _non_finite(rows)
        or _skipped_too_often(skipped, len(rows))
        or _ended_broken(kept)
        or _heldout_ended_high(rows)
    )
    counts = {"skipped_steps": skipped, "rollbacks": len(rollbacks)}
    if verdict is not None:
        return TrainingHealth(status="diverged", reason=verdict + _rolled_back(rollbacks), **counts)
    reason = "training loss stayed finite and did not end above its best"
    if len(_heldout(rows)) >= MIN_HELDOUT_POINTS:
        reason += "; held-out loss did not end above its lowest"
    if skipped:
        reason += f"; {skipped} update(s) skipped on gradient spikes"
    return TrainingHealth(status="ok", reason=reason + _rolled_back(rollbacks), **counts)


def _rolled_back(events: Sequence[dict[str, Any]]) -> str:
    """The rollbacks (`potstill.train.rollback`) in words, or nothing."""
    if not events:
        return ""
    said = [
        f"{event.get('checked', 'loss')} {float(event.get('value', math.nan)):.2f} at step "
        f"{event.get('from_step')} against its best {float(event.get('best', math.nan)):.2f} "
        f"sent it back to step {event.get('step')} at lr x{event.get('lr_scale')}"
        for event in events
    ]
    return f"; rolled back {len(events)} time(s): " + "; ".join(said)


def _skipped(row: dict[str, Any]) -> int:
    """Updates skipped in this row: ``skipped: true`` is one, a number is a count."""
    value = row.get("skipped")
    if isinstance(value, bool):
        return int(value)
    return int(value) if isinstance(value, (int, float)) and value > 0 else 0


def _non_finite(rows: Sequence[dict[str, Any]]) -> str | None:
    """Rule (a): the first row whose loss is not a finite number."""
    for row in rows:
        loss = row.get("loss")
        if not isinstance(loss, (int, float)) or not math.isfinite(loss):
            return f"training loss was not finite ({loss}) at step {row.get('step')}"
    return None


def _skipped_too_often(skipped: int, steps: int) -> str | None:
    """Rule (a), second part: most of what the run saw was thrown away."""
    if steps and skipped > MAX_SKIPPED_SHARE * steps:
        return f"{skipped} of {steps} updates were skipped on gradient spikes"
    return None


def _ended_broken(rows: Sequence[dict[str, Any]]) -> str | None:
    """Rule (b): the mean loss of the last window against the best earlier window."""
    window = max(MIN_WINDOW, math.ceil(TAIL_SHARE * len(rows)))
    if len(rows) < 2 * window:
        return None
    totals = list(itertools.accumulate((float(row["loss"]) for row in rows), initial=0.0))
    last = (totals[-1] - totals[-1 - window]) / window
    # Window i holds rows i .. i + window - 1; every one ends before the last window starts.
    means = [(totals[i + window] - totals[i]) / window for i in range(len(rows) - 2 * window + 1)]
    best_at = min(range(len(means)), key=means.__getitem__)
    best = means[best_at]
    if not rose(last, best):
        return None
    return (
        f"training loss ended at {last:.2f} nats (mean of the last {window} logged steps), "
        f"{last - best:.2f} above its best {best:.2f} (steps {rows[best_at]['step']}–"
        f"{rows[best_at + window - 1]['step']})"
    )


def _heldout(rows: Sequence[dict[str, Any]]) -> list[tuple[Any, float]]:
    """(step, held-out loss) of the rows that logged one, in order."""
    return [
        (row.get("step"), float(row["heldout_loss"]))
        for row in rows
        if isinstance(row.get("heldout_loss"), (int, float))
        and not isinstance(row.get("heldout_loss"), bool)
    ]


def _heldout_ended_high(rows: Sequence[dict[str, Any]]) -> str | None:
    """Rule (c): the last held-out loss against the lowest earlier one."""
    points = _heldout(rows)
    if len(points) < MIN_HELDOUT_POINTS:
        return None
    last_step, last = points[-1]
    if not math.isfinite(last):
        return f"held-out loss was not finite ({last}) at step {last_step}"
    earlier = [(step, loss) for step, loss in points[:-1] if math.isfinite(loss)]
    if not earlier:
        return None
    best_step, best = min(earlier, key=lambda point: point[1])
    if not rose(last, best):
        return None
    return (
        f"held-out loss ended at {last:.2f} nats (step {last_step}), {last - best:.2f} above "
        f"its lowest {best:.2f} (step {best_step})"
    )
