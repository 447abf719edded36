"""Everything an answer can draw on, as the `SourceText` that assembly reads: an extracted
document, a fetched web page, a web search result."""

from tome.assistant.documents import Document, ExtractionLimits, Section, extract
from tome.assistant.retrieval import SourceText
from tome.assistant.web import FetchedPage, SearchResult


def source_of_document(document: Document, source_id: str) -> SourceText:
    """A document's sections as they are: pages of a PDF, chapters of an EPUB."""
    return SourceText(source_id, document.title, list(document.sections))


def source_of_page(page: FetchedPage, limits: ExtractionLimits | None = None) -> SourceText:
    """A web page as a source named by its URL."""
    return source_of_document(document_of_page(page, limits), page.final_url)


def document_of_page(page: FetchedPage, limits: ExtractionLimits | None = None) -> Document:
    """A web page's readable text as one section; a PDF served over HTTP keeps its pages."""
    if page.text is None:
        return extract(page.content, _filename_of(page.final_url), limits)
    title = page.title or page.final_url
    return Document(title, [Section(None, page.text)], page.final_url, page.media_type)


def source_of_search_result(result: SearchResult) -> SourceText:
    """A search hit's snippet, under its title and site, so [n] can name where it came from."""
    dated = f" ({result.published})" if result.published else ""
    text = f"{result.site}{dated}: {result.snippet}".strip()
    return SourceText(result.url, result.title or result.url, [Section(None, text)])


def _filename_of(url: str) -> str:
    name = url.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1]
    return name if name.lower().endswith(".pdf") else f"{name or 'page'}.pdf"
