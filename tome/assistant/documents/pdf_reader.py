"""PDF text layer, one section per page with its page number.

pypdf over pdfminer.six: on PDFs written by reportlab in the tests (English in Helvetica,
Chinese in the STSong-Light CID font) both returned the exact text, but pypdf was about 4x
faster (100 Chinese pages: 0.8 s against 3.2 s), gives text page by page without parsing
form-feed separators, detects encryption itself, and is pure Python with no required
dependencies (`pypdf[crypto]` adds AES for PDFs encrypted with an empty user password).
"""

import io

from pypdf import PdfReader
from pypdf.errors import FileNotDecryptedError

from tome.assistant.documents.clean_text import clean_text
from tome.assistant.documents.document import Document, Section
from tome.assistant.documents.errors import (
    CorruptDocumentError,
    DocumentError,
    DocumentTooLargeError,
    EmptyDocumentError,
    EncryptedDocumentError,
)
from tome.assistant.documents.limits import ExtractionLimits

MEDIA_TYPE = "application/pdf"


def read_pdf(data: bytes, filename: str, title: str, limits: ExtractionLimits) -> Document:
    try:
        reader = PdfReader(io.BytesIO(data))
        _unlock(reader, filename)
        num_pages = len(reader.pages)
        if num_pages > limits.max_pages:
            raise DocumentTooLargeError(
                f"{filename}: {num_pages} pages, more than the limit of {limits.max_pages}"
            )
        sections = _pages(reader)
        metadata_title = _metadata_title(reader)
    except DocumentError:
        raise
    except FileNotDecryptedError as error:
        raise EncryptedDocumentError(f"{filename}: the PDF is password-protected") from error
    except Exception as error:  # damaged input surfaces as zlib, NotImplementedError, ...
        raise CorruptDocumentError(f"{filename}: the PDF is damaged or truncated") from error
    if not sections:
        raise EmptyDocumentError(f"{filename}: the PDF has no text layer (a scan?)")
    return Document(metadata_title or title, sections, filename, MEDIA_TYPE)


def _metadata_title(reader: PdfReader) -> str | None:
    # Writers such as reportlab fill in "untitled" when the author set nothing.
    title = (reader.metadata.title or "").strip() if reader.metadata else ""
    return title if title.lower() not in ("", "untitled") else None


def _unlock(reader: PdfReader, filename: str) -> None:
    """Many PDFs are encrypted only to restrict printing, with an empty user password."""
    if reader.is_encrypted and not reader.decrypt(""):
        raise EncryptedDocumentError(f"{filename}: the PDF is password-protected")


def _pages(reader: PdfReader) -> list[Section]:
    sections = []
    for number, page in enumerate(reader.pages, start=1):
        text = clean_text(page.extract_text() or "")
        if text:
            sections.append(Section(title=None, text=text, page=number))
    return sections
