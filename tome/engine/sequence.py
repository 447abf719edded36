"""Sequence: one request's tokens, KV blocks and progress through the engine."""

import enum
import itertools
import time
from dataclasses import dataclass, field

import torch

from tome.engine.detokenizer import IncrementalDetokenizer
from tome.engine.outputs import FinishReason, TokenLogprob
from tome.engine.sampling_params import SamplingParams

_arrival_counter = itertools.count()


class SequenceStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass(eq=False)
class Sequence:
    request_id: str
    prompt_token_ids: list[int]
    params: SamplingParams
    detokenizer: IncrementalDetokenizer
    priority: int = 0  # lower is served first, as in vLLM
    context_name: str | None = None  # set on the prefill that pins a named context
    context_ttl: float = 0.0
    # Besides the tokens, what decides the keys this sequence writes (the rope regime of
    # length-dependent rope types); it roots the chain of block hashes.
    kv_namespace: bytes = b""
    kv_token_limit: int = 0  # KV tokens it may fill: the pool less others' pinned contexts
    arrival: int = field(default_factory=lambda: next(_arrival_counter))
    arrived_at: float = field(default_factory=time.monotonic)
    first_scheduled_at: float | None = None  # when its prefill first ran
    output_token_ids: list[int] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)  # prompt + output
    block_table: list[int] = field(default_factory=list)
    block_hashes: list[bytes] = field(default_factory=list)  # of the full blocks, a chain
    num_computed_tokens: int = 0  # tokens whose KV is in the cache
    num_named_blocks: int = 0  # leading blocks already offered to the prefix cache
    num_cached_tokens: int | None = None  # prefix-cache hit at first admission
    state_slot: int | None = None  # its recurrent state's slot (state_pool.py) while running
    # Block hashes of the state checkpoints it saved and keeps (state_checkpoints.py),
    # within its prompt and past it.
    state_checkpoints: list[bytes] = field(default_factory=list)
    answer_checkpoints: list[bytes] = field(default_factory=list)
    status: SequenceStatus = SequenceStatus.WAITING
    finish_reason: FinishReason | None = None
    logprobs: list[TokenLogprob] | None = None
    prompt_logprobs: list[TokenLogprob | None] | None = None  # grows chunk by chunk
    generator: torch.Generator | None = None

    def __post_init__(self) -> None:
        self.token_ids = list(self.prompt_token_ids)
        if self.params.logprobs is not None:
            self.logprobs = []
        if self.params.prompt_logprobs is not None:
            self.prompt_logprobs = [None]  # the first token has no context, as in vLLM
        if self.params.seed is not None:
            self.generator = torch.Generator().manual_seed(self.params.seed)

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def num_uncomputed_tokens(self) -> int:
        return self.num_tokens - self.num_computed_tokens

    @property
    def needs_prompt_logprobs(self) -> bool:
        """Prompt logprobs were asked for and some are still missing."""
        return self.prompt_logprobs is not None and len(self.prompt_logprobs) < len(
            self.prompt_token_ids
        )

    @property
    def num_cacheable_tokens(self) -> int:
        """Leading tokens whose KV may come from the prefix cache instead of a forward: all
        but the last, whose logits are needed; while prompt logprobs are missing, none past
        the last position already scored, since scoring needs the forward's hidden states."""
        if self.needs_prompt_logprobs:
            return len(self.prompt_logprobs) - 1
        return self.num_tokens - 1

    @property
    def queue_seconds(self) -> float | None:
        """How long it waited before its prefill first ran (None while it waits)."""
        if self.first_scheduled_at is None:
            return None
        return self.first_scheduled_at - self.arrived_at

    @property
    def schedule_key(self) -> tuple[int, int]:
        """Served in this order; preempted in the reverse."""
        return (self.priority, self.arrival)

    def append_token(self, token_id: int) -> None:
        self.output_token_ids.append(token_id)
        self.token_ids.append(token_id)
