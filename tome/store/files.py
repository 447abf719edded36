"""Uploaded files: the bytes and their extracted text on disk, named by SHA-256 (stored once
however many keys upload them), and one row per key and content in the `files` table (the
same bytes uploaded twice by one key are one file). A key sees only its own files."""

import hashlib
import json
import os
import tempfile
import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import NoReturn

from sqlalchemy import ForeignKey, String, UniqueConstraint, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, mapped_column

from tome.store.database import Database
from tome.store.errors import StoreError
from tome.store.models import Base, utc_now

FILE_ID_PREFIX = "file-"


class UnknownFileError(StoreError):
    """No file with that id belongs to the caller (another key's files are unknown too)."""

    status_code = 404
    error_type = "invalid_request_error"
    code = "file_not_found"


class FileRow(Base):
    __tablename__ = "files"
    # Deduplication per key; the open mode's key_id is NULL, which SQL never counts as equal,
    # so there `add` relies on its own look-up alone (one local user).
    __table_args__ = (UniqueConstraint("key_id", "sha256"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    key_id: Mapped[int | None] = mapped_column(ForeignKey("api_keys.id"), index=True)
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    filename: Mapped[str] = mapped_column(String(1000))
    purpose: Mapped[str] = mapped_column(String(64))
    bytes: Mapped[int]
    title: Mapped[str] = mapped_column(String(1000))
    media_type: Mapped[str] = mapped_column(String(200))
    sections: Mapped[int]
    pages: Mapped[int | None]
    characters: Mapped[int]
    tokens: Mapped[int]  # of the extracted text, for the model the server ran at upload
    created_at: Mapped[datetime] = mapped_column(default=utc_now)


@dataclass(frozen=True)
class StoredSection:
    """A section of an extracted file, kept so that citations can name it and its page."""

    title: str | None
    text: str
    page: int | None = None


@dataclass(frozen=True)
class ExtractedFile:
    """What extraction learned of an upload, to be stored with it."""

    filename: str
    purpose: str
    title: str
    media_type: str
    sections: list[StoredSection]
    pages: int | None
    text: str
    tokens: int


@dataclass(frozen=True)
class FileRecord:
    id: str
    sha256: str
    filename: str
    purpose: str
    bytes: int
    title: str
    media_type: str
    sections: int
    pages: int | None
    characters: int
    tokens: int
    created_at: datetime


def content_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class FileStore:
    def __init__(self, database: Database, directory: Path) -> None:
        self.database = database
        self.directory = directory

    def find(self, key_id: int | None, sha256: str) -> FileRecord | None:
        """The caller's file with these contents, if it uploaded them before."""
        with self.database.session() as session:
            row = session.scalar(select(FileRow).where(_owned_by(key_id), FileRow.sha256 == sha256))
            return _record(row) if row is not None else None

    def add(self, key_id: int | None, data: bytes, extracted: ExtractedFile) -> FileRecord:
        """Store the bytes and text (once per content) and the caller's row (once per key)."""
        sha256 = content_hash(data)
        existing = self.find(key_id, sha256)
        if existing is not None:
            return existing
        _write_once(self._blob_path(sha256), data)
        _write_once(self._text_path(sha256), extracted.text.encode())
        sections = [vars(section) for section in extracted.sections]
        _write_once(self._sections_path(sha256), json.dumps(sections, ensure_ascii=False).encode())
        row = FileRow(
            id=FILE_ID_PREFIX + uuid.uuid4().hex[:24],
            key_id=key_id,
            sha256=sha256,
            filename=extracted.filename,
            purpose=extracted.purpose,
            bytes=len(data),
            title=extracted.title,
            media_type=extracted.media_type,
            sections=len(extracted.sections),
            pages=extracted.pages,
            characters=len(extracted.text),
            tokens=extracted.tokens,
        )
        try:
            with self.database.session() as session, session.begin():
                session.add(row)
        except IntegrityError:  # the same upload, finished first by a concurrent request
            return self.find(key_id, sha256) or _raise_unknown(row.id)
        return _record(row)

    def all(self, key_id: int | None, purpose: str | None = None) -> list[FileRecord]:
        query = select(FileRow).where(_owned_by(key_id)).order_by(FileRow.created_at.desc())
        if purpose is not None:
            query = query.where(FileRow.purpose == purpose)
        with self.database.session() as session:
            return [_record(row) for row in session.scalars(query)]

    def get(self, key_id: int | None, file_id: str) -> FileRecord:
        with self.database.session() as session:
            return _record(self._owned_row(session, key_id, file_id))

    def text(self, key_id: int | None, file_id: str) -> str:
        """The extracted text, as stored at upload (never extracted again)."""
        record = self.get(key_id, file_id)
        return self._text_path(record.sha256).read_text(encoding="utf-8")

    def sections(self, key_id: int | None, file_id: str) -> list[StoredSection]:
        """The extracted sections, as stored at upload, in order."""
        record = self.get(key_id, file_id)
        path = self._sections_path(record.sha256)
        if not path.exists():  # stored before sections were kept: the text is one section
            return [StoredSection(None, self.text(key_id, file_id))]
        return [StoredSection(**section) for section in json.loads(path.read_text("utf-8"))]

    def delete(self, key_id: int | None, file_id: str) -> None:
        """Remove the caller's row; the bytes and text go with the last row that names them."""
        with self.database.session() as session, session.begin():
            row = self._owned_row(session, key_id, file_id)
            sha256 = row.sha256
            session.delete(row)
            session.flush()
            still_used = session.scalar(select(func.count()).where(FileRow.sha256 == sha256))
        if not still_used:
            self._blob_path(sha256).unlink(missing_ok=True)
            self._text_path(sha256).unlink(missing_ok=True)
            self._sections_path(sha256).unlink(missing_ok=True)

    def _owned_row(self, session, key_id: int | None, file_id: str) -> FileRow:
        row = session.get(FileRow, file_id)
        if row is None or row.key_id != key_id:
            _raise_unknown(file_id)
        return row

    def _blob_path(self, sha256: str) -> Path:
        return self.directory / sha256

    def _text_path(self, sha256: str) -> Path:
        return self.directory / f"{sha256}.txt"

    def _sections_path(self, sha256: str) -> Path:
        return self.directory / f"{sha256}.sections.json"


def _owned_by(key_id: int | None):
    return FileRow.key_id.is_(None) if key_id is None else FileRow.key_id == key_id


def _raise_unknown(file_id: str) -> NoReturn:
    raise UnknownFileError(f"no file with id {file_id[:80]!r}")


def _write_once(path: Path, data: bytes) -> None:
    """Write through a temporary file and a rename, so a reader never sees half a file."""
    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=".upload-")
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _record(row: FileRow) -> FileRecord:
    return FileRecord(
        id=row.id,
        sha256=row.sha256,
        filename=row.filename,
        purpose=row.purpose,
        bytes=row.bytes,
        title=row.title,
        media_type=row.media_type,
        sections=row.sections,
        pages=row.pages,
        characters=row.characters,
        tokens=row.tokens,
        created_at=row.created_at,
    )
