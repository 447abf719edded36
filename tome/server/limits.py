"""Per-key limits counted in memory: requests and tokens per minute (sliding windows),
concurrent requests, and a daily token quota (seeded from the usage ledger, so a restart
does not hand out a fresh day). All of it runs on the event loop: one thread, no locks."""

import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

from tome.server.errors import RateLimitError
from tome.server.tiers import Tier

WINDOW_S = 60.0


@dataclass(frozen=True)
class Caller:
    """Who is asking: their key (None in the open local mode) and its tier."""

    key_id: int | None
    tier: Tier


@dataclass
class Admission:
    """A request let in: holds one of its caller's concurrency slots until released.
    Whoever takes it over (the generation) sets handed_over and releases it at the end."""

    caller: Caller
    limiter: "Limiter"
    handed_over: bool = False
    _released: bool = False

    def release(self) -> None:
        if not self._released:
            self._released = True
            self.limiter.finish_request(self.caller)


class SlidingWindow:
    """Amounts added in the last `seconds`, and how long until more fits under a limit."""

    def __init__(self, seconds: float = WINDOW_S) -> None:
        self.seconds = seconds
        self._events: deque[tuple[float, int]] = deque()
        self._total = 0

    def used(self, now: float) -> int:
        while self._events and self._events[0][0] <= now - self.seconds:
            self._total -= self._events.popleft()[1]
        return self._total

    def add(self, now: float, amount: int) -> None:
        self._events.append((now, amount))
        self._total += amount

    def seconds_until_room(self, now: float, limit: int, amount: int) -> float:
        """0 when `amount` more fits now; else when enough of the window will have expired."""
        excess = self.used(now) + amount - limit
        if excess <= 0:
            return 0.0
        for when, added in self._events:
            excess -= added
            if excess <= 0:
                return when + self.seconds - now
        return self.seconds  # more than the limit on its own: it never fits


@dataclass
class KeyCounters:
    requests: SlidingWindow = field(default_factory=SlidingWindow)
    tokens: SlidingWindow = field(default_factory=SlidingWindow)
    in_flight: int = 0
    day: date | None = None  # the UTC day day_tokens counts; None until seeded
    day_tokens: int = 0


def utc_today() -> date:
    return datetime.now(UTC).date()


def seconds_until_tomorrow() -> float:
    now = datetime.now(UTC)
    midnight = datetime.combine(now.date() + timedelta(days=1), datetime.min.time(), UTC)
    return (midnight - now).total_seconds()


class Limiter:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._keys: dict[int | None, KeyCounters] = {}

    def counters(self, caller: Caller) -> KeyCounters:
        return self._keys.setdefault(caller.key_id, KeyCounters())

    def needs_day_seed(self, caller: Caller) -> bool:
        return caller.tier.daily_token_quota is not None and (
            self.counters(caller).day != utc_today()
        )

    def seed_day(self, caller: Caller, tokens_today: int) -> None:
        counters = self.counters(caller)
        counters.day, counters.day_tokens = utc_today(), tokens_today

    def start_request(self, caller: Caller) -> Admission:
        """Count a request against requests-per-minute and take a concurrency slot."""
        tier, counters, now = caller.tier, self.counters(caller), self.clock()
        if tier.requests_per_minute is not None:
            wait = counters.requests.seconds_until_room(now, tier.requests_per_minute, 1)
            if wait > 0:
                raise _limited(tier, "requests_per_minute", wait)
        if tier.concurrent_requests is not None and counters.in_flight >= tier.concurrent_requests:
            raise _limited(tier, "concurrent_requests", 1.0)
        counters.requests.add(now, 1)
        counters.in_flight += 1
        return Admission(caller, self)

    def charge_prompt(self, caller: Caller, prompt_tokens: int) -> None:
        """Count a request's prompt against tokens-per-minute and the daily quota."""
        tier, counters, now = caller.tier, self.counters(caller), self.clock()
        if tier.tokens_per_minute is not None:
            wait = counters.tokens.seconds_until_room(now, tier.tokens_per_minute, prompt_tokens)
            if wait > 0:
                raise _limited(tier, "tokens_per_minute", wait)
        quota = tier.daily_token_quota
        if quota is not None and counters.day_tokens + prompt_tokens > quota:
            raise _limited(tier, "daily_token_quota", seconds_until_tomorrow())
        counters.tokens.add(now, prompt_tokens)
        counters.day_tokens += prompt_tokens

    def charge_completion(self, caller: Caller, completion_tokens: int) -> None:
        counters = self.counters(caller)
        counters.tokens.add(self.clock(), completion_tokens)
        counters.day_tokens += completion_tokens

    def finish_request(self, caller: Caller) -> None:
        self.counters(caller).in_flight -= 1


LIMIT_PHRASES = {
    "requests_per_minute": "{} requests per minute",
    "tokens_per_minute": "{} tokens per minute",
    "concurrent_requests": "{} concurrent requests",
    "daily_token_quota": "a daily quota of {} tokens",
}


def _limited(tier: Tier, limit: str, wait: float) -> RateLimitError:
    allowed = LIMIT_PHRASES[limit].format(getattr(tier, limit))
    return RateLimitError(
        f"rate limit reached ({limit}): the {tier.name!r} tier allows {allowed}; "
        f"retry in {math.ceil(wait)} s",
        code=limit,
        retry_after=wait,
    )
