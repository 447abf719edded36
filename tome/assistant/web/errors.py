"""Typed errors of web fetch and search, each with a one-line message for a person.

Two families: the caller's URL or query cannot be served as asked (400, `WebRequestError`),
or the remote side failed (502/504, `WebUpstreamError`). `WebError` catches both."""

from tome.errors import InvalidRequestError, TomeError


class WebError(TomeError):
    """Any failure to fetch a page or run a search."""


class WebRequestError(WebError, InvalidRequestError):
    """The URL, its content or the query is something we refuse to serve."""


class InvalidUrlError(WebRequestError):
    """Not an absolute http(s) URL with a host."""


class PrivateAddressError(WebRequestError):
    """The host resolves to a private, loopback, link-local, multicast or reserved address."""


class UnsupportedContentTypeError(WebRequestError):
    """The page is neither HTML, plain text nor PDF."""


class PageTooLargeError(WebRequestError):
    """The body is larger than `WebConfig.max_bytes`."""


class TooManyRedirectsError(WebRequestError):
    """More redirects than `WebConfig.max_redirects`."""


class NoReadableTextError(WebRequestError):
    """An HTML page from which no readable text could be extracted."""


class InvalidSearchQueryError(WebRequestError):
    """An empty query or a non-positive number of results."""


class WebUpstreamError(WebError):
    """The remote server or search provider failed."""

    status_code = 502
    error_type = "upstream_error"


class UnreachableHostError(WebUpstreamError):
    """The host name does not resolve, or no connection could be made or kept."""


class FetchTimeoutError(WebUpstreamError):
    """The server did not answer, or did not finish, in time."""

    status_code = 504
    error_type = "upstream_timeout"


class HttpStatusError(WebUpstreamError):
    """The server answered with an error status (4xx, 5xx) or a redirect without a target."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class SearchResponseError(WebUpstreamError):
    """The search provider answered with something that is not its documented JSON."""
