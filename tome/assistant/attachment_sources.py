"""A conversation's attachments as sources: each stored file (an upload, or the page
fetched when a URL was attached) read back with its sections and pages, never extracted
again."""

from collections.abc import Sequence

from tome.assistant.documents import Section
from tome.assistant.retrieval import SourceText
from tome.store import FileStore
from tome.store.conversations import AttachmentRecord


def attachment_sources(
    files: FileStore, owner: int | None, attachments: Sequence[AttachmentRecord]
) -> list[SourceText]:
    """The sources in the order they were attached: the order full mode lays them out in,
    so a question after the last attachment finds the same prefix cached."""
    return [_source(files, owner, attachment) for attachment in attachments if attachment.file_id]


def _source(files: FileStore, owner: int | None, attachment: AttachmentRecord) -> SourceText:
    stored = files.sections(owner, attachment.file_id)
    sections = [Section(s.title, s.text, s.page) for s in stored]
    title = attachment.title or files.get(owner, attachment.file_id).title
    source_id = attachment.file_id if attachment.kind == "file" else attachment.target
    return SourceText(source_id, title, sections)
