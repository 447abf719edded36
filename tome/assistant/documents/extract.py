"""`extract`: any supported file to a `Document`, dispatched on what the bytes are."""

import os
import re
from pathlib import Path, PurePath

from tome.assistant.documents.clean_text import clean_text
from tome.assistant.documents.document import Document, Section
from tome.assistant.documents.docx_reader import read_docx
from tome.assistant.documents.epub_reader import read_epub
from tome.assistant.documents.errors import DocumentTooLargeError, EmptyDocumentError
from tome.assistant.documents.file_kind import FileKind, file_kind
from tome.assistant.documents.html_reader import read_html
from tome.assistant.documents.limits import ExtractionLimits
from tome.assistant.documents.markdown_reader import read_markdown
from tome.assistant.documents.pdf_reader import read_pdf
from tome.assistant.documents.text_encoding import decode_text

_HTML_START = re.compile(r"^\s*(<!doctype\s+html|<html[\s>])", re.IGNORECASE)
_HTML_EXTENSIONS = (".html", ".htm", ".xhtml")
_MARKDOWN_EXTENSIONS = (".md", ".markdown")


def extract(
    source: bytes | str | os.PathLike,
    filename: str | None = None,
    limits: ExtractionLimits | None = None,
) -> Document:
    """Reads PDF, DOCX, EPUB, HTML, Markdown or plain text (UTF-8, UTF-16, GB18030, Big5).

    `source` is the file's bytes or a path; `filename` names it in errors and gives the
    fallback title (a path's own name by default). Raises a `DocumentError` subclass."""
    limits = limits or ExtractionLimits()
    if isinstance(source, bytes):
        filename = filename or "document"
        data = _checked_size(source, len(source), filename, limits)
    else:
        path = Path(source)
        filename = filename or path.name
        _checked_size(b"", path.stat().st_size, filename, limits)
        data = path.read_bytes()
    document = _read(data, filename, limits)
    if not document.text:
        raise EmptyDocumentError(f"{filename}: the file contains no text")
    return document


def _checked_size(data: bytes, size: int, filename: str, limits: ExtractionLimits) -> bytes:
    if size > limits.max_bytes:
        raise DocumentTooLargeError(
            f"{filename}: {size} bytes, more than the limit of {limits.max_bytes}"
        )
    return data


def _read(data: bytes, filename: str, limits: ExtractionLimits) -> Document:
    title = PurePath(filename).stem or filename
    kind = file_kind(data, filename, limits)
    if kind is FileKind.PDF:
        return read_pdf(data, filename, title, limits)
    if kind is FileKind.DOCX:
        return read_docx(data, filename, title)
    if kind is FileKind.EPUB:
        return read_epub(data, filename, title)
    text, _encoding = decode_text(data, filename)
    extension = PurePath(filename).suffix.lower()
    if extension in _HTML_EXTENSIONS or _HTML_START.match(text[:1024]):
        return read_html(text, filename, title)
    if extension in _MARKDOWN_EXTENSIONS:
        return read_markdown(text, filename, title)
    return Document(title, [Section(None, clean_text(text))], filename, "text/plain")
