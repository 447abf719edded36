"""Who owns which context cache, and what it was made of: the engine keeps the KV blocks
and the time to live under the cache's id, and knows nothing of keys."""

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from tome.engine.context_cache import ContextInfo
from tome.errors import ContextCacheNotFoundError
from tome.server.limits import Caller
from tome.server.schemas.caching import ContextCacheObject
from tome.server.schemas.chat import ChatMessage


@dataclass
class CacheRecord:
    id: str
    owner: int | None  # the key that made it; None in the open local mode
    model: str
    messages: list[ChatMessage]
    token_ids: list[int]
    name: str | None
    description: str | None
    metadata: dict[str, str]

    def describe(self, info: ContextInfo) -> ContextCacheObject:
        return ContextCacheObject(
            id=self.id,
            status="ready",
            model=self.model,
            name=self.name,
            description=self.description,
            metadata=self.metadata,
            tokens=info.num_tokens,
            created_at=int(info.created_at),
            expired_at=int(info.expires_at),
        )


class CacheRegistry:
    """The server's caches by id. Lives on the event loop (one thread, no locks)."""

    def __init__(self) -> None:
        self._records: dict[str, CacheRecord] = {}
        self._pending: dict[int | None, int] = {}  # tokens of caches being prefilled, by key

    def add(self, record: CacheRecord) -> None:
        self._records[record.id] = record

    def owned(self, cache_id: str, caller: Caller) -> CacheRecord:
        """The caller's cache; another key's answers exactly as an unknown id would, so
        ids of other keys' caches cannot even be confirmed."""
        record = self._records.get(cache_id)
        if record is None or record.owner != caller.key_id:
            raise ContextCacheNotFoundError(f"no context cache has the id {cache_id!r}")
        return record

    def of(self, caller: Caller) -> list[CacheRecord]:
        return [r for r in self._records.values() if r.owner == caller.key_id]

    def drop(self, cache_id: str) -> None:
        self._records.pop(cache_id, None)

    def pending(self, caller: Caller) -> int:
        return self._pending.get(caller.key_id, 0)

    @contextmanager
    def reserving(self, caller: Caller, tokens: int) -> Iterator[None]:
        """Count a cache's tokens as the caller's while it is prefilled, so that two caches
        created at once cannot both pass the pinned-token limit."""
        self._pending[caller.key_id] = self.pending(caller) + tokens
        try:
            yield
        finally:
            self._pending[caller.key_id] -= tokens
