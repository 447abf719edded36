"""Tiers and prices, from a TOML file (or the built-in defaults below).

    database_url = "sqlite:////var/lib/tome/tome.db"   # optional

    [prices]            # US dollars per million tokens
    prompt = 0.50
    cached_prompt = 0.05
    completion = 1.50

    [tiers.free]
    priority = 10                  # the engine's priority: lower is served first
    requests_per_minute = 20
    tokens_per_minute = 20000
    concurrent_requests = 2
    max_context_tokens = 8192
    daily_token_quota = 200000
    max_queue_wait_seconds = 20    # overload: refuse new requests (503) past this wait
    max_upload_bytes = 10485760    # /v1/files: 413 past it (left out: the extraction limit)
    max_pinned_tokens = 100000     # tokens a key may keep in context caches at once (429)

    [web]                          # the reading assistant's page fetches and web search
    search_url = "http://127.0.0.1:8888"   # a SearXNG instance (JSON format enabled)
    allowed_private_hosts = ["wiki.internal"]   # fetchable though private
    timeout_seconds = 10
    max_bytes = 20971520

A limit left out is no limit."""

import math
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path

from tome.assistant.web import WebConfig
from tome.errors import TomeError
from tome.server.errors import ServerConfigError


@dataclass(frozen=True)
class Tier:
    name: str
    priority: int = 0
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    concurrent_requests: int | None = None
    max_context_tokens: int | None = None
    daily_token_quota: int | None = None
    max_queue_wait_seconds: float | None = None
    max_upload_bytes: int | None = None
    # Context caches hold KV blocks nobody else can use until deleted or expired.
    max_pinned_tokens: int | None = None


@dataclass(frozen=True)
class Prices:
    """US dollars per million tokens; cached prompt tokens have their own price."""

    prompt: float = 0.0
    cached_prompt: float = 0.0
    completion: float = 0.0

    def cost(self, prompt_tokens: int, cached_tokens: int, completion_tokens: int) -> float:
        fresh = prompt_tokens - cached_tokens
        total = (
            fresh * self.prompt
            + cached_tokens * self.cached_prompt
            + completion_tokens * self.completion
        )
        return total / 1e6


# Without a config file: a free tier that yields to pro, both with sane limits.
DEFAULT_TIERS = {
    "free": Tier(
        "free",
        priority=10,
        requests_per_minute=20,
        tokens_per_minute=40_000,
        concurrent_requests=2,
        daily_token_quota=500_000,
        max_queue_wait_seconds=30.0,
        max_pinned_tokens=100_000,  # a novel
    ),
    # As the long-text platform's per-user cache limit: a million tokens.
    "pro": Tier(
        "pro",
        priority=0,
        requests_per_minute=600,
        concurrent_requests=32,
        max_pinned_tokens=1_000_000,
    ),
}
# The open mode (no keys, bound to localhost): one local user, no limits, served first.
LOCAL_TIER = Tier("local", priority=0)


@dataclass(frozen=True)
class ServerSettings:
    tiers: dict[str, Tier] = field(default_factory=lambda: dict(DEFAULT_TIERS))
    prices: Prices = field(default_factory=Prices)
    database_url: str | None = None
    web: WebConfig = field(default_factory=WebConfig)
    search_url: str | None = None  # a SearXNG instance; None: no web search

    def tier(self, name: str) -> Tier:
        if name not in self.tiers:
            known = ", ".join(sorted(self.tiers))
            raise ServerConfigError(f"unknown tier {name!r}; the configured tiers are {known}")
        return self.tiers[name]


def load_settings(path: Path | None) -> ServerSettings:
    """Settings from a TOML file; None gives the defaults."""
    if path is None:
        return ServerSettings()
    try:
        data = tomllib.loads(Path(path).read_text())
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ServerConfigError(f"cannot read the server config {path}: {exc}") from exc
    _check_keys(data, {"tiers", "prices", "database_url", "web"}, str(path))
    web = data.get("web", {})
    if not isinstance(web, dict):
        raise ServerConfigError("[web] must be a table")
    web = dict(web)
    return ServerSettings(
        tiers=_tiers(data.get("tiers")),
        prices=_prices(data.get("prices", {})),
        database_url=_optional_str(data.get("database_url"), "database_url"),
        search_url=_optional_str(web.pop("search_url", None), "[web] search_url"),
        web=_web_config(web),
    )


def _web_config(table: dict) -> WebConfig:
    allowed = {f.name for f in fields(WebConfig)} - {"user_agent"}
    _check_keys(table, allowed, "[web]")
    hosts = table.get("allowed_private_hosts", [])
    if not isinstance(hosts, list) or not all(isinstance(host, str) for host in hosts):
        raise ServerConfigError("[web] allowed_private_hosts must be a list of host names")
    table["allowed_private_hosts"] = tuple(hosts)
    try:
        return WebConfig(**table)
    except (TomeError, TypeError) as exc:
        raise ServerConfigError(f"[web]: {exc}") from exc


def _tiers(tables: object) -> dict[str, Tier]:
    if tables is None:
        return dict(DEFAULT_TIERS)
    if not isinstance(tables, dict) or not tables:
        raise ServerConfigError("[tiers] must hold at least one [tiers.NAME] table")
    return {name: _tier(name, table) for name, table in tables.items()}


def _tier(name: str, table: object) -> Tier:
    if not isinstance(table, dict):
        raise ServerConfigError(f"[tiers.{name}] must be a table")
    allowed = {f.name for f in fields(Tier)} - {"name"}
    _check_keys(table, allowed, f"[tiers.{name}]")
    for key, value in table.items():
        if key == "priority":
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif key == "max_queue_wait_seconds":
            ok = _is_number(value) and value > 0
        else:
            ok = isinstance(value, int) and not isinstance(value, bool) and value > 0
        if not ok:
            kind = "an integer" if key == "priority" else "a positive number"
            raise ServerConfigError(f"[tiers.{name}] {key} must be {kind}, not {value!r}")
    return Tier(name, **table)


def _prices(table: object) -> Prices:
    if not isinstance(table, dict):
        raise ServerConfigError("[prices] must be a table")
    _check_keys(table, {f.name for f in fields(Prices)}, "[prices]")
    for key, value in table.items():
        if not (_is_number(value) and value >= 0):
            raise ServerConfigError(f"[prices] {key} must be a number >= 0, not {value!r}")
    return Prices(**{key: float(value) for key, value in table.items()})


def _check_keys(table: dict, allowed: set[str], where: str) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise ServerConfigError(
            f"{where}: unknown setting {unknown[0]!r}; known: {', '.join(sorted(allowed))}"
        )


def _optional_str(value: object, key: str) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise ServerConfigError(f"{key} must be a string")


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
