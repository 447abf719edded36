"""Web search results as sources for one question: every result's snippet, and the
readable text of the best few pages, fetched at once. A page that cannot be fetched keeps
only its snippet; a search provider that fails fails the question, with its message."""

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from tome.assistant.retrieval import SourceText
from tome.assistant.sources_of import source_of_page, source_of_search_result
from tome.assistant.web import SearchProvider, SearchResult, WebConfig, fetch_url
from tome.errors import TomeError


@dataclass(frozen=True)
class SearchSettings:
    max_results: int = 5
    pages_fetched: int = 2  # the top results whose whole page is read, not just the snippet


def search_sources(
    provider: SearchProvider,
    question: str,
    web: WebConfig,
    settings: SearchSettings | None = None,
) -> list[SourceText]:
    settings = settings or SearchSettings()
    results = provider.search(question, settings.max_results)
    fetched = results[: settings.pages_fetched]
    with ThreadPoolExecutor(max(1, len(fetched)), thread_name_prefix="tome-search") as pool:
        pages = list(pool.map(lambda result: _page_or_none(result, web), fetched))
    pages += [None] * (len(results) - len(fetched))
    return [page or source_of_search_result(r) for r, page in zip(results, pages, strict=True)]


def _page_or_none(result: SearchResult, web: WebConfig) -> SourceText | None:
    try:
        page = source_of_page(fetch_url(result.url, web))
    except TomeError:
        return None
    return SourceText(page.source_id, result.title or page.title, page.sections)
