"""/v1/caching/refs/tags: name a context cache, list, read and delete the names, and read
the cache a name points at (tome/server/cache_tags.py). Tags are the caller's own; another
key's answer as unknown ones do."""

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Request

from tome.server import cache_tags
from tome.server.auth import authenticate
from tome.server.errors_json import AUTHENTICATED, BODY_BY_ID, BY_ID
from tome.server.limits import Caller
from tome.server.schemas.caching import (
    CacheTag,
    CacheTagDeleted,
    CacheTagList,
    ContextCacheObject,
    TagCreateRequest,
)
from tome.server.state import server_state

MAX_PAGE = 1000

router = APIRouter(prefix="/v1/caching/refs/tags", tags=["caching"])
Authenticated = Annotated[Caller, Depends(authenticate)]


@router.post("", responses=BODY_BY_ID)
async def create_tag(body: TagCreateRequest, request: Request, caller: Authenticated) -> CacheTag:
    return await cache_tags.create_tag(server_state(request), caller, body)


@router.get("", responses=BODY_BY_ID)
async def list_tags(
    request: Request,
    caller: Authenticated,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 20,
    order: Annotated[Literal["asc", "desc"], Query()] = "desc",
    after: Annotated[str | None, Query(description="a tag; the page starts after it")] = None,
    before: Annotated[str | None, Query(description="a tag; the page ends before it")] = None,
) -> CacheTagList:
    page = cache_tags.TagPage(limit, order, after, before)
    return CacheTagList(data=cache_tags.list_tags(server_state(request), caller, page))


@router.get("/{tag}", responses=BY_ID)
async def get_tag(tag: str, request: Request, caller: Authenticated) -> CacheTag:
    return cache_tags.get_tag(server_state(request), caller, tag)


@router.delete("/{tag}", responses=AUTHENTICATED)
async def delete_tag(tag: str, request: Request, caller: Authenticated) -> CacheTagDeleted:
    cache_tags.delete_tag(server_state(request), caller, tag)
    return CacheTagDeleted(tag=tag)


@router.get("/{tag}/content", responses=BY_ID)
async def tag_content(tag: str, request: Request, caller: Authenticated) -> ContextCacheObject:
    return await cache_tags.tag_content(server_state(request), caller, tag)
