"""Documents: PDF, DOCX, EPUB, HTML, Markdown and plain text to clean text with structure."""

from tome.assistant.documents.document import Document, Section
from tome.assistant.documents.errors import (
    CorruptDocumentError,
    DocumentError,
    DocumentTooLargeError,
    EmptyDocumentError,
    EncryptedDocumentError,
    UnsupportedDocumentError,
)
from tome.assistant.documents.extract import extract
from tome.assistant.documents.limits import ExtractionLimits

__all__ = [
    "CorruptDocumentError",
    "Document",
    "DocumentError",
    "DocumentTooLargeError",
    "EmptyDocumentError",
    "EncryptedDocumentError",
    "ExtractionLimits",
    "Section",
    "UnsupportedDocumentError",
    "extract",
]
