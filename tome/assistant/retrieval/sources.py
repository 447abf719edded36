"""What retrieval reads: a source's text in sections, each with its title and page.

Extracted documents, web pages and search results are adapted to `SourceText`; sections
are the document extractor's, so one concept of a section serves both.
"""

from dataclasses import dataclass, field

from tome.assistant.documents.document import Section


@dataclass(frozen=True)
class SourceText:
    """A document, web page or search result as plain text in sections (the extractor's
    Section: a title, the text, a page when there is one)."""

    source_id: str
    title: str
    sections: list[Section] = field(default_factory=list)
