"""Web pages and web search for the reading assistant: `fetch_url` (bounded, private
addresses refused) and `SearchProvider` with its SearXNG implementation."""

from tome.assistant.web.config import WebConfig
from tome.assistant.web.fetch import FetchedPage, fetch_url
from tome.assistant.web.search import SearchProvider, SearchResult
from tome.assistant.web.searxng import SearxngSearch

__all__ = [
    "FetchedPage",
    "SearchProvider",
    "SearchResult",
    "SearxngSearch",
    "WebConfig",
    "fetch_url",
]
