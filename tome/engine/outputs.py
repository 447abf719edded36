"""What a request hands back: RequestOutput, and the per-token logprobs."""

from dataclasses import dataclass, field
from typing import Literal

FinishReason = Literal["stop", "length", "abort", "error"]


@dataclass
class TokenLogprob:
    """The sampled token's log-probability and the top alternatives at that position."""

    token_id: int
    logprob: float
    top: dict[int, float] = field(default_factory=dict)


@dataclass
class RequestOutput:
    """The state of one request. Streaming outputs carry the new text in `delta_text`;
    `text` and `token_ids` always hold everything generated so far."""

    request_id: str
    prompt_token_ids: list[int]
    token_ids: list[int] = field(default_factory=list)
    text: str = ""
    delta_text: str = ""
    delta_token_ids: list[int] = field(default_factory=list)
    finish_reason: FinishReason | None = None
    num_cached_tokens: int = 0
    logprobs: list[TokenLogprob] | None = None
    # One per prompt token, the first None (nothing precedes it); when asked for, as in vLLM.
    prompt_logprobs: list[TokenLogprob | None] | None = None
    error: str | None = None
    queue_seconds: float | None = None  # waited before its prefill first ran

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None
