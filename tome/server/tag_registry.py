"""Tags of context caches, per key: a name the caller picks for one of its caches (POST
/v1/caching/refs/tags) that stays the same when the cache behind it is replaced. Kept in
memory, as the caches they name are: a restart loses both."""

import time
from dataclasses import dataclass, field

from tome.errors import ContextCacheNotFoundError, InvalidRequestError
from tome.server.limits import Caller
from tome.server.schemas.caching import CacheTag

MAX_TAGS_PER_KEY = 1024  # a tag is small, but the server's memory is not a key's to fill


@dataclass
class TagRecord:
    tag: str
    cache_id: str
    owner: int | None  # the key that made it; None in the open local mode
    created_at: int = field(default_factory=lambda: int(time.time()))

    def describe(self) -> CacheTag:
        owned_by = "local" if self.owner is None else str(self.owner)
        return CacheTag(
            tag=self.tag, cache_id=self.cache_id, owned_by=owned_by, created_at=self.created_at
        )


class TagRegistry:
    """Tags by key, then by name, oldest first. Lives on the event loop (no locks)."""

    def __init__(self) -> None:
        self._tags: dict[int | None, dict[str, TagRecord]] = {}

    def put(self, caller: Caller, tag: str, cache_id: str) -> TagRecord:
        """Name a cache; a tag that exists is moved (and counts as new from now)."""
        tags = self._tags.setdefault(caller.key_id, {})
        if tag not in tags and len(tags) >= MAX_TAGS_PER_KEY:
            raise InvalidRequestError(
                f"tag: this key has {MAX_TAGS_PER_KEY} cache tags, the most it may; "
                "delete one first"
            )
        tags.pop(tag, None)
        tags[tag] = TagRecord(tag, cache_id, caller.key_id)
        return tags[tag]

    def get(self, caller: Caller, tag: str) -> TagRecord:
        """The caller's tag; another key's answers exactly as an unknown one would."""
        record = self._tags.get(caller.key_id, {}).get(tag)
        if record is None:
            raise ContextCacheNotFoundError(f"no cache tag is named {tag!r}")
        return record

    def of(self, caller: Caller) -> list[TagRecord]:
        return list(self._tags.get(caller.key_id, {}).values())

    def delete(self, caller: Caller, tag: str) -> None:
        self._tags.get(caller.key_id, {}).pop(tag, None)
