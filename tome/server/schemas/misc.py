"""GET /v1/models and POST /v1/tokenize."""

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from tome.server.schemas.chat import ChatMessage
from tome.server.schemas.common import StrictModel


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "tome"
    max_model_len: int
    # How the weights are quantized: "int8" etc. (quantized at load), a pre-quantized
    # checkpoint's quant_method ("awq", "gptq", ...), or None for float weights.
    quantization: str | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class TokenizeRequest(StrictModel):
    """A prompt (tokenized as the completions API would), or messages (as the chat API
    would, through the chat template): exactly one of them."""

    # What `_one_input` checks, said in the schema.
    model_config = ConfigDict(
        json_schema_extra={
            "oneOf": [
                {
                    "properties": {"prompt": {"type": "string"}, "messages": {"type": "null"}},
                    "required": ["prompt"],
                },
                {
                    "properties": {"messages": {"type": "array"}, "prompt": {"type": "null"}},
                    "required": ["messages"],
                },
            ]
        }
    )

    model: str | None = None
    prompt: str | None = None
    messages: Annotated[list[ChatMessage], Field(min_length=1)] | None = None

    @model_validator(mode="after")
    def _one_input(self) -> "TokenizeRequest":
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give either prompt or messages")
        return self


class EstimateTokenCountRequest(StrictModel):
    """The long-text platform's token estimate: the messages of a chat request."""

    model: str | None = None
    messages: Annotated[list[ChatMessage], Field(min_length=1)]


class TokenTotal(BaseModel):
    total_tokens: int


class EstimateTokenCountResponse(BaseModel):
    """As the platform answers: {"data": {"total_tokens": N}}."""

    data: TokenTotal


class TokenizeResponse(BaseModel):
    tokens: list[int]
    count: int
    max_model_len: int
