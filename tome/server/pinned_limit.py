"""The pinned-token limit (a tier's max_pinned_tokens): how many prompt tokens one key may
keep in context caches at once. A cache's KV blocks are memory nobody else can use until it
is deleted or expires, so each key's share is bounded; deleting or expiring frees it."""

from tome.server.errors import RateLimitError
from tome.server.schemas.caching import ContextCacheObject
from tome.server.tiers import Tier


def check_pinned_room(
    tier: Tier, caches: list[ContextCacheObject], pending: int, adding: int, now: float
) -> None:
    """429 when the key's live caches, those it is creating (`pending` tokens) and a new
    one of `adding` tokens would pass its tier's limit."""
    limit = tier.max_pinned_tokens
    pinned = pending + sum(cache.tokens for cache in caches)
    if limit is None or pinned + adding <= limit:
        return
    raise RateLimitError(
        f"pinned-token limit reached (max_pinned_tokens): the {tier.name!r} tier may keep "
        f"{limit} tokens in context caches; this key has {pinned} pinned and the new cache "
        f"needs {adding}; delete a cache or let one expire",
        code="max_pinned_tokens",
        retry_after=seconds_until_room(caches, pinned + adding - limit, now),
    )


def seconds_until_room(caches: list[ContextCacheObject], excess: int, now: float) -> float | None:
    """When enough of the caches will have expired to free `excess` tokens; None when
    their expiry never will (the new cache alone is over the limit)."""
    for cache in sorted(caches, key=lambda c: c.expired_at):
        excess -= cache.tokens
        if excess <= 0:
            return max(1.0, cache.expired_at - now)
    return None
