"""Bodies of `tome keys create|list|revoke` and `tome usage`: the database and the
tiers config, printed for a person."""

import re
from datetime import datetime, timedelta
from pathlib import Path

from rich.console import Console
from rich.table import Table

from tome.errors import InvalidRequestError
from tome.server.serve import open_database
from tome.server.tiers import load_settings
from tome.store import KeyStore, UsageStore
from tome.store.models import utc_now

RELATIVE = re.compile(r"(\d+)([dhm])")
UNITS = {"d": "days", "h": "hours", "m": "minutes"}


def create_key(
    tier: str, name: str, config_path: Path | None, database_url: str | None, console: Console
) -> None:
    settings = load_settings(config_path)
    settings.tier(tier)  # unknown tiers are refused here, not at the first request
    key, info = KeyStore(open_database(settings, database_url)).create(tier, name)
    console.print(f"created key {info.id} ({info.tier} tier); it is shown only this once:")
    console.print(key, soft_wrap=True, highlight=False)


def list_keys(config_path: Path | None, database_url: str | None, console: Console) -> None:
    settings = load_settings(config_path)
    table = Table(title="API keys")
    for column in ("id", "name", "tier", "key", "created (UTC)", "revoked (UTC)"):
        table.add_column(column)
    for key in KeyStore(open_database(settings, database_url)).all():
        revoked = f"{key.revoked_at:%Y-%m-%d %H:%M}" if key.revoked_at else ""
        created = f"{key.created_at:%Y-%m-%d %H:%M}"
        table.add_row(str(key.id), key.name, key.tier, key.prefix + "…", created, revoked)
    console.print(table)


def revoke_key(
    reference: str, config_path: Path | None, database_url: str | None, console: Console
) -> None:
    settings = load_settings(config_path)
    info = KeyStore(open_database(settings, database_url)).revoke(reference)
    console.print(f"revoked key {info.id} ({info.name or info.prefix + '…'})")


def parse_since(text: str) -> datetime:
    """'7d', '24h', '30m' ago, or an ISO date or date-time (UTC)."""
    relative = RELATIVE.fullmatch(text.strip())
    if relative:
        amount, unit = int(relative.group(1)), UNITS[relative.group(2)]
        return utc_now() - timedelta(**{unit: amount})
    try:
        return datetime.fromisoformat(text.strip()).replace(tzinfo=None)
    except ValueError as exc:
        raise InvalidRequestError(
            f"--since {text!r}: write a date (2025-01-31), a date-time, or 7d / 24h / 30m"
        ) from exc


def usage_report(
    key: str | None,
    since: str | None,
    config_path: Path | None,
    database_url: str | None,
    console: Console,
) -> None:
    settings = load_settings(config_path)
    database = open_database(settings, database_url)
    key_id = KeyStore(database).find(key).id if key else None
    start = parse_since(since) if since else None
    rows = UsageStore(database).totals(since=start, key_id=key_id)
    title = "usage" + (f" since {start:%Y-%m-%d %H:%M} UTC" if start else "")
    table = Table(title=title)
    for column in ("key", "name", "tier", "requests", "prompt", "cached", "completion", "cost"):
        table.add_column(column, justify="left" if column in ("name", "tier") else "right")
    total_cost = 0.0
    for row in rows:
        cost = settings.prices.cost(row.prompt_tokens, row.cached_tokens, row.completion_tokens)
        total_cost += cost
        table.add_row(
            "local" if row.key_id is None else str(row.key_id),
            row.key_name,
            row.tier,
            str(row.requests),
            str(row.prompt_tokens),
            str(row.cached_tokens),
            str(row.completion_tokens),
            f"${cost:.4f}",
        )
    console.print(table)
    console.print(f"total cost: ${total_cost:.4f}")
