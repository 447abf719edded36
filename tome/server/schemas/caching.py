"""POST/GET/PUT/DELETE /v1/caching and /v1/caching/refs/tags: context caches and the tags
that name them, shaped like the long-text platform's (Moonshot/Kimi), so its clients and
cookbooks work here unchanged."""

from typing import Annotated, Literal

from pydantic import BaseModel, Field

from tome.server.schemas.chat import CACHE_TAG, ChatMessage
from tome.server.schemas.common import StrictModel

DEFAULT_TTL_S = 3600
MAX_TTL_S = 7 * 24 * 3600  # a week: a pin holds KV memory, it is not storage
MAX_METADATA_ITEMS = 16

TimeToLive = Annotated[int, Field(ge=1, le=MAX_TTL_S)]
TagName = Annotated[str, Field(pattern=f"^{CACHE_TAG}$")]


class CacheCreateRequest(StrictModel):
    model: str
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    name: Annotated[str, Field(max_length=256)] | None = None
    description: Annotated[str, Field(max_length=4096)] | None = None
    metadata: Annotated[dict[str, str], Field(max_length=MAX_METADATA_ITEMS)] | None = None
    ttl: TimeToLive = DEFAULT_TTL_S


class CacheUpdateRequest(StrictModel):
    ttl: TimeToLive


class ContextCacheObject(BaseModel):
    id: str
    object: Literal["context_cache_object"] = "context_cache_object"
    status: Literal["pending", "ready", "error", "inactive"]
    model: str
    name: str | None
    description: str | None
    metadata: dict[str, str]
    tokens: int
    created_at: int
    expired_at: int


class ContextCacheList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ContextCacheObject]


class CacheDeleted(BaseModel):
    id: str
    object: Literal["context_cache_object.deleted"] = "context_cache_object.deleted"
    deleted: bool = True


class TagCreateRequest(StrictModel):
    """Names a cache of the caller's; a tag that exists already is moved to it."""

    tag: TagName
    cache_id: Annotated[str, Field(min_length=1, max_length=256)]


class CacheTag(BaseModel):
    tag: str
    cache_id: str
    object: Literal["cache_object.tag"] = "cache_object.tag"
    owned_by: str  # the key's id, as `tome keys list` shows it; "local" in the open mode
    created_at: int


class CacheTagList(BaseModel):
    object: Literal["list"] = "list"
    data: list[CacheTag]


class CacheTagDeleted(BaseModel):
    tag: str
    object: Literal["cache_object.tag.deleted"] = "cache_object.tag.deleted"
    deleted: bool = True
