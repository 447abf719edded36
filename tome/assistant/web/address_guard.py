"""Which addresses a fetch may connect to, and the checked addresses of a URL's host.

Every address the host resolves to is checked (one bad record is enough for a DNS
rebinding attack), and the caller then connects to those checked addresses only, never
resolving the name a second time."""

import ipaddress
import socket

import httpx

from tome.assistant.web.config import WebConfig
from tome.assistant.web.errors import InvalidUrlError, PrivateAddressError, UnreachableHostError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
NAT64_PREFIX = ipaddress.ip_network("64:ff9b::/96")


def parse_http_url(url: str) -> httpx.URL:
    """An absolute http(s) URL with a host, or InvalidUrlError."""
    try:
        parsed = httpx.URL(url.strip())
    except (httpx.InvalidURL, TypeError) as error:
        raise InvalidUrlError(f"not a valid URL: {url!r}") from error
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise InvalidUrlError(f"only http and https URLs with a host can be fetched: {url!r}")
    return parsed


def embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries (mapped, 6to4, NAT64), which is where
    packets to it really go."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address in NAT64_PREFIX:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def is_public_address(address: IPAddress) -> bool:
    """True only for globally routable unicast addresses."""
    if isinstance(address, ipaddress.IPv6Address):
        inner = embedded_ipv4(address)
        if inner is not None and not is_public_address(inner):
            return False
    # `is_global` alone lets multicast through, so every category is checked by name.
    return address.is_global and not (
        address.is_private
        or address.is_loopback
        or address.is_link_local
        or address.is_multicast
        or address.is_reserved
        or address.is_unspecified
    )


def resolve_host(host: str, port: int) -> list[IPAddress]:
    """Every address `host` resolves to, in the resolver's order, without repeats."""
    try:
        records = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as error:
        raise UnreachableHostError(f"could not resolve host {host!r}") from error
    addresses: list[IPAddress] = []
    for record in records:
        address = ipaddress.ip_address(str(record[4][0]).split("%")[0])
        if address not in addresses:
            addresses.append(address)
    return addresses


def checked_addresses(url: httpx.URL, config: WebConfig) -> list[IPAddress]:
    """The addresses to connect to for `url`; refuses the host if any of them is not public
    (unless the config allows private addresses for this host)."""
    addresses = resolve_host(url.host, url.port or (443 if url.scheme == "https" else 80))
    if config.private_allowed_for(url.host):
        return addresses
    refused = [address for address in addresses if not is_public_address(address)]
    if refused:
        raise PrivateAddressError(
            f"refused to fetch {url.host}: it resolves to the non-public address {refused[0]}"
        )
    return addresses
