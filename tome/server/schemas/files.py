"""The files API's responses, in OpenAI's file object shape plus what a reader wants to know
before asking about a file: its title, its structure and its size in the model's tokens."""

from datetime import UTC
from typing import Literal

from pydantic import BaseModel

from tome.store import FileRecord

FILE_EXTRACT = "file-extract"  # the purpose of the hosted long-text platforms' files APIs


class FileObject(BaseModel):
    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    filename: str
    purpose: str
    status: Literal["processed"] = "processed"  # extraction finishes before the upload returns
    status_details: str | None = None
    title: str
    media_type: str
    sha256: str
    sections: int
    pages: int | None  # None: the format has no pages (all but PDF)
    characters: int
    tokens: int  # of the extracted text, for the served model

    @classmethod
    def of(cls, record: FileRecord) -> "FileObject":
        return cls(
            id=record.id,
            bytes=record.bytes,
            created_at=int(record.created_at.replace(tzinfo=UTC).timestamp()),
            filename=record.filename,
            purpose=record.purpose,
            title=record.title,
            media_type=record.media_type,
            sha256=record.sha256,
            sections=record.sections,
            pages=record.pages,
            characters=record.characters,
            tokens=record.tokens,
        )


class FileList(BaseModel):
    object: Literal["list"] = "list"
    data: list[FileObject]
    has_more: bool = False


class FileDeleted(BaseModel):
    id: str
    object: Literal["file"] = "file"
    deleted: bool = True
