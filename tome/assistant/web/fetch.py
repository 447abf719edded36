"""`fetch_url`: one web page (HTML, plain text or PDF) fetched within `WebConfig`'s limits."""

import time
from dataclasses import dataclass

import httpx

from tome.assistant.web.address_guard import checked_addresses, parse_http_url
from tome.assistant.web.bounded_body import read_capped, remaining_seconds
from tome.assistant.web.config import WebConfig
from tome.assistant.web.decoding import decode_page
from tome.assistant.web.errors import (
    FetchTimeoutError,
    HttpStatusError,
    PageTooLargeError,
    TooManyRedirectsError,
    UnreachableHostError,
    UnsupportedContentTypeError,
)
from tome.assistant.web.pinned_request import pinned_get
from tome.assistant.web.readable import readable_text

HTML_TYPES = ("text/html", "application/xhtml+xml")
TEXT_TYPES = ("text/plain",)
PDF_TYPES = ("application/pdf",)
REDIRECT_STATUSES = (301, 302, 303, 307, 308)


@dataclass(frozen=True)
class FetchedPage:
    """A fetched page. `text` is the readable text of HTML and plain text; for a PDF it is
    None and `content` holds the bytes for the document extractor."""

    url: str
    final_url: str
    media_type: str
    content: bytes
    title: str | None
    text: str | None
    encoding: str | None


@dataclass(frozen=True)
class RawResponse:
    final_url: httpx.URL
    media_type: str
    charset: str | None
    content: bytes


def fetch_url(url: str, config: WebConfig | None = None) -> FetchedPage:
    """Fetch `url`, following redirects (each hop checked), and extract its readable text."""
    config = config or WebConfig()
    raw = fetch_raw(url, config)
    if raw.media_type in PDF_TYPES:
        return FetchedPage(url, str(raw.final_url), raw.media_type, raw.content, None, None, None)
    is_html = raw.media_type in HTML_TYPES
    decoded, encoding = decode_page(raw.content, raw.charset, is_html)
    title, text = readable_text(decoded, str(raw.final_url)) if is_html else (None, decoded)
    return FetchedPage(url, str(raw.final_url), raw.media_type, raw.content, title, text, encoding)


def fetch_raw(url: str, config: WebConfig) -> RawResponse:
    """The body of the page `url` leads to, with its media type and declared charset."""
    current = parse_http_url(url)
    deadline = time.monotonic() + config.total_timeout_seconds
    with httpx.Client(
        timeout=config.timeout_seconds,
        follow_redirects=False,
        trust_env=False,
        headers={"User-Agent": config.user_agent},
    ) as client:
        for _ in range(config.max_redirects + 1):
            addresses = checked_addresses(current, config)
            timeout = min(config.timeout_seconds, remaining_seconds(deadline, current))
            try:
                with pinned_get(client, current, addresses, timeout) as response:
                    if response.status_code not in REDIRECT_STATUSES:
                        return read_page(response, current, config, deadline)
                    current = redirect_target(response, current)
            except httpx.TimeoutException as error:
                raise FetchTimeoutError(f"{current} did not answer in time") from error
            except httpx.TransportError as error:
                raise UnreachableHostError(f"could not fetch {current}: {error}") from error
    raise TooManyRedirectsError(f"{url} redirected more than {config.max_redirects} times")


def redirect_target(response: httpx.Response, current: httpx.URL) -> httpx.URL:
    location = response.headers.get("location")
    if not location:
        raise HttpStatusError(
            f"{current} answered HTTP {response.status_code} without a Location",
            response.status_code,
        )
    return parse_http_url(str(current.join(location)))


def read_page(
    response: httpx.Response, url: httpx.URL, config: WebConfig, deadline: float
) -> RawResponse:
    """Check the status, type and size of a non-redirect response, then read its body."""
    if not response.is_success:
        raise HttpStatusError(
            f"{url} answered HTTP {response.status_code} {response.reason_phrase}".rstrip(),
            response.status_code,
        )
    content_type = response.headers.get("content-type", "")
    media_type = content_type.split(";")[0].strip().lower()
    if media_type not in HTML_TYPES + TEXT_TYPES + PDF_TYPES:
        raise UnsupportedContentTypeError(
            f"{url} is {media_type or 'of no stated type'}, not HTML, plain text or PDF"
        )
    declared_length = response.headers.get("content-length", "")
    if declared_length.isdigit() and int(declared_length) > config.max_bytes:
        raise PageTooLargeError(f"{url} is larger than the {config.max_bytes}-byte limit")
    content = read_capped(response, url, config.max_bytes, deadline)
    return RawResponse(url, media_type, response.charset_encoding, content)
