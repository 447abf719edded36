"""/v1/conversations: saved conversations of the caller's key (the local user's in the open
mode): create, list, read, rename, delete, append messages, attach files and URLs, export as
Markdown or JSON. Nothing here generates; an unknown id, or another key's, is a 404."""

import asyncio
from collections.abc import Callable
from typing import Annotated, Literal, TypeVar

from fastapi import APIRouter, Depends, Query, Request, Response

from tome.server import conversation_pins
from tome.server.attachments import store_attachment
from tome.server.auth import authenticate
from tome.server.conversation_export import conversation_markdown
from tome.server.errors_json import (
    AUTHENTICATED,
    BODY_BY_ID,
    BY_ID,
    WITH_BODY,
    error_responses,
)
from tome.server.limits import Caller
from tome.server.schemas.conversations import (
    Attachment,
    Conversation,
    ConversationDetail,
    ConversationList,
    Deleted,
    Message,
    NewAttachment,
    NewConversation,
    NewMessage,
    RenameConversation,
    detail_of,
    summary_of,
)
from tome.server.state import server_state
from tome.store.conversations import ConversationStore

T = TypeVar("T")
router = APIRouter(prefix="/v1/conversations")
Authenticated = Annotated[Caller, Depends(authenticate)]


class Conversations:
    """The store seen by one caller: every call is scoped to the caller's key and runs on
    a worker thread, off the event loop."""

    def __init__(self, request: Request, caller: Authenticated) -> None:
        self.store = ConversationStore(server_state(request).database)
        self.owner = caller.key_id

    async def run(self, method: Callable[..., T], *args) -> T:
        """`method` is a ConversationStore method; it gets the store and the owner first."""
        return await asyncio.to_thread(method, self.store, self.owner, *args)


Store = Annotated[Conversations, Depends()]


@router.post("", responses=WITH_BODY)
async def create_conversation(store: Store, body: NewConversation | None = None) -> Conversation:
    title = body.title if body is not None else None
    return summary_of(await store.run(ConversationStore.create, title))


@router.get("", responses=AUTHENTICATED)
async def list_conversations(store: Store) -> ConversationList:
    return ConversationList(data=[summary_of(r) for r in await store.run(ConversationStore.list)])


@router.get("/{conversation_id}", responses=BY_ID)
async def get_conversation(conversation_id: str, store: Store) -> ConversationDetail:
    return detail_of(await store.run(ConversationStore.get, conversation_id))


@router.patch("/{conversation_id}", responses=BODY_BY_ID)
async def rename_conversation(
    conversation_id: str, body: RenameConversation, store: Store
) -> Conversation:
    return summary_of(await store.run(ConversationStore.rename, conversation_id, body.title))


@router.delete("/{conversation_id}", responses=BY_ID)
async def delete_conversation(
    conversation_id: str, store: Store, request: Request, caller: Authenticated
) -> Deleted:
    await store.run(ConversationStore.delete, conversation_id)
    await conversation_pins.unpin(server_state(request), caller, conversation_id)
    return Deleted(id=conversation_id, object="conversation.deleted")


@router.post("/{conversation_id}/messages", responses=BODY_BY_ID)
async def add_message(conversation_id: str, body: NewMessage, store: Store) -> Message:
    metadata = body.metadata.model_dump() if body.metadata is not None else None
    record = await store.run(
        ConversationStore.add_message, conversation_id, body.role, body.content, metadata
    )
    return Message.of(record)


@router.post(
    "/{conversation_id}/attachments",
    responses=error_responses(400, 401, 403, 404, 413, 415, 502, 504),
)
async def attach(
    conversation_id: str, body: NewAttachment, store: Store, request: Request, caller: Authenticated
) -> Attachment:
    await store.run(ConversationStore.get, conversation_id)  # 404 before fetching anything
    stored = await store_attachment(server_state(request), caller, body)
    record = await store.run(
        ConversationStore.attach,
        conversation_id,
        body.kind,
        body.target,
        stored.title,
        (stored.file_id, stored.tokens),
    )
    return Attachment.of(record)


@router.delete("/{conversation_id}/attachments/{attachment_id}", responses=BY_ID)
async def detach(conversation_id: str, attachment_id: str, store: Store) -> Deleted:
    await store.run(ConversationStore.detach, conversation_id, attachment_id)
    return Deleted(id=attachment_id, object="conversation.attachment.deleted")


@router.get(
    "/{conversation_id}/export",
    responses={
        **BODY_BY_ID,
        200: {"model": ConversationDetail, "content": {"text/markdown": {}}},
    },
)
async def export_conversation(
    conversation_id: str,
    store: Store,
    format: Annotated[Literal["markdown", "json"], Query()] = "markdown",
) -> Response:
    detail = detail_of(await store.run(ConversationStore.get, conversation_id))
    if format == "json":
        body, media_type, suffix = detail.model_dump_json(indent=2), "application/json", "json"
    else:
        body, media_type, suffix = conversation_markdown(detail), "text/markdown", "md"
    disposition = f'attachment; filename="{conversation_id}.{suffix}"'
    return Response(body, media_type=media_type, headers={"Content-Disposition": disposition})
