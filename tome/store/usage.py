"""The usage ledger: one row per request, written when it is admitted, brought up to date
while it streams (status `running`) and final when it ends (finished, aborted or error);
summed per key for reports and for daily quotas."""

from dataclasses import dataclass, field, fields
from datetime import datetime

from sqlalchemy import func, select

from tome.store.database import Database
from tome.store.models import ApiKeyRow, UsageRow, utc_now


@dataclass
class UsageEntry:
    key_id: int | None  # None: the open local mode, no key
    request_id: str
    model: str
    endpoint: str
    status: str  # running, then finished, aborted or error
    prompt_tokens: int
    cached_tokens: int
    completion_tokens: int
    created_at: datetime = field(default_factory=utc_now)


@dataclass
class UsageTotals:
    key_id: int | None
    key_name: str
    tier: str
    requests: int
    prompt_tokens: int
    cached_tokens: int
    completion_tokens: int


class UsageStore:
    def __init__(self, database: Database) -> None:
        self.database = database

    def record(self, entries: list[UsageEntry]) -> None:
        """Each entry as its request's row: a new row, or the one written before for the
        same request brought up to date (it keeps its first time)."""
        with self.database.session() as session, session.begin():
            for entry in entries:
                query = select(UsageRow).where(UsageRow.request_id == entry.request_id)
                row = session.scalars(query).first()
                if row is None:
                    session.add(UsageRow(**vars(entry)))
                    session.flush()  # a later entry of this batch finds it
                    continue
                for name, value in vars(entry).items():
                    if name != "created_at":
                        setattr(row, name, value)

    def entry(self, request_id: str) -> UsageEntry | None:
        """One request's row (a chat completion's `id`, a context cache's id), as billed."""
        query = select(UsageRow).where(UsageRow.request_id == request_id)
        with self.database.session() as session:
            row = session.scalars(query).first()
            if row is None:
                return None
            return UsageEntry(**{f.name: getattr(row, f.name) for f in fields(UsageEntry)})

    def tokens_since(self, key_id: int | None, since: datetime) -> int:
        """Prompt and completion tokens a key used since `since` (for daily quotas)."""
        total = func.coalesce(func.sum(UsageRow.prompt_tokens + UsageRow.completion_tokens), 0)
        owner = UsageRow.key_id.is_(None) if key_id is None else UsageRow.key_id == key_id
        query = select(total).where(owner, UsageRow.created_at >= since)
        with self.database.session() as session:
            return int(session.scalar(query) or 0)

    def totals(self, since: datetime | None = None, key_id: int | None = None) -> list[UsageTotals]:
        """Per key (the open mode's requests under None): requests and tokens."""
        query = (
            select(
                UsageRow.key_id,
                func.coalesce(ApiKeyRow.name, ""),
                func.coalesce(ApiKeyRow.tier, ""),
                func.count(UsageRow.id),
                func.sum(UsageRow.prompt_tokens),
                func.sum(UsageRow.cached_tokens),
                func.sum(UsageRow.completion_tokens),
            )
            .outerjoin(ApiKeyRow, UsageRow.key_id == ApiKeyRow.id)
            .group_by(UsageRow.key_id, ApiKeyRow.name, ApiKeyRow.tier)
            .order_by(UsageRow.key_id)
        )
        if since is not None:
            query = query.where(UsageRow.created_at >= since)
        if key_id is not None:
            query = query.where(UsageRow.key_id == key_id)
        with self.database.session() as session:
            return [UsageTotals(*row) for row in session.execute(query)]
