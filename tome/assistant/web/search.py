"""Web search behind a provider interface; results are sources an answer can cite."""

from dataclasses import dataclass
from datetime import datetime
from typing import Protocol
from urllib.parse import urlsplit


@dataclass(frozen=True)
class SearchResult:
    """One hit, with what a citation shows: title, URL, site, publication date when the
    provider knows it, when we retrieved it, and which engine found it."""

    title: str
    url: str
    snippet: str
    retrieved_at: datetime
    published: str | None = None
    engine: str | None = None

    @property
    def site(self) -> str:
        """The host name, as a citation prints it ("en.wikipedia.org")."""
        return urlsplit(self.url).hostname or ""


class SearchProvider(Protocol):
    """A web search backend."""

    def search(self, query: str, max_results: int) -> list[SearchResult]:
        """At most `max_results` results for `query`, best first."""
        ...
