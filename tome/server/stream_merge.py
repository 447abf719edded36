"""Merge several async iterators into one, in arrival order. Closing the merged iterator
(or an error in any source) closes every source: for engine streams, that aborts them."""

import asyncio
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import TypeVar

T = TypeVar("T")
_DONE = object()


class _Failure:
    def __init__(self, error: BaseException) -> None:
        self.error = error


async def merge(sources: list[AsyncIterator[T]]) -> AsyncIterator[T]:
    if len(sources) == 1:  # the common case (n=1) needs no tasks
        async with aclosing(sources[0]) as only:
            async for item in only:
                yield item
        return
    queue: asyncio.Queue = asyncio.Queue()
    tasks = [asyncio.create_task(_pump(source, queue)) for source in sources]
    remaining = len(tasks)
    try:
        while remaining:
            item = await queue.get()
            if item is _DONE:
                remaining -= 1
            elif isinstance(item, _Failure):
                raise item.error
            else:
                yield item
    finally:
        for task in tasks:
            task.cancel()  # a cancelled pump closes its source


async def _pump(source: AsyncIterator[T], queue: asyncio.Queue) -> None:
    try:
        async with aclosing(source) as stream:
            async for item in stream:
                queue.put_nowait(item)
    except Exception as exc:  # handed to the consumer, who raises it
        queue.put_nowait(_Failure(exc))
    finally:
        queue.put_nowait(_DONE)
