"""Overload protection: estimate how long a new request would queue before its first
token, and refuse it early (503 + Retry-After) when its tier accepts less.

The estimate is Little's law on what the server itself sees: requests queued ahead of
the newcomer (not yet streaming, at the same or a higher priority) divided by the rate at
which queued requests have been starting lately. No block or kernel is looked at."""

import math
import time
from collections import Counter, deque
from collections.abc import Callable

from tome.server.errors import OverloadedError
from tome.server.tiers import Tier

RATE_WINDOW_S = 60.0
MIN_STARTS_FOR_RATE = 2  # fewer starts in the window: no estimate, admit


class QueueWaitEstimator:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._queued: Counter[int] = Counter()  # engine priority -> requests not yet started
        self._starts: deque[float] = deque()

    def enqueue(self, priority: int) -> None:
        self._queued[priority] += 1

    def start(self, priority: int) -> None:
        """A queued request produced its first token."""
        self._queued[priority] -= 1
        self._starts.append(self.clock())

    def drop(self, priority: int) -> None:
        """A queued request ended before its first token."""
        self._queued[priority] -= 1

    def estimate(self, priority: int) -> float | None:
        """Seconds a new request at `priority` would wait; None when there is no rate yet."""
        ahead = sum(count for p, count in self._queued.items() if p <= priority)
        if ahead == 0:
            return 0.0
        now = self.clock()
        while self._starts and self._starts[0] < now - RATE_WINDOW_S:
            self._starts.popleft()
        if len(self._starts) < MIN_STARTS_FOR_RATE:
            return None
        rate = len(self._starts) / max(now - self._starts[0], 1e-3)
        return ahead / rate

    def check(self, tier: Tier) -> None:
        """Raise OverloadedError when the tier's bound on queue wait would be exceeded."""
        bound = tier.max_queue_wait_seconds
        if bound is None:
            return
        wait = self.estimate(tier.priority)
        if wait is not None and wait > bound:
            raise OverloadedError(
                f"the server is overloaded: the estimated queue wait is {math.ceil(wait)} s, "
                f"over the {tier.name!r} tier's {bound:g} s; retry later",
                retry_after=wait,
            )
