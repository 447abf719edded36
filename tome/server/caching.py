"""Context caches over HTTP: the messages a caller pins (a book, a system prompt) are
prefilled once and pinned in the engine's ContextCache under the cache's id; chats that
start with {"role": "cache", "content": "cache_id=<id>"} continue them (cache_messages.py).
The engine keeps the KV blocks and the time to live; the registry keeps who owns each cache
and what it was made of, so one key never sees or uses another's cache."""

import time

from tome.engine.context_cache import ContextInfo
from tome.errors import ContextCacheNotFoundError
from tome.server.cache_registry import CacheRecord
from tome.server.errors import ModelNotFoundError
from tome.server.generation import TokenCounts
from tome.server.limits import Caller
from tome.server.pinned_limit import check_pinned_room
from tome.server.schemas.caching import CacheCreateRequest, ContextCacheObject
from tome.server.schemas.chat import ChatMessage
from tome.server.state import ServerState


def check_model(server: ServerState, model: str) -> None:
    if model != server.model_name:
        raise ModelNotFoundError(
            f"the model {model!r} does not exist; this server serves {server.model_name!r}"
        )


def template_messages(messages: list[ChatMessage]) -> list[dict[str, str]]:
    return [m.as_template_message() for m in messages]


async def create_cache(
    server: ServerState, caller: Caller, body: CacheCreateRequest
) -> ContextCacheObject:
    check_model(server, body.model)
    metadata = dict(body.metadata or {})
    return await pin_messages(
        server, caller, list(body.messages), body.ttl, body.name, body.description, metadata
    )


async def pin_messages(
    server: ServerState,
    caller: Caller,
    messages: list[ChatMessage],
    ttl: int,
    name: str | None = None,
    description: str | None = None,
    metadata: dict[str, str] | None = None,
) -> ContextCacheObject:
    """Tokenize the messages as the start of a chat (no generation prompt, so the chat
    that continues them starts with these very tokens), check the caller's pinned-token
    limit, charge them, prefill and pin. The prefill is billed in the ledger like a prompt;
    chats that continue the cache are billed its tokens as cached."""
    ids = await server.tokenize(
        server.tokenizer.apply_chat_template, template_messages(messages), False
    )
    live = await list_caches(server, caller)
    check_pinned_room(caller.tier, live, server.caches.pending(caller), len(ids), time.time())
    server.limiter.charge_prompt(caller, len(ids))
    cache_id = server.new_request_id("cache")
    with server.caches.reserving(caller, len(ids)):
        info = await server.engine.cache_context(cache_id, ids, ttl, request_id=cache_id)
    record = CacheRecord(
        cache_id,
        caller.key_id,
        server.model_name,
        messages,
        ids,
        name,
        description,
        metadata or {},
    )
    server.caches.add(record)
    server.record_usage(caller, "caching", cache_id, TokenCounts(prompt=len(ids)))
    return record.describe(info)


async def engine_context(server: ServerState, record: CacheRecord, ttl: int | None = None):
    """The engine's view of a cache, its time to live reset first when ttl is given; an
    expired one is forgotten here too and answers 404."""

    def look(engine) -> ContextInfo:
        if ttl is not None:
            return engine.contexts.refresh(record.id, ttl)
        return engine.contexts.get(record.id)

    try:
        return await server.engine.call(look)
    except ContextCacheNotFoundError:
        server.caches.drop(record.id)
        raise ContextCacheNotFoundError(
            f"the context cache {record.id!r} has expired; create it again"
        ) from None


async def get_cache(
    server: ServerState, caller: Caller, cache_id: str, ttl: int | None = None
) -> ContextCacheObject:
    record = server.caches.owned(cache_id, caller)
    return record.describe(await engine_context(server, record, ttl))


async def list_caches(server: ServerState, caller: Caller) -> list[ContextCacheObject]:
    live = await server.engine.call(lambda engine: {c.name: c for c in engine.contexts.all()})
    caches = []
    for record in server.caches.of(caller):
        if record.id in live:
            caches.append(record.describe(live[record.id]))
        else:
            server.caches.drop(record.id)
    return sorted(caches, key=lambda c: (c.created_at, c.id))


async def delete_cache(server: ServerState, caller: Caller, cache_id: str) -> None:
    record = server.caches.owned(cache_id, caller)
    server.caches.drop(record.id)
    try:
        await server.engine.call(lambda engine: engine.contexts.delete(record.id))
    except ContextCacheNotFoundError:
        raise ContextCacheNotFoundError(
            f"the context cache {cache_id!r} has expired; create it again"
        ) from None
