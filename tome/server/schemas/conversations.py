"""/v1/conversations: request bodies (checked at the boundary) and the records returned."""

import re
from datetime import UTC, datetime
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    model_validator,
)

from tome.server.markdown_render import render_markdown
from tome.server.schemas.common import StrictModel
from tome.store.conversations import AttachmentRecord, ConversationRecord, MessageRecord

MAX_TITLE_CHARS = 200
MAX_MESSAGE_CHARS = 2_000_000  # a pasted chapter fits; a whole library does not
MAX_CITATIONS = 200
MAX_URL_CHARS = 2048
MAX_EXCERPT_CHARS = 4000

# Checked as sent (so that the schema's limits are the server's), then stripped: a title
# needs one character that is not whitespace.
Title = Annotated[
    str,
    # Python's strip takes \x1c-\x1f too; the pattern is checked by Rust's regex.
    StringConstraints(min_length=1, max_length=MAX_TITLE_CHARS, pattern=r"[^\s\x1c-\x1f]"),
    AfterValidator(str.strip),
]
FileId = Annotated[str, StringConstraints(pattern=r"^file-[A-Za-z0-9_-]{1,64}$")]
# An http(s) URL with a host: ASCII only up to the path, so that urlsplit takes it as written.
# Checked in `_one_target` with Python's re (the schema's readers use it too), for a message
# that says what is wrong rather than the pattern.
WEB_URL = re.compile(r"^[Hh][Tt][Tt][Pp][Ss]?://[A-Za-z0-9._~%!$&'()*+,;=:@-]+([/?#]\S*)?$")
WebUrl = Annotated[
    str, Field(max_length=MAX_URL_CHARS, json_schema_extra={"pattern": WEB_URL.pattern})
]


class NewConversation(StrictModel):
    title: Title | None = None


class RenameConversation(StrictModel):
    title: Title


class Citation(BaseModel):
    """What an answer's [n] points at: a file or URL, and the section and page within it."""

    number: Annotated[int, Field(ge=1)]
    source_id: Annotated[str, Field(min_length=1, max_length=MAX_URL_CHARS)]
    source_title: Annotated[str, Field(max_length=500)] = ""
    section_title: Annotated[str, Field(max_length=500)] | None = None
    page: Annotated[int, Field(ge=1)] | None = None
    excerpt: Annotated[str, Field(max_length=MAX_EXCERPT_CHARS)] = ""


class Usage(BaseModel):
    prompt_tokens: Annotated[int, Field(ge=0)]
    cached_tokens: Annotated[int, Field(ge=0)]
    completion_tokens: Annotated[int, Field(ge=0)]


class AnswerMetadata(BaseModel):
    """How an assistant answer was made: the whole documents in the window ("full") or
    retrieved passages ("retrieval"), the window's tokens its prompt took of the window's
    size, how it ended, its citations and the tokens it cost."""

    mode: Literal["full", "retrieval"]
    window_tokens: Annotated[int, Field(ge=0)] | None = None
    window_size: Annotated[int, Field(ge=1)] | None = None
    finish_reason: Literal["stop", "length", "abort", "error"] | None = None
    citations: Annotated[list[Citation], Field(max_length=MAX_CITATIONS)] = []
    usage: Usage | None = None


class NewMessage(StrictModel):
    # What `_metadata_on_answers_only` checks, said in the schema.
    model_config = ConfigDict(
        json_schema_extra={
            "oneOf": [
                {"properties": {"role": {"const": "assistant"}}},
                {
                    "properties": {
                        "role": {"enum": ["system", "user"]},
                        "metadata": {"type": "null"},
                    }
                },
            ]
        }
    )

    role: Literal["system", "user", "assistant"]
    content: Annotated[str, Field(max_length=MAX_MESSAGE_CHARS)]
    metadata: AnswerMetadata | None = None

    @model_validator(mode="after")
    def _metadata_on_answers_only(self) -> "NewMessage":
        if self.metadata is not None and self.role != "assistant":
            raise ValueError("metadata: only assistant messages carry it")
        return self


class NewAttachment(StrictModel):
    """A file uploaded through /v1/files (by id), or a URL."""

    # What `_one_target` checks, said in the schema.
    model_config = ConfigDict(
        json_schema_extra={
            "oneOf": [
                {
                    "properties": {
                        "kind": {"const": "file"},
                        "file_id": {"type": "string"},
                        "url": {"type": "null"},
                    },
                    "required": ["file_id"],
                },
                {
                    "properties": {
                        "kind": {"const": "url"},
                        "url": {"type": "string"},
                        "file_id": {"type": "null"},
                    },
                    "required": ["url"],
                },
            ]
        }
    )

    kind: Literal["file", "url"]
    file_id: FileId | None = None
    url: WebUrl | None = None
    title: Annotated[str, Field(max_length=500)] = ""

    @model_validator(mode="after")
    def _one_target(self) -> "NewAttachment":
        if self.kind == "file" and (self.file_id is None or self.url is not None):
            raise ValueError("a file attachment needs file_id (and no url)")
        if self.kind == "url":
            if self.url is None or self.file_id is not None:
                raise ValueError("a url attachment needs url (and no file_id)")
            if WEB_URL.match(self.url) is None:
                raise ValueError("url: must be an http or https URL (with a host)")
            parts = urlsplit(self.url)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise ValueError("url: must be an http or https URL")
        return self

    @property
    def target(self) -> str:
        return self.file_id if self.kind == "file" else self.url


def unix_time(moment: datetime) -> int:
    """Stored times are naive UTC; the API speaks Unix seconds, as OpenAI does."""
    return int(moment.replace(tzinfo=UTC).timestamp())


class Message(BaseModel):
    id: str
    object: Literal["conversation.message"] = "conversation.message"
    role: str
    content: str
    html: str  # the content as safe HTML: Markdown rendered, [n] linked to its citation
    metadata: AnswerMetadata | None
    created_at: int

    @classmethod
    def of(cls, record: MessageRecord) -> "Message":
        metadata = None if record.metadata is None else AnswerMetadata(**record.metadata)
        cited = [c.number for c in metadata.citations] if metadata is not None else []
        return cls(
            id=record.id,
            role=record.role,
            content=record.content,
            html=render_markdown(record.content, cited),
            metadata=metadata,
            created_at=unix_time(record.created_at),
        )


class Attachment(BaseModel):
    id: str
    object: Literal["conversation.attachment"] = "conversation.attachment"
    kind: str
    file_id: str | None  # the stored text: the upload, or the page fetched for a URL
    url: str | None
    title: str
    tokens: int  # of the stored text, in the served model's tokens
    created_at: int

    @classmethod
    def of(cls, record: AttachmentRecord) -> "Attachment":
        return cls(
            id=record.id,
            kind=record.kind,
            file_id=record.file_id,
            url=None if record.kind == "file" else record.target,
            title=record.title,
            tokens=record.tokens,
            created_at=unix_time(record.created_at),
        )


class Conversation(BaseModel):
    id: str
    object: Literal["conversation"] = "conversation"
    title: str
    created_at: int
    updated_at: int


class ConversationDetail(Conversation):
    messages: list[Message]
    attachments: list[Attachment]


class ConversationList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Conversation]


class Deleted(BaseModel):
    id: str
    object: str
    deleted: Literal[True] = True


def summary_of(record: ConversationRecord) -> Conversation:
    return Conversation(
        id=record.id,
        title=record.title,
        created_at=unix_time(record.created_at),
        updated_at=unix_time(record.updated_at),
    )


def detail_of(record: ConversationRecord) -> ConversationDetail:
    return ConversationDetail(
        **summary_of(record).model_dump(),
        messages=[Message.of(m) for m in record.messages],
        attachments=[Attachment.of(a) for a in record.attachments],
    )
