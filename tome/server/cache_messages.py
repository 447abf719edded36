"""A chat that starts with a cache message ({"role": "cache", "content": "cache_id=<id>"}
or "tag=<tag>", either with ";reset_ttl=<seconds>"): the chat it stands for is the cache's
messages followed by the rest, and its prompt starts with the cache's pinned tokens, which
the engine's prefix cache finds; they are reported and billed as cached."""

from tome.server.cache_tags import tagged_cache
from tome.server.caching import engine_context
from tome.server.limits import Caller
from tome.server.prompts import Plan
from tome.server.schemas.chat import ChatCompletionRequest
from tome.server.state import ServerState


async def continue_cache(
    server: ServerState, caller: Caller, body: ChatCompletionRequest
) -> tuple[ChatCompletionRequest, list[int]]:
    """The chat a cache message stands for, and the cache's token ids; a chat without one
    as it is."""
    reference = body.cache
    if reference is None:
        return body, []
    if reference.tag is not None:
        record, _ = await tagged_cache(server, caller, reference.tag, reference.reset_ttl)
    else:
        record = server.caches.owned(reference.cache_id, caller)
        await engine_context(server, record, reference.reset_ttl)
    messages = [*record.messages, *body.messages[1:]]
    return body.model_copy(update={"messages": messages}), record.token_ids


def shared_prefix(plan: Plan, cached_ids: list[int]) -> int:
    """The cache's tokens when the chat's prompt starts with them (it does unless a chat
    template rewrites earlier messages once later ones follow), else 0."""
    prompt = plan.choices[0].prompt_ids if plan.choices and cached_ids else []
    return len(cached_ids) if prompt[: len(cached_ids)] == cached_ids else 0
