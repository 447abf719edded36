"""The extracted form of a file: a title, ordered sections and the clean full text."""

from dataclasses import dataclass, field
from typing import Protocol


class TextEncoder(Protocol):
    def encode(self, text: str) -> list[int]: ...


@dataclass(frozen=True)
class Section:
    """A page (PDF), a chapter (EPUB) or the text under a heading (DOCX, Markdown, HTML)."""

    title: str | None
    text: str
    page: int | None = None


@dataclass(frozen=True)
class Document:
    title: str
    sections: list[Section]
    filename: str
    media_type: str
    text: str = field(default="")

    def __post_init__(self) -> None:
        if not self.text:
            object.__setattr__(self, "text", join_sections(self.sections))

    def token_count(self, tokenizer: TextEncoder) -> int:
        return len(tokenizer.encode(self.text))


def join_sections(sections: list[Section]) -> str:
    """Headings stay in the full text as their own lines: the model reads the structure too."""
    parts = []
    for section in sections:
        heading = f"{section.title}\n\n" if section.title else ""
        parts.append(heading + section.text)
    return "\n\n".join(part.strip() for part in parts if part.strip())
