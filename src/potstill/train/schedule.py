"""Learning-rate schedule: linear warm-up, then cosine decay to a floor."""

from __future__ import annotations

import math


def warmup_cosine(step: int, *, warmup: int, total: int, min_ratio: float) -> float:
    """Multiplier on the peak learning rate for optimizer step ``step`` (0-based).

    >>> warmup_cosine(0, warmup=10, total=100, min_ratio=0.1)
    0.1
    >>> round(warmup_cosine(99, warmup=10, total=100, min_ratio=0.1), 3)
    0.1
    """
    if step < warmup:
        return (step + 1) / warmup
    span = max(1, total - warmup - 1)
    progress = min(1.0, (step - warmup) / span)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
