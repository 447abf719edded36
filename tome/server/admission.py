"""The `admit` dependency: a request passes the overload check (503 when its tier would
queue too long), is counted against its caller's limits (429) and holds a concurrency
slot, given back when its generation ends, or here when it never started one."""

import asyncio
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Annotated

from fastapi import Depends, Request

from tome.server.auth import authenticate
from tome.server.limits import Admission, Caller, utc_today
from tome.server.state import server_state


async def admit(
    request: Request, caller: Annotated[Caller, Depends(authenticate)]
) -> AsyncIterator[Admission]:
    server = server_state(request)
    server.queue.check(caller.tier)
    if server.limiter.needs_day_seed(caller):
        since = datetime.combine(utc_today(), datetime.min.time())  # naive UTC, as stored
        used = await asyncio.to_thread(server.usage.tokens_since, caller.key_id, since)
        server.limiter.seed_day(caller, used)
    admission = server.limiter.start_request(caller)
    try:
        yield admission
    finally:
        if not admission.handed_over:
            admission.release()
