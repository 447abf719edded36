"""What a file is, judged by its bytes first and its extension second: an upload's name may
lie, and a renamed PDF is still a PDF."""

import io
import zipfile
from enum import Enum
from pathlib import PurePath

from tome.assistant.documents.errors import (
    CorruptDocumentError,
    DocumentTooLargeError,
    UnsupportedDocumentError,
)
from tome.assistant.documents.limits import ExtractionLimits


class FileKind(Enum):
    PDF = "pdf"
    DOCX = "docx"
    EPUB = "epub"
    TEXT = "text"  # plain text, Markdown or HTML: told apart once decoded


_BINARY_SIGNATURES = {
    b"\x89PNG": "a PNG image",
    b"\xff\xd8\xff": "a JPEG image",
    b"GIF8": "a GIF image",
    b"\xd0\xcf\x11\xe0": "a legacy Office file (save it as DOCX or PDF)",
    b"\x1f\x8b": "a gzip archive",
    b"7z\xbc\xaf": "a 7z archive",
    b"Rar!": "a RAR archive",
    b"\x7fELF": "an executable",
    b"MZ": "an executable",
}
_ZIP_SIGNATURE = b"PK\x03\x04"


def file_kind(data: bytes, filename: str, limits: ExtractionLimits) -> FileKind:
    extension = PurePath(filename).suffix.lower()
    if b"%PDF-" in data[:1024]:
        return FileKind.PDF
    if data.startswith(_ZIP_SIGNATURE):
        return _zip_kind(data, filename, limits)
    for signature, description in _BINARY_SIGNATURES.items():
        if data.startswith(signature):
            raise UnsupportedDocumentError(f"{filename}: {description} is not a supported type")
    if extension in (".pdf", ".docx", ".epub"):
        raise CorruptDocumentError(f"{filename}: not a valid {extension[1:].upper()} file")
    return FileKind.TEXT


def _zip_kind(data: bytes, filename: str, limits: ExtractionLimits) -> FileKind:
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            members = archive.infolist()
    except zipfile.BadZipFile as error:
        raise CorruptDocumentError(f"{filename}: the zip container is damaged") from error
    unpacked = sum(member.file_size for member in members)
    if unpacked > limits.max_unpacked_bytes:
        raise DocumentTooLargeError(
            f"{filename}: unpacks to {unpacked} bytes, more than the limit of "
            f"{limits.max_unpacked_bytes}"
        )
    names = {member.filename for member in members}
    if "word/document.xml" in names:
        return FileKind.DOCX
    if "META-INF/container.xml" in names:
        return FileKind.EPUB
    raise UnsupportedDocumentError(f"{filename}: a zip archive is not a supported type")
