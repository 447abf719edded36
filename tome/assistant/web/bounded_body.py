"""Reading a response body within a byte limit and a deadline."""

import time

import httpx

from tome.assistant.web.errors import FetchTimeoutError, PageTooLargeError


def remaining_seconds(deadline: float, url: httpx.URL) -> float:
    """Seconds left before `deadline` (a time.monotonic value), or FetchTimeoutError."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise FetchTimeoutError(f"{url} took too long to fetch")
    return left


def read_capped(response: httpx.Response, url: httpx.URL, max_bytes: int, deadline: float) -> bytes:
    """The body, stopping as soon as it passes `max_bytes` or the deadline (a server that
    drips bytes slowly would otherwise never hit the per-read timeout)."""
    chunks: list[bytes] = []
    size = 0
    for chunk in response.iter_bytes():
        size += len(chunk)
        if size > max_bytes:
            raise PageTooLargeError(f"{url} is larger than the {max_bytes}-byte limit")
        remaining_seconds(deadline, url)
        chunks.append(chunk)
    return b"".join(chunks)
