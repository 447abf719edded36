"""AsyncEngine: the engine on a background thread, streamed to asyncio callers.

One thread owns the Engine and steps it while work exists; callers on the event loop
send add/abort commands through a queue and receive outputs through per-request asyncio
queues. The event loop never waits on a forward pass."""

import asyncio
import logging
import queue
import threading
from collections.abc import AsyncIterator, Callable
from collections.abc import Sequence as Seq
from typing import Any, TypeVar

from tome.engine.config import EngineConfig
from tome.engine.context_cache import ContextInfo
from tome.engine.engine import Engine
from tome.engine.outputs import RequestOutput
from tome.engine.sampling_params import SamplingParams
from tome.errors import InvalidRequestError, RequestAbortedError, TomeError
from tome.loader.error_text import one_line

logger = logging.getLogger(__name__)
T = TypeVar("T")


class AsyncEngine:
    def __init__(self, config: EngineConfig | None = None, engine: Engine | None = None) -> None:
        self.engine = engine or Engine(config or EngineConfig())
        self.tokenizer = self.engine.tokenizer
        self._commands: queue.Queue = queue.Queue()
        self._streams: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Queue]] = {}
        self._stopped = False
        self._thread = threading.Thread(target=self._loop, name="tome-engine", daemon=True)
        self._thread.start()

    async def generate(
        self,
        prompt: str | Seq[int],
        params: SamplingParams,
        request_id: str,
        priority: int = 0,
        context: str | None = None,
    ) -> AsyncIterator[RequestOutput]:
        """Yield a RequestOutput each time the request advances; the last one is finished.
        Leaving the loop early (or being cancelled) aborts the request. With `context`,
        the prompt continues that cached context."""
        args = (request_id, prompt, params, priority, context)
        async for out in self._stream(request_id, Engine.add_request, args):
            yield out

    async def cache_context(
        self, name: str, prompt: str | Seq[int], ttl_seconds: float, request_id: str
    ) -> ContextInfo:
        """Prefill and pin a named context (Engine.cache_context); returns it once pinned."""
        args = (request_id, name, prompt, ttl_seconds)
        async for out in self._stream(request_id, Engine.cache_context, args):
            if out.finish_reason not in (None, "stop"):
                raise RequestAbortedError(f"caching context {name!r} ended: {out.finish_reason}")
        return await self.call(lambda engine: engine.contexts.get(name))

    async def call(self, fn: Callable[[Engine], T]) -> T:
        """Run fn(engine) on the engine thread, between steps, and return its result."""
        if self._stopped:
            raise RequestAbortedError("the engine was shut down")
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        self._commands.put(("call", fn, (loop, done)))
        return await done

    async def _stream(
        self, request_id: str, start: Callable[..., None], args: tuple
    ) -> AsyncIterator[RequestOutput]:
        if self._stopped:
            raise RequestAbortedError("the engine was shut down")
        loop = asyncio.get_running_loop()
        stream: asyncio.Queue = asyncio.Queue()
        added = loop.create_future()
        self._commands.put(("add", (start, args), (loop, stream, added)))
        await added
        finished = False
        try:
            while not finished:
                item = await stream.get()
                if isinstance(item, TomeError):
                    raise item
                finished = item.finished
                yield item
        finally:
            if not finished:
                await self.abort(request_id)

    async def abort(self, request_id: str) -> None:
        self._commands.put(("abort", request_id, None))

    def shutdown(self) -> None:
        self._stopped = True
        self._commands.put(("stop", None, None))
        self._thread.join(timeout=30)

    def _loop(self) -> None:
        while not self._stopped:
            self._drain_commands(block=not self.engine.has_unfinished())
            if not self.engine.has_unfinished():
                continue
            try:
                outputs = self.engine.step()
            except Exception as exc:  # a failed step must not strand the waiting callers
                logger.exception("engine step failed")
                self._fail_all(exc)
                continue
            for out in outputs:
                self._publish(out)
        # Shut down: whoever still waits on a stream would otherwise wait forever.
        self._fail_all(RequestAbortedError("the engine was shut down"))

    def _fail_all(self, exc: Exception) -> None:
        error = exc if isinstance(exc, TomeError) else TomeError(f"engine step failed: {exc}")
        for request_id, (loop, stream) in list(self._streams.items()):
            self.engine.abort(request_id)
            del self._streams[request_id]
            _deliver(loop, stream.put_nowait, error)

    def _drain_commands(self, block: bool) -> None:
        try:
            command = self._commands.get(block=block)
            while True:
                self._handle(*command)
                command = self._commands.get_nowait()
        except queue.Empty:
            pass

    def _handle(self, kind: str, payload: Any, reply: Any) -> None:
        if kind == "add":
            loop, stream, added = reply
            start, args = payload
            request_id = args[0]
            try:
                start(self.engine, *args)
                self._streams[request_id] = (loop, stream)
                _deliver(loop, _settle, added, None, None)
            except TomeError as exc:
                _deliver(loop, _settle, added, None, exc)
            except Exception as exc:  # a malformed request must not end the engine thread
                error = InvalidRequestError(f"the request was rejected: {one_line(exc)}")
                _deliver(loop, _settle, added, None, error)
        elif kind == "call":
            loop, done = reply
            try:
                _deliver(loop, _settle, done, payload(self.engine), None)
            except Exception as exc:  # handed to the caller, whatever it is
                _deliver(loop, _settle, done, None, exc)
        elif kind == "abort":
            out = self.engine.abort(payload)
            if out is not None:
                self._publish(out)

    def _publish(self, out: RequestOutput) -> None:
        target = self._streams.get(out.request_id)
        if target is None:
            return
        loop, stream = target
        if out.finished:
            del self._streams[out.request_id]
        if not _deliver(loop, stream.put_nowait, out) and not out.finished:
            # Nobody is left to read it: stop computing for it.
            del self._streams[out.request_id]
            self.engine.abort(out.request_id)


def _deliver(loop: asyncio.AbstractEventLoop, callback: Any, *args: Any) -> bool:
    """Run callback on a caller's event loop; False when that loop has closed (its caller
    is gone, say after asyncio.run returned): the engine thread goes on regardless."""
    try:
        loop.call_soon_threadsafe(callback, *args)
    except RuntimeError:
        if not loop.is_closed():
            raise
        return False
    return True


def _settle(future: asyncio.Future, result: Any, error: Exception | None) -> None:
    if future.done():
        return
    if error is None:
        future.set_result(result)
    else:
        future.set_exception(error)
