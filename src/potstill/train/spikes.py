"""Skipping an update whose gradient is a spike: the step counts, its change does not.

A small-batch run can meet a batch whose gradient norm is tens of times the usual (a
rare token's row of a big tied embedding, a burst of noisy text). Clipping bounds the
gradient's norm, but AdamW divides each entry by its own running scale, so the clipped
spike still moves the parameters that rarely get gradient by about lr each, and their
second moments remember it for hundreds of steps. Seen on news text: the cross-entropy
baseline's norm jumped to 303 against single digits and the run ended 16% above where a
lower lr took it. Skipping such a step (OLMo-core's SkipStepAdamW does the same with a
rolling z-score) is the protection every model of a run gets alike: the distilled
student, its baseline and any task's students.

The rule: the pre-clip gradient norm is a spike when it is not finite, or when it is more
than ``factor`` times the median of the last `WINDOW` finite norms (once `MIN_HISTORY`
of them exist: the first steps' norms fall fast and set no baseline) *and* above the
run's own early norms (the median of its first `MIN_HISTORY`, `early_norm`): a step no
bigger than the ones the run started with is not a spike. Without that floor a model that
has fitted its train set (a classifier after a few epochs: loss near 0, norms 100x below
their start) had every batch holding one misfit text skipped as a "spike" (9 of 75
updates of a polarity baseline), and the health check called it broken. Every finite
norm joins the history, skipped or not, so a run whose gradients settle at a new level
stops skipping them after about half a window.
"""

from __future__ import annotations

import math
import statistics

WINDOW = 32
MIN_HISTORY = 16


def is_spike(
    grad_norm: float, history: list[float], factor: float | None, floor: float | None = None
) -> bool:
    """Whether the step whose pre-clip gradient norm is ``grad_norm`` should be skipped,
    given the earlier steps' norms ``history`` (oldest first) and the run's `early_norm`
    ``floor`` (None: no floor yet).

    >>> is_spike(30.0, [2.0] * 16, 10.0), is_spike(19.0, [2.0] * 16, 10.0)
    (True, False)
    >>> is_spike(float("nan"), [], None), is_spike(1e9, [2.0] * 15, 10.0)
    (True, False)
    >>> is_spike(3.0, [0.01] * 16, 10.0, floor=4.0), is_spike(5.0, [0.01] * 16, 10.0, floor=4.0)
    (False, True)
    """
    if not math.isfinite(grad_norm):
        return True
    if factor is None or len(history) < MIN_HISTORY:
        return False
    above_floor = floor is None or grad_norm > floor
    return above_floor and grad_norm > factor * statistics.median(history[-WINDOW:])


def early_norm(history: list[float]) -> float | None:
    """The median of a run's first `MIN_HISTORY` finite norms, once ``history`` (its
    norms from the first step on, `remember`) holds them; None before.

    >>> early_norm([4.0] * 15), early_norm([1.0, 3.0] * 8)
    (None, 2.0)
    """
    if len(history) < MIN_HISTORY:
        return None
    return statistics.median(history[:MIN_HISTORY])


def remember(history: list[float], grad_norm: float) -> list[float]:
    """The history with ``grad_norm`` added (finite norms only), the last `WINDOW` kept."""
    return [*history, grad_norm][-WINDOW:] if math.isfinite(grad_norm) else history
