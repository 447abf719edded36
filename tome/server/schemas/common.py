"""Fields and models shared by the chat and completions APIs."""

import sys
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StrictBool

from tome.engine.sampling_params import MAX_LOGPROBS

MAX_CHOICES = 16
MAX_STOP_STRINGS = 16


class StrictModel(BaseModel):
    """Request bodies: known fields are checked, unknown ones ignored (clients send extras
    such as `user` or `metadata` that change nothing here)."""

    model_config = ConfigDict(extra="ignore")


class StreamOptions(StrictModel):
    include_usage: StrictBool = False


class SamplingFields(StrictModel):
    """What chat and completions requests share; None means the OpenAI default."""

    model: str
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] | None = None
    # Above 0, as the smallest normal float: the server process flushes subnormal numbers to
    # zero (5e-324 compares as 0), so the schema must not promise them.
    top_p: Annotated[float, Field(ge=sys.float_info.min, le=1.0)] | None = None
    n: Annotated[int, Field(ge=1, le=MAX_CHOICES)] = 1
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    stop: str | Annotated[list[str], Field(max_length=MAX_STOP_STRINGS)] | None = None
    # JSON's safe integers (I-JSON, RFC 7493): a bound past 2**53 is a float to most JSON
    # tools, so they and the server would disagree about the numbers next to it.
    seed: Annotated[int, Field(ge=-(2**53 - 1), le=2**53 - 1)] | None = None
    presence_penalty: Annotated[float, Field(ge=-2.0, le=2.0)] | None = None
    frequency_penalty: Annotated[float, Field(ge=-2.0, le=2.0)] | None = None
    # Extension (as in vLLM): keep generating past end-of-sequence, for benchmarks.
    ignore_eos: StrictBool = False

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage


TopLogprobs = Annotated[int, Field(ge=0, le=MAX_LOGPROBS)]


class PromptTokensDetails(BaseModel):
    cached_tokens: int = 0


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails

    @classmethod
    def of(cls, prompt: int, cached: int, completion: int) -> "Usage":
        return cls(
            prompt_tokens=prompt,
            completion_tokens=completion,
            total_tokens=prompt + completion,
            prompt_tokens_details=PromptTokensDetails(cached_tokens=cached),
        )


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail
