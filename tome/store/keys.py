"""API keys: made here, shown once, stored only as SHA-256 hashes (the keys are random and
long, so a fast hash suffices: there is nothing to guess)."""

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select

from tome.store.database import Database
from tome.store.errors import StoreError
from tome.store.models import ApiKeyRow, utc_now

KEY_PREFIX = "tome-"
SHOWN_PREFIX_CHARS = 12  # "tome-" and 7 random characters, enough to tell keys apart


@dataclass(frozen=True)
class KeyInfo:
    id: int
    name: str
    tier: str
    prefix: str
    created_at: datetime
    revoked_at: datetime | None

    @property
    def active(self) -> bool:
        return self.revoked_at is None


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class KeyStore:
    def __init__(self, database: Database) -> None:
        self.database = database

    def create(self, tier: str, name: str = "") -> tuple[str, KeyInfo]:
        """A new key for `tier`: returns the key itself (shown once, never stored) and its row."""
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        row = ApiKeyRow(
            name=name, tier=tier, key_hash=hash_key(key), prefix=key[:SHOWN_PREFIX_CHARS]
        )
        with self.database.session() as session, session.begin():
            session.add(row)
        return key, _info(row)

    def all(self) -> list[KeyInfo]:
        with self.database.session() as session:
            return [_info(row) for row in session.scalars(select(ApiKeyRow).order_by(ApiKeyRow.id))]

    def find(self, reference: str) -> KeyInfo:
        """A key by its id or by the key itself."""
        with self.database.session() as session:
            row = self._row(session, reference)
            return _info(row)

    def lookup(self, key: str) -> KeyInfo | None:
        """The key presented by a caller, revoked ones included; None when unknown."""
        with self.database.session() as session:
            row = session.scalar(select(ApiKeyRow).where(ApiKeyRow.key_hash == hash_key(key)))
            return _info(row) if row is not None else None

    def revoke(self, reference: str) -> KeyInfo:
        """Revoke a key by its id or by the key itself; revoking twice keeps the first time."""
        with self.database.session() as session, session.begin():
            row = self._row(session, reference)
            if row.revoked_at is None:
                row.revoked_at = utc_now()
            return _info(row)

    @staticmethod
    def _row(session, reference: str) -> ApiKeyRow:
        if reference.isdigit():
            row = session.get(ApiKeyRow, int(reference))
        else:
            row = session.scalar(select(ApiKeyRow).where(ApiKeyRow.key_hash == hash_key(reference)))
        if row is None:
            raise StoreError(f"no API key with id or value {reference[:SHOWN_PREFIX_CHARS]!r}")
        return row


def _info(row: ApiKeyRow) -> KeyInfo:
    return KeyInfo(row.id, row.name, row.tier, row.prefix, row.created_at, row.revoked_at)
