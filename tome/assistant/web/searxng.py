"""`SearxngSearch`: web search through a SearXNG instance's JSON API
(`GET {base}/search?q=...&format=json`; the instance must list `json` under
`search.formats` in its settings.yml).

The instance's URL comes from the operator's configuration, not from a user, so it may be
on a private address (SearXNG usually runs beside us); the result URLs it returns are
fetched later through `fetch_url`, which checks them."""

import json
import time
from datetime import UTC, datetime

import httpx

from tome.assistant.web.address_guard import parse_http_url
from tome.assistant.web.bounded_body import read_capped
from tome.assistant.web.config import WebConfig
from tome.assistant.web.errors import (
    FetchTimeoutError,
    HttpStatusError,
    InvalidSearchQueryError,
    SearchResponseError,
    UnreachableHostError,
)
from tome.assistant.web.search import SearchResult


class SearxngSearch:
    """A `SearchProvider` backed by one SearXNG instance."""

    def __init__(self, base_url: str, config: WebConfig | None = None) -> None:
        self.config = config or WebConfig()
        self.endpoint = parse_http_url(base_url.rstrip("/") + "/").join("search")

    def search(self, query: str, max_results: int) -> list[SearchResult]:
        if not query.strip():
            raise InvalidSearchQueryError("the search query is empty")
        if max_results < 1:
            raise InvalidSearchQueryError("max_results must be at least 1")
        payload = self.request_json(query.strip())
        return parse_results(payload, max_results, datetime.now(UTC))

    def request_json(self, query: str) -> object:
        where = f"search provider {self.endpoint}"
        deadline = time.monotonic() + self.config.total_timeout_seconds
        headers = {"User-Agent": self.config.user_agent, "Accept": "application/json"}
        params = {"q": query, "format": "json"}
        try:
            with (
                httpx.Client(timeout=self.config.timeout_seconds, trust_env=False) as client,
                client.stream("GET", self.endpoint, params=params, headers=headers) as response,
            ):
                if not response.is_success:
                    hint = (
                        " (is json in its search.formats?)" if response.status_code == 403 else ""
                    )
                    raise HttpStatusError(
                        f"{where} answered HTTP {response.status_code}{hint}", response.status_code
                    )
                body = read_capped(response, self.endpoint, self.config.max_bytes, deadline)
        except httpx.TimeoutException as error:
            raise FetchTimeoutError(f"{where} did not answer in time") from error
        except httpx.TransportError as error:
            raise UnreachableHostError(f"{where} is unreachable: {error}") from error
        try:
            return json.loads(body)
        except ValueError as error:
            raise SearchResponseError(f"{where} did not answer with JSON") from error


def parse_results(payload: object, max_results: int, retrieved_at: datetime) -> list[SearchResult]:
    """The first `max_results` usable results of a SearXNG JSON answer, without repeats;
    entries without an http(s) URL or a title are skipped."""
    if not isinstance(payload, dict) or not isinstance(payload.get("results"), list):
        raise SearchResponseError("search provider's answer has no results list")
    results: dict[str, SearchResult] = {}
    for item in payload["results"]:
        result = parse_result(item, retrieved_at)
        if result is not None and result.url not in results:
            results[result.url] = result
        if len(results) == max_results:
            break
    return list(results.values())


def parse_result(item: object, retrieved_at: datetime) -> SearchResult | None:
    if not isinstance(item, dict):
        return None
    url, title = item.get("url"), item.get("title")
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        return None
    if not isinstance(title, str) or not title.strip():
        return None
    snippet = item.get("content")
    published = item.get("publishedDate")
    engine = item.get("engine")
    return SearchResult(
        title=" ".join(title.split()),
        url=url,
        snippet=" ".join(snippet.split()) if isinstance(snippet, str) else "",
        retrieved_at=retrieved_at,
        published=published if isinstance(published, str) and published else None,
        engine=engine if isinstance(engine, str) else None,
    )
