"""Context caches over HTTP: the messages a caller pins (a book, a system prompt) are
prefilled once and pinned in the engine's ContextCache under the cache's id; chats that
start with {"role": "cache", "content": "cache_id=<id>"} continue them. The engine keeps
the KV blocks and the time to live; this registry keeps who owns each cache and what it
was made of, so one key never sees or uses another's cache."""

from tome.engine.context_cache import ContextInfo
from tome.errors import ContextCacheNotFoundError
from tome.server.cache_registry import CacheRecord
from tome.server.errors import ModelNotFoundError
from tome.server.limits import Caller
from tome.server.prompts import Plan
from tome.server.schemas.caching import CacheCreateRequest, ContextCacheObject
from tome.server.schemas.chat import ChatCompletionRequest, ChatMessage
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
    """Tokenize the messages as the start of a chat (no generation prompt, so the chat
    that continues them starts with these very tokens), charge them, prefill and pin."""
    check_model(server, body.model)
    messages = template_messages(body.messages)
    ids = await server.tokenize(server.tokenizer.apply_chat_template, messages, False)
    server.limiter.charge_prompt(caller, len(ids))
    cache_id = server.new_request_id("cache")
    info = await server.engine.cache_context(cache_id, ids, body.ttl, request_id=cache_id)
    record = CacheRecord(
        cache_id,
        caller.key_id,
        server.model_name,
        list(body.messages),
        ids,
        body.name,
        body.description,
        dict(body.metadata or {}),
    )
    server.caches.add(record)
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


async def continue_cache(
    server: ServerState, caller: Caller, body: ChatCompletionRequest
) -> tuple[ChatCompletionRequest, list[int]]:
    """A chat that starts with a cache message, as the chat it stands for: the cache's
    messages followed by the rest (their prompt then starts with the pinned tokens, which
    the engine's prefix cache finds). Returns it and the cache's token ids."""
    reference = body.cache
    if reference is None:
        return body, []
    record = server.caches.owned(reference.cache_id, caller)
    await engine_context(server, record, reference.reset_ttl)
    messages = [*record.messages, *body.messages[1:]]
    return body.model_copy(update={"messages": messages}), record.token_ids


def shared_prefix(plan: Plan, cached_ids: list[int]) -> int:
    """The cache's tokens when the chat's prompt starts with them (it does unless a chat
    template rewrites earlier messages once later ones follow), else 0."""
    prompt = plan.choices[0].prompt_ids if plan.choices and cached_ids else []
    return len(cached_ids) if prompt[: len(cached_ids)] == cached_ids else 0
