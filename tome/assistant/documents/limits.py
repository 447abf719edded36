"""Bounds on what one extraction may read, so one upload cannot exhaust the server."""

from dataclasses import dataclass

from tome.errors import InvalidRequestError


@dataclass(frozen=True)
class ExtractionLimits:
    max_bytes: int = 100 * 1024 * 1024
    max_pages: int = 2000
    # DOCX and EPUB are zip files: a small upload can unpack to gigabytes.
    max_unpacked_bytes: int = 500 * 1024 * 1024

    def __post_init__(self) -> None:
        for name in ("max_bytes", "max_pages", "max_unpacked_bytes"):
            if getattr(self, name) <= 0:
                raise InvalidRequestError(f"ExtractionLimits.{name} must be positive")
