"""One GET to a URL's host over its already-checked addresses.

The URL's host is replaced by a checked address so that httpx never resolves the name
again (a second lookup could answer differently); the Host header and the TLS server name
stay the original host, so virtual hosting and certificate checks work as usual."""

from collections.abc import Iterator
from contextlib import contextmanager

import httpx

from tome.assistant.web.address_guard import IPAddress
from tome.assistant.web.errors import UnreachableHostError


@contextmanager
def pinned_get(
    client: httpx.Client, url: httpx.URL, addresses: list[IPAddress], timeout: float
) -> Iterator[httpx.Response]:
    """A streamed response from the first address that accepts a connection; `timeout`
    bounds the connection and each read."""
    extensions = {"sni_hostname": url.host} if url.scheme == "https" else {}
    headers = {"Host": url.netloc.decode("ascii")}
    failure = "no address"
    for address in addresses:
        request = client.build_request(
            "GET",
            url.copy_with(host=str(address)),
            headers=headers,
            extensions=extensions,
            timeout=timeout,
        )
        try:
            response = client.send(request, stream=True)
        except httpx.ConnectError as error:
            failure = str(error) or type(error).__name__
            continue
        try:
            yield response
        finally:
            response.close()
        return
    raise UnreachableHostError(f"could not connect to {url.host}: {failure}")
