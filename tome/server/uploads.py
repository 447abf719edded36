"""One upload to /v1/files: checked against the caller's tier, deduplicated by content,
extracted on a worker thread (the event loop keeps serving), counted in the served model's
tokens, then stored with its text so reading it back never extracts again."""

import asyncio
from pathlib import PurePath

from tome.assistant.documents import Document, DocumentTooLargeError, ExtractionLimits, extract
from tome.errors import InvalidRequestError
from tome.server.limits import Caller
from tome.server.schemas.files import FILE_EXTRACT
from tome.server.state import ServerState
from tome.store import ExtractedFile, FileRecord, FileStore, StoredSection
from tome.store.database import data_dir
from tome.store.files import content_hash

MAX_FILENAME_CHARS = 255


def file_store(server: ServerState) -> FileStore:
    return FileStore(server.database, data_dir() / "files")


def upload_limits(caller: Caller) -> ExtractionLimits:
    default = ExtractionLimits()
    if caller.tier.max_upload_bytes is None:
        return default
    return ExtractionLimits(max_bytes=min(caller.tier.max_upload_bytes, default.max_bytes))


def check_upload(filename: str | None, size: int | None, purpose: str, caller: Caller) -> str:
    """The filename to store; 400 for a wrong purpose, 413 for a file over the tier's limit
    (before reading it)."""
    if purpose != FILE_EXTRACT:
        raise InvalidRequestError(f"purpose must be {FILE_EXTRACT!r}, not {purpose[:80]!r}")
    name = PurePath(filename or "").name[:MAX_FILENAME_CHARS] or "document"
    limit = upload_limits(caller).max_bytes
    if size is not None and size > limit:
        raise DocumentTooLargeError(f"{name}: {size} bytes, more than the limit of {limit}")
    return name


async def store_upload(
    server: ServerState, caller: Caller, data: bytes, filename: str, purpose: str
) -> FileRecord:
    store = file_store(server)
    sha256 = await asyncio.to_thread(content_hash, data)
    existing = await asyncio.to_thread(store.find, caller.key_id, sha256)
    if existing is not None:
        return existing
    document = await asyncio.to_thread(extract, data, filename, upload_limits(caller))
    return await store_document(server, caller, data, document, purpose)


async def store_document(
    server: ServerState, caller: Caller, data: bytes, document: Document, purpose: str
) -> FileRecord:
    """Keep an extracted document (an upload, or a fetched web page) for the caller."""
    tokens = await server.tokenize(_token_count, server, document.text)
    extracted = _extracted(document, document.filename, purpose, tokens)
    return await asyncio.to_thread(file_store(server).add, caller.key_id, data, extracted)


def _token_count(server: ServerState, text: str) -> int:
    return len(server.tokenizer.encode(text, add_special_tokens=False))


def _extracted(document: Document, filename: str, purpose: str, tokens: int) -> ExtractedFile:
    pages = {section.page for section in document.sections if section.page is not None}
    return ExtractedFile(
        filename=filename,
        purpose=purpose,
        title=document.title,
        media_type=document.media_type,
        sections=[StoredSection(s.title, s.text, s.page) for s in document.sections],
        pages=len(pages) or None,
        text=document.text,
        tokens=tokens,
    )
