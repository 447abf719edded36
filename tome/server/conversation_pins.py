"""A conversation's documents kept pinned (an answer asked with `pin_ttl`). In full mode the
system message holds every attached document whole and stays the same from one question to
the next, so the prefix cache reuses it while its blocks last; pinning makes that certain.
The message becomes a context cache of the caller's, marked with the conversation's id:
listed by GET /v1/caching, counted against the pinned-token limit, billed once when made,
its time to live reset by each answer that asks, made anew when the attachments change and
deleted with the conversation."""

from contextlib import suppress

from tome.assistant.assembly import AssembledPrompt
from tome.errors import ContextCacheNotFoundError
from tome.server.cache_registry import CacheRecord
from tome.server.caching import delete_cache, engine_context, pin_messages
from tome.server.limits import Caller
from tome.server.schemas.chat import ChatMessage
from tome.server.state import ServerState

CONVERSATION = "conversation_id"  # the metadata key that marks a conversation's pin


def pin_of(server: ServerState, caller: Caller, conversation_id: str) -> CacheRecord | None:
    records = server.caches.of(caller)
    return next((r for r in records if r.metadata.get(CONVERSATION) == conversation_id), None)


async def pin_documents(
    server: ServerState, caller: Caller, conversation_id: str, prompt: AssembledPrompt, ttl: int
) -> list[int]:
    """Keep the prompt's documents pinned for `ttl` seconds more; the pinned token ids (none
    in retrieval mode, where the documents are not in the prompt whole)."""
    if prompt.mode != "full":
        return []
    documents = [ChatMessage(**prompt.messages[0])]
    pinned = pin_of(server, caller, conversation_id)
    if pinned is not None and pinned.messages != documents:
        await unpin(server, caller, conversation_id)  # the attachments changed
        pinned = None
    if pinned is not None:
        try:
            await engine_context(server, pinned, ttl)
            return pinned.token_ids
        except ContextCacheNotFoundError:
            pass  # expired: pinned again
    metadata = {CONVERSATION: conversation_id}
    cache = await pin_messages(
        server, caller, documents, ttl, name="conversation documents", metadata=metadata
    )
    return server.caches.owned(cache.id, caller).token_ids


async def unpin(server: ServerState, caller: Caller, conversation_id: str) -> None:
    pinned = pin_of(server, caller, conversation_id)
    if pinned is not None:
        with suppress(ContextCacheNotFoundError):  # expired already: nothing to free
            await delete_cache(server, caller, pinned.id)
