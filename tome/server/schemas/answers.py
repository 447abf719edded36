"""POST /v1/conversations/{id}/answers: the reading assistant's question, checked at the
boundary, and its answer when not streamed."""

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StrictBool, model_validator

from tome.server.schemas.caching import TimeToLive
from tome.server.schemas.common import StrictModel
from tome.server.schemas.conversations import MAX_MESSAGE_CHARS, Message


class AnswerRequest(StrictModel):
    """A question about the conversation's attachments (and the web, when asked), or, with
    `regenerate`, the last question again in place of its answer."""

    # What `_a_question` checks, said in the schema: a question, or regenerate without one.
    model_config = ConfigDict(
        json_schema_extra={
            "oneOf": [
                {
                    "properties": {"question": {"pattern": r"\S"}, "regenerate": {"const": False}},
                    "required": ["question"],
                },
                {
                    "properties": {
                        "question": {"pattern": r"^\s*$"},
                        "regenerate": {"const": True},
                    },
                    "required": ["regenerate"],
                },
            ]
        }
    )

    question: Annotated[str, Field(max_length=MAX_MESSAGE_CHARS)] = ""
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    # Strict: the schema says boolean, so 0 or "true" is a 400, not a guess.
    web_search: StrictBool = False
    regenerate: StrictBool = False
    stream: StrictBool = True
    # Keep the conversation's documents pinned as a context cache for this many seconds
    # after this answer (tome/server/conversation_pins.py); left out, they are not pinned.
    pin_ttl: TimeToLive | None = None

    @model_validator(mode="after")
    def _a_question(self) -> "AnswerRequest":
        if self.regenerate and self.question.strip():
            raise ValueError("question: leave it out with regenerate (the last one is asked)")
        if not self.regenerate and not self.question.strip():
            raise ValueError("question: it is empty")
        return self


class Answer(BaseModel):
    user_message: Message
    message: Message
