"""Pacing requests to an endpoint: exponential backoff with jitter between retries, and
an even spacing of request starts for a requests-per-minute limit."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable


def backoff_delay(
    attempt: int,
    rng: random.Random,
    *,
    base_s: float = 0.5,
    max_s: float = 30.0,
    retry_after_s: float | None = None,
) -> float:
    """Seconds to wait before retry ``attempt`` (0 = the first retry).

    Exponential backoff with "equal jitter" (half the step fixed, half drawn uniformly,
    so clients that failed together do not retry together): ``d = min(max_s, base_s *
    2**attempt)``, the delay in ``[d/2, d]``. A server's ``Retry-After`` raises it to at
    least that many seconds (still capped at ``max_s``).

    >>> rng = random.Random(0)
    >>> [0.25 <= backoff_delay(0, rng) <= 0.5, 2.0 <= backoff_delay(3, rng) <= 4.0]
    [True, True]
    >>> backoff_delay(0, rng, retry_after_s=7.0)
    7.0
    """
    step = min(max_s, base_s * 2.0**attempt)
    delay = step / 2 + rng.uniform(0.0, step / 2)
    if retry_after_s is not None:
        delay = max(delay, retry_after_s)
    return min(delay, max_s)


class RateLimiter:
    """Spaces request starts at least ``60 / per_minute`` seconds apart, across threads.

    `reserve` books the next free start time and returns how long the caller must wait
    for it; the caller waits (interruptibly) itself. None: no limit.

    >>> clock = iter([0.0, 0.0, 0.0]).__next__
    >>> limiter = RateLimiter(120, clock=clock)
    >>> [limiter.reserve(), limiter.reserve(), limiter.reserve()]
    [0.0, 0.5, 1.0]
    """

    def __init__(
        self, per_minute: float | None, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.interval = 60.0 / per_minute if per_minute else 0.0
        self._clock = clock
        self._next = float("-inf")
        self._lock = threading.Lock()

    def reserve(self) -> float:
        """Book a start time; the seconds from now until it."""
        if not self.interval:
            return 0.0
        with self._lock:
            now = self._clock()
            start = max(now, self._next)
            self._next = start + self.interval
        return start - now
