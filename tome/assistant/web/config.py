"""`WebConfig`: the limits every page fetch and search request runs under."""

from dataclasses import dataclass

from tome.assistant.web.errors import WebRequestError


@dataclass(frozen=True)
class WebConfig:
    """Limits for fetching pages and querying a search provider.

    `allow_private_addresses` lifts the address check for every host (a trusted intranet);
    `allowed_private_hosts` lifts it only for the named hosts (exactly as written in the
    URL: `"127.0.0.1"`, `"::1"`, `"wiki.internal"`), so a redirect from one of them to any
    other private address is still refused."""

    timeout_seconds: float = 10.0
    total_timeout_seconds: float = 30.0
    max_bytes: int = 20 * 1024 * 1024
    max_redirects: int = 5
    allow_private_addresses: bool = False
    allowed_private_hosts: tuple[str, ...] = ()
    user_agent: str = "Tome/0.1 (reading assistant)"

    def __post_init__(self) -> None:
        if self.timeout_seconds <= 0 or self.total_timeout_seconds <= 0:
            raise WebRequestError("web timeouts must be positive")
        if self.max_bytes <= 0:
            raise WebRequestError("web max_bytes must be positive")
        if self.max_redirects < 0:
            raise WebRequestError("web max_redirects cannot be negative")
        hosts = tuple(host.strip("[]").lower() for host in self.allowed_private_hosts)
        object.__setattr__(self, "allowed_private_hosts", hosts)

    def private_allowed_for(self, host: str) -> bool:
        """Whether `host` (as httpx spells it: lower case, IPv6 without brackets) may be private."""
        return self.allow_private_addresses or host in self.allowed_private_hosts
