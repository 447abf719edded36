"""Tags of context caches (/v1/caching/refs/tags), as the long-text platform has them: a
name of the caller's choosing for one of its caches, used in a chat as
{"role": "cache", "content": "tag=<tag>"}. Replacing a cache then means creating the new
one and moving the tag; clients keep the name. A tag outlives its cache: once the cache is
deleted or expired, using the tag answers 404 until it is moved to a live one."""

from dataclasses import dataclass
from typing import Literal

from tome.engine.context_cache import ContextInfo
from tome.errors import ContextCacheNotFoundError
from tome.server.cache_registry import CacheRecord
from tome.server.caching import engine_context
from tome.server.limits import Caller
from tome.server.schemas.caching import CacheTag, ContextCacheObject, TagCreateRequest
from tome.server.state import ServerState
from tome.server.tag_registry import TagRecord


@dataclass(frozen=True)
class TagPage:
    """The platform's list parameters: tags by creation time, `after` and `before` name
    tags that bound the page (neither is in it)."""

    limit: int = 20
    order: Literal["asc", "desc"] = "desc"
    after: str | None = None
    before: str | None = None

    def of(self, tags: list[TagRecord]) -> list[TagRecord]:
        ordered = tags if self.order == "asc" else tags[::-1]
        names = [t.tag for t in ordered]
        start = _position(names, self.after, "after") + 1 if self.after else 0
        end = _position(names, self.before, "before") if self.before else len(ordered)
        return ordered[start:end][: self.limit]


def _position(names: list[str], tag: str, parameter: str) -> int:
    if tag not in names:
        raise ContextCacheNotFoundError(f"{parameter}: no cache tag is named {tag!r}")
    return names.index(tag)


async def create_tag(server: ServerState, caller: Caller, body: TagCreateRequest) -> CacheTag:
    record = server.caches.owned(body.cache_id, caller)
    await engine_context(server, record)  # an expired cache cannot be tagged
    return server.tags.put(caller, body.tag, record.id).describe()


def list_tags(server: ServerState, caller: Caller, page: TagPage) -> list[CacheTag]:
    return [record.describe() for record in page.of(server.tags.of(caller))]


def get_tag(server: ServerState, caller: Caller, tag: str) -> CacheTag:
    return server.tags.get(caller, tag).describe()


def delete_tag(server: ServerState, caller: Caller, tag: str) -> None:
    """As the platform: done whether or not the tag existed (nor is another key's told)."""
    server.tags.delete(caller, tag)


async def tagged_cache(
    server: ServerState, caller: Caller, tag: str, ttl: int | None = None
) -> tuple[CacheRecord, ContextInfo]:
    """The cache a tag names, its time to live reset first when ttl is given."""
    named = server.tags.get(caller, tag)
    try:
        record = server.caches.owned(named.cache_id, caller)
        return record, await engine_context(server, record, ttl)
    except ContextCacheNotFoundError:
        raise ContextCacheNotFoundError(
            f"the tag {tag!r} names the context cache {named.cache_id!r}, which was deleted "
            "or has expired; create a cache and move the tag to it"
        ) from None


async def tag_content(server: ServerState, caller: Caller, tag: str) -> ContextCacheObject:
    record, info = await tagged_cache(server, caller, tag)
    return record.describe(info)
