"""POST /v1/chat/completions: request, answer and stream chunk."""

import re
from typing import Annotated, Literal

from pydantic import BaseModel, Field, field_validator

from tome.server.schemas.common import SamplingFields, StrictModel, TopLogprobs, Usage


class TextPart(StrictModel):
    type: Literal["text"]
    text: str


class ChatMessage(StrictModel):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]
    name: str | None = None

    def as_template_message(self) -> dict[str, str]:
        """The plain role/content pair chat templates expect; developer is OpenAI's newer
        name for system."""
        text = (
            self.content
            if isinstance(self.content, str)
            else "".join(part.text for part in self.content)
        )
        role = "system" if self.role == "developer" else self.role
        return {"role": role, "content": text}


# A tag names a cache (POST /v1/caching/refs/tags); the platform's rule for its name.
CACHE_TAG = r"[A-Za-z][A-Za-z0-9_.-]{0,127}"
CACHE_REFERENCE = re.compile(
    rf"(cache_id=(?P<id>[A-Za-z0-9_.-]{{1,128}})|tag=(?P<tag>{CACHE_TAG}))"
    r"(;reset_ttl=(?P<ttl>\d{1,9}))?"
)
# The same, as the schema states it for a whole content with the whitespace it may have.
CACHE_REFERENCE_PATTERN = (
    rf"^[\s\x1c-\x1f]*(cache_id=[A-Za-z0-9_.-]{{1,128}}|tag={CACHE_TAG})"
    r"(;reset_ttl=\d{1,9})?[\s\x1c-\x1f]*$"
)


class CacheMessage(StrictModel):
    """The platform's way to continue a context cache (POST /v1/caching): the first message
    {"role": "cache", "content": "cache_id=<id>[;reset_ttl=<seconds>]"}, or "tag=<tag>..."
    for the cache a tag names."""

    role: Literal["cache"]
    # `_reference`'s check, said in the schema too (Python strips \x1c-\x1f, Rust's \s not);
    # only in the schema, so that a bad reference gets _reference's readable message.
    content: Annotated[str, Field(json_schema_extra={"pattern": CACHE_REFERENCE_PATTERN})]

    @field_validator("content")
    @classmethod
    def _reference(cls, content: str) -> str:
        if CACHE_REFERENCE.fullmatch(content.strip()) is None:
            raise ValueError(
                "a 'cache' message's content is 'cache_id=<id>' or 'tag=<tag>', either "
                "optionally followed by ';reset_ttl=<seconds>'"
            )
        return content.strip()

    @property
    def cache_id(self) -> str | None:
        return CACHE_REFERENCE.fullmatch(self.content)["id"]

    @property
    def tag(self) -> str | None:
        return CACHE_REFERENCE.fullmatch(self.content)["tag"]

    @property
    def reset_ttl(self) -> int | None:
        ttl = CACHE_REFERENCE.fullmatch(self.content)["ttl"]
        return None if ttl is None else int(ttl)


AnyMessage = Annotated[CacheMessage | ChatMessage, Field(discriminator="role")]


def _cache_first_in_schema(schema: dict) -> None:
    """`_cache_only_first`, said in the schema: any message first, chat messages after it."""
    schema["prefixItems"] = [schema["items"]]
    schema["items"] = {"$ref": schema["items"]["discriminator"]["mapping"]["user"]}


class ChatCompletionRequest(SamplingFields):
    messages: Annotated[
        list[AnyMessage], Field(min_length=1, json_schema_extra=_cache_first_in_schema)
    ]
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None
    logprobs: bool = False
    top_logprobs: TopLogprobs | None = None

    @field_validator("messages")
    @classmethod
    def _cache_only_first(cls, messages: list[AnyMessage]) -> list[AnyMessage]:
        """A cached context is what a chat starts from, so it can only come first."""
        if any(isinstance(m, CacheMessage) for m in messages[1:]):
            raise ValueError("a message of role 'cache' may only be the first message")
        return messages

    @property
    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    @property
    def cache(self) -> CacheMessage | None:
        first = self.messages[0]
        return first if isinstance(first, CacheMessage) else None


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int]


class TokenLogprobEntry(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChoiceLogprobs(BaseModel):
    content: list[TokenLogprobEntry]


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: ChoiceLogprobs | None = None
    finish_reason: str


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class ChatDelta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChatChunkChoice(BaseModel):
    index: int
    delta: ChatDelta
    logprobs: ChoiceLogprobs | None = None
    finish_reason: str | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = None
