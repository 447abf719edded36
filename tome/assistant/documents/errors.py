"""Typed errors for document extraction, each with a one-line message for a person."""

from tome.errors import InvalidRequestError


class DocumentError(InvalidRequestError):
    """A file could not be turned into text."""


class UnsupportedDocumentError(DocumentError):
    """The file is of a type we do not read (an image, an archive, arbitrary binary)."""

    status_code = 415


class DocumentTooLargeError(DocumentError):
    """The file exceeds the extraction limits (bytes, pages, unpacked size)."""

    status_code = 413


class EncryptedDocumentError(DocumentError):
    """The file is password-protected."""


class CorruptDocumentError(DocumentError):
    """The file claims a format but its contents are damaged or truncated."""


class EmptyDocumentError(DocumentError):
    """The file holds no text: empty, or a scan with no text layer."""
