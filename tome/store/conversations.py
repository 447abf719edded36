"""Saved conversations: their messages and their attachments (files by id, or URLs), each
conversation owned by one API key (None: the open mode's local user). Every query is scoped
to its owner, so one key can never read or change another's conversation: to that key it
does not exist."""

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, ForeignKey, String, Text, select
from sqlalchemy.orm import Mapped, Session, mapped_column, relationship

from tome.errors import InvalidRequestError
from tome.store.database import Database
from tome.store.errors import StoreError
from tome.store.models import Base, utc_now

DEFAULT_TITLE = "New conversation"
TITLE_CHARS = 60  # of a first question, as a conversation's title


class ConversationNotFoundError(StoreError):
    """No conversation (or attachment) with that id belongs to the caller."""

    status_code = 404
    error_type = "invalid_request_error"  # as OpenAI answers an unknown id

    def __init__(self, message: str, code: str = "conversation_not_found") -> None:
        super().__init__(message)
        self.code = code


class ConversationRow(Base):
    __tablename__ = "conversations"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    key_id: Mapped[int | None] = mapped_column(ForeignKey("api_keys.id"), index=True)
    title: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(default=utc_now)
    updated_at: Mapped[datetime] = mapped_column(default=utc_now, index=True)
    messages: Mapped[list["MessageRow"]] = relationship(
        cascade="all, delete-orphan", passive_deletes=True, order_by="MessageRow.seq"
    )
    attachments: Mapped[list["AttachmentRow"]] = relationship(
        cascade="all, delete-orphan", passive_deletes=True, order_by="AttachmentRow.seq"
    )


class MessageRow(Base):
    __tablename__ = "conversation_messages"

    seq: Mapped[int] = mapped_column(primary_key=True)  # insertion order within the table
    id: Mapped[str] = mapped_column(String(40), unique=True)
    conversation_id: Mapped[str] = mapped_column(
        ForeignKey("conversations.id", ondelete="CASCADE"), index=True
    )
    role: Mapped[str] = mapped_column(String(16))  # system, user or assistant
    content: Mapped[str] = mapped_column(Text)
    # Assistant answers only: mode, window tokens used, citations.
    answer_metadata: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    created_at: Mapped[datetime] = mapped_column(default=utc_now)


class AttachmentRow(Base):
    __tablename__ = "conversation_attachments"

    seq: Mapped[int] = mapped_column(primary_key=True)
    id: Mapped[str] = mapped_column(String(40), unique=True)
    conversation_id: Mapped[str] = mapped_column(
        ForeignKey("conversations.id", ondelete="CASCADE"), index=True
    )
    kind: Mapped[str] = mapped_column(String(8))  # file or url
    target: Mapped[str] = mapped_column(Text)  # a file id ("file-...") or a URL
    # The stored text: the file itself, or the page fetched when the URL was attached.
    file_id: Mapped[str | None] = mapped_column(String(64), default=None)
    tokens: Mapped[int] = mapped_column(default=0)
    title: Mapped[str] = mapped_column(String(500), default="")
    created_at: Mapped[datetime] = mapped_column(default=utc_now)


@dataclass(frozen=True)
class MessageRecord:
    id: str
    role: str
    content: str
    metadata: dict[str, Any] | None
    created_at: datetime


@dataclass(frozen=True)
class AttachmentRecord:
    id: str
    kind: str
    target: str
    file_id: str | None
    tokens: int
    title: str
    created_at: datetime


@dataclass(frozen=True)
class ConversationRecord:
    """A conversation; messages and attachments are filled in only when asked for one."""

    id: str
    title: str
    created_at: datetime
    updated_at: datetime
    messages: tuple[MessageRecord, ...] = ()
    attachments: tuple[AttachmentRecord, ...] = ()


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


class ConversationStore:
    def __init__(self, database: Database) -> None:
        self.database = database

    def create(self, owner: int | None, title: str | None = None) -> ConversationRecord:
        now = utc_now()
        row = ConversationRow(
            id=new_id("conv"),
            key_id=owner,
            title=title or DEFAULT_TITLE,
            created_at=now,
            updated_at=now,
        )
        with self.database.session() as session, session.begin():
            session.add(row)
        return _summary(row)

    def list(self, owner: int | None) -> list[ConversationRecord]:
        """The owner's conversations, the most recently changed first."""
        query = (
            select(ConversationRow)
            .where(_owned_by(owner))
            .order_by(ConversationRow.updated_at.desc(), ConversationRow.created_at.desc())
        )
        with self.database.session() as session:
            return [_summary(row) for row in session.scalars(query)]

    def get(self, owner: int | None, conversation_id: str) -> ConversationRecord:
        with self.database.session() as session:
            return _full(_owned_row(session, owner, conversation_id))

    def rename(self, owner: int | None, conversation_id: str, title: str) -> ConversationRecord:
        with self.database.session() as session, session.begin():
            row = _owned_row(session, owner, conversation_id)
            row.title = title
            row.updated_at = utc_now()
            return _summary(row)

    def delete(self, owner: int | None, conversation_id: str) -> None:
        with self.database.session() as session, session.begin():
            session.delete(_owned_row(session, owner, conversation_id))

    def add_message(
        self,
        owner: int | None,
        conversation_id: str,
        role: str,
        content: str,
        metadata: dict[str, Any] | None = None,
    ) -> MessageRecord:
        """Append a message; a conversation still untitled is named after its first question."""
        with self.database.session() as session, session.begin():
            conversation = _owned_row(session, owner, conversation_id)
            if role == "user" and conversation.title == DEFAULT_TITLE and not conversation.messages:
                conversation.title = _title_of(content)
            row = MessageRow(id=new_id("msg"), role=role, content=content, answer_metadata=metadata)
            conversation.messages.append(row)
            conversation.updated_at = row.created_at = utc_now()
            return _message(row)

    def attach(
        self,
        owner: int | None,
        conversation_id: str,
        kind: str,
        target: str,
        title: str = "",
        stored_as: tuple[str, int] | None = None,
    ) -> AttachmentRecord:
        """Attach a file id or a URL, with the id and token count of the stored text when
        known (`stored_as`); attaching the same one again returns the first."""
        with self.database.session() as session, session.begin():
            conversation = _owned_row(session, owner, conversation_id)
            for existing in conversation.attachments:
                if existing.kind == kind and existing.target == target:
                    return _attachment(existing)
            file_id, tokens = stored_as or (None, 0)
            row = AttachmentRow(
                id=new_id("att"),
                kind=kind,
                target=target,
                file_id=file_id,
                tokens=tokens,
                title=title,
            )
            conversation.attachments.append(row)
            conversation.updated_at = row.created_at = utc_now()
            return _attachment(row)

    def remove_last_answer(self, owner: int | None, conversation_id: str) -> MessageRecord:
        """Delete the answer after the last question (to answer it again); the question."""
        with self.database.session() as session, session.begin():
            conversation = _owned_row(session, owner, conversation_id)
            messages = conversation.messages
            if messages and messages[-1].role == "assistant":
                conversation.messages.remove(messages[-1])
            if not messages or messages[-1].role != "user":
                raise InvalidRequestError("this conversation has no question to answer again")
            conversation.updated_at = utc_now()
            return _message(messages[-1])

    def detach(self, owner: int | None, conversation_id: str, attachment_id: str) -> None:
        with self.database.session() as session, session.begin():
            conversation = _owned_row(session, owner, conversation_id)
            row = next((a for a in conversation.attachments if a.id == attachment_id), None)
            if row is None:
                raise ConversationNotFoundError(
                    f"no attachment {attachment_id!r} in this conversation", "attachment_not_found"
                )
            conversation.attachments.remove(row)
            conversation.updated_at = utc_now()


def _title_of(question: str) -> str:
    first_line = question.strip().splitlines()[0] if question.strip() else DEFAULT_TITLE
    return first_line if len(first_line) <= TITLE_CHARS else first_line[: TITLE_CHARS - 1] + "…"


def _owned_by(owner: int | None):
    return ConversationRow.key_id.is_(None) if owner is None else ConversationRow.key_id == owner


def _owned_row(session: Session, owner: int | None, conversation_id: str) -> ConversationRow:
    query = select(ConversationRow).where(ConversationRow.id == conversation_id, _owned_by(owner))
    row = session.scalar(query)
    if row is None:
        raise ConversationNotFoundError(f"no conversation with id {conversation_id[:60]!r}")
    return row


def _summary(row: ConversationRow) -> ConversationRecord:
    return ConversationRecord(row.id, row.title, row.created_at, row.updated_at)


def _full(row: ConversationRow) -> ConversationRecord:
    messages = tuple(_message(m) for m in row.messages)
    attachments = tuple(_attachment(a) for a in row.attachments)
    return ConversationRecord(
        row.id, row.title, row.created_at, row.updated_at, messages, attachments
    )


def _message(row: MessageRow) -> MessageRecord:
    return MessageRecord(row.id, row.role, row.content, row.answer_metadata, row.created_at)


def _attachment(row: AttachmentRow) -> AttachmentRecord:
    return AttachmentRecord(
        row.id, row.kind, row.target, row.file_id, row.tokens, row.title, row.created_at
    )
