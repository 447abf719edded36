"""The database: API keys, the usage ledger, uploaded files and saved conversations
(SQLAlchemy; a SQLite file by default). Importing the package registers every table, so
`Database` creates them all."""

from tome.store.conversations import ConversationNotFoundError, ConversationStore
from tome.store.database import Database, default_database_url
from tome.store.files import (
    ExtractedFile,
    FileRecord,
    FileStore,
    StoredSection,
    UnknownFileError,
)
from tome.store.keys import KeyInfo, KeyStore
from tome.store.usage import UsageEntry, UsageStore, UsageTotals

__all__ = [
    "ConversationNotFoundError",
    "ConversationStore",
    "Database",
    "ExtractedFile",
    "FileRecord",
    "FileStore",
    "KeyInfo",
    "KeyStore",
    "StoredSection",
    "UnknownFileError",
    "UsageEntry",
    "UsageStore",
    "UsageTotals",
    "default_database_url",
]
