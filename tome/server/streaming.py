"""Server-sent events for streamed answers, and noticing a client that went away.

A stream's first update is awaited before the response starts, so that a request the
engine rejects still gets a proper HTTP error. Once streaming, Starlette cancels the body
when the client disconnects; EventStream also closes it whatever happened, so the
generation is always aborted and accounted for."""

import asyncio
from collections.abc import AsyncIterator, Awaitable
from typing import Protocol, TypeVar

from fastapi import Request
from pydantic import BaseModel
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from tome.errors import TomeError
from tome.server.errors_json import error_body
from tome.server.generation import ChoiceUpdate, Generation, TokenCounts

T = TypeVar("T")
DONE_EVENT = "data: [DONE]\n\n"


class ClientDisconnected(Exception):
    """The client closed the connection before the answer was ready."""


class Formatter(Protocol):
    def chunks(self, update: ChoiceUpdate) -> list[BaseModel]: ...

    def usage_chunk(self, counts: TokenCounts) -> BaseModel: ...


class EventStream(StreamingResponse):
    media_type = "text/event-stream"

    def __init__(self, events: AsyncIterator[str]) -> None:
        super().__init__(events, headers={"Cache-Control": "no-cache"})
        self._events = events

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self._events.aclose()


async def until_disconnected(request: Request, work: Awaitable[T]) -> T:
    """Await `work` unless the client disconnects first: then cancel it (for engine
    streams that aborts the request) and raise ClientDisconnected."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnect(request))
    try:
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
    if task in done:
        return task.result()
    await asyncio.gather(task, return_exceptions=True)  # let it unwind: that aborts it
    raise ClientDisconnected()


async def _disconnect(request: Request) -> None:
    # The body has been read: what uvicorn hands over next is the disconnect.
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def stream_events(
    request: Request, generation: Generation, formatter: Formatter, include_usage: bool
) -> EventStream:
    updates = generation.updates()
    try:
        first = await until_disconnected(request, anext(updates))
    except BaseException:
        await generation.aclose()
        raise

    async def events() -> AsyncIterator[str]:
        try:
            async for update in _prepend(first, updates):
                for chunk in formatter.chunks(update):
                    yield _event(chunk)
            if include_usage:
                yield _event(formatter.usage_chunk(generation.counts))
        except TomeError as exc:
            yield f"data: {error_body(exc).model_dump_json()}\n\n"
        finally:
            await generation.aclose()
        yield DONE_EVENT

    return EventStream(events())


async def _prepend(first: T, rest: AsyncIterator[T]) -> AsyncIterator[T]:
    yield first
    async for item in rest:
        yield item


def _event(chunk: BaseModel) -> str:
    return f"data: {chunk.model_dump_json()}\n\n"
