"""/v1/caching: create, list, get, refresh and delete context caches (tome/server/caching.py).
Creating one is a prefill, so it is admitted and limited like a generation; the rest only
read or change what the caller already owns."""

from typing import Annotated

from fastapi import APIRouter, Depends, Request

from tome.server import caching
from tome.server.admission import admit
from tome.server.auth import authenticate
from tome.server.errors_json import AUTHENTICATED, BODY_BY_ID, BY_ID, GENERATING
from tome.server.limits import Admission, Caller
from tome.server.schemas.caching import (
    CacheCreateRequest,
    CacheDeleted,
    CacheUpdateRequest,
    ContextCacheList,
    ContextCacheObject,
)
from tome.server.state import server_state

router = APIRouter(prefix="/v1/caching", tags=["caching"])
Admitted = Annotated[Admission, Depends(admit)]
Authenticated = Annotated[Caller, Depends(authenticate)]


@router.post("", responses=GENERATING)
async def create_cache(
    body: CacheCreateRequest, request: Request, admission: Admitted
) -> ContextCacheObject:
    return await caching.create_cache(server_state(request), admission.caller, body)


@router.get("", responses=AUTHENTICATED)
async def list_caches(request: Request, caller: Authenticated) -> ContextCacheList:
    return ContextCacheList(data=await caching.list_caches(server_state(request), caller))


@router.get("/{cache_id}", responses=BY_ID)
async def get_cache(cache_id: str, request: Request, caller: Authenticated) -> ContextCacheObject:
    return await caching.get_cache(server_state(request), caller, cache_id)


@router.put("/{cache_id}", responses=BODY_BY_ID)
async def refresh_cache(
    cache_id: str, body: CacheUpdateRequest, request: Request, caller: Authenticated
) -> ContextCacheObject:
    return await caching.get_cache(server_state(request), caller, cache_id, ttl=body.ttl)


@router.delete("/{cache_id}", responses=BY_ID)
async def delete_cache(cache_id: str, request: Request, caller: Authenticated) -> CacheDeleted:
    await caching.delete_cache(server_state(request), caller, cache_id)
    return CacheDeleted(id=cache_id)
