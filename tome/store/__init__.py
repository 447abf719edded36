"""The database: API keys and the usage ledger (SQLAlchemy; a SQLite file by default)."""

from tome.store.database import Database, default_database_url
from tome.store.keys import KeyInfo, KeyStore
from tome.store.usage import UsageEntry, UsageStore, UsageTotals

__all__ = [
    "Database",
    "KeyInfo",
    "KeyStore",
    "UsageEntry",
    "UsageStore",
    "UsageTotals",
    "default_database_url",
]
