"""Readable text and title of an HTML page, with trafilatura (main content, without
navigation, ads and footers)."""

import trafilatura

from tome.assistant.web.errors import NoReadableTextError


def readable_text(html: str, url: str) -> tuple[str | None, str]:
    """(title, text) of the page's main content."""
    document = trafilatura.bare_extraction(
        html, url=url, with_metadata=True, include_tables=True, favor_recall=True
    )
    title = document.title if document is not None else None
    text = document.text if document is not None else None
    if not text:
        # Short pages (a single paragraph) fall below trafilatura's content heuristics.
        text = trafilatura.html2txt(html)
    if not text or not text.strip():
        raise NoReadableTextError(f"no readable text found on {url}")
    return title or None, text.strip()
