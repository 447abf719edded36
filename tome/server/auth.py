"""Who is calling: the `authenticate` dependency checks the bearer key against the
database (hashes only) and finds its tier. In the open mode every caller is the one local
user and keys are ignored (OpenAI clients always send one)."""

import asyncio
from typing import Annotated

from fastapi import Header, Request

from tome.server.errors import AuthenticationError, PermissionDeniedError
from tome.server.limits import Caller
from tome.server.state import server_state
from tome.server.tiers import LOCAL_TIER


async def authenticate(
    request: Request, authorization: Annotated[str | None, Header()] = None
) -> Caller:
    server = server_state(request)
    if server.open_mode:
        return Caller(None, LOCAL_TIER)
    scheme, _, key = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise AuthenticationError("no API key: send it as the header `Authorization: Bearer <key>`")
    info = await asyncio.to_thread(server.keys.lookup, key.strip())
    if info is None:
        raise AuthenticationError("the API key is not valid")
    if not info.active:
        raise AuthenticationError("the API key was revoked")
    tier = server.settings.tiers.get(info.tier)
    if tier is None:
        raise PermissionDeniedError(
            f"the API key's tier {info.tier!r} is not configured on this server"
        )
    return Caller(info.id, tier)
