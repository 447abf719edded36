"""What attaching to a conversation stores: an uploaded file is looked up (another key's
file is unknown); a URL is fetched and its readable text extracted and kept like an upload,
so every later question reads the page as it was when attached, without fetching it again.
A page that cannot be had fails the attachment with the fetch's own message."""

import asyncio
from dataclasses import dataclass

from tome.assistant.sources_of import document_of_page
from tome.assistant.web import fetch_url
from tome.server.limits import Caller
from tome.server.schemas.conversations import NewAttachment
from tome.server.state import ServerState
from tome.server.uploads import file_store, store_document, upload_limits

WEB_PAGE_PURPOSE = "web-page"


@dataclass(frozen=True)
class StoredAttachment:
    title: str
    file_id: str
    tokens: int


async def store_attachment(
    server: ServerState, caller: Caller, body: NewAttachment
) -> StoredAttachment:
    if body.kind == "file":
        record = await asyncio.to_thread(file_store(server).get, caller.key_id, body.file_id)
        return StoredAttachment(body.title or record.title, record.id, record.tokens)
    page = await asyncio.to_thread(fetch_url, body.url, server.settings.web)
    limits = upload_limits(caller)
    document = await asyncio.to_thread(document_of_page, page, limits)
    record = await store_document(server, caller, page.content, document, WEB_PAGE_PURPOSE)
    return StoredAttachment(body.title or document.title, record.id, record.tokens)
