"""Generation: the engine requests behind one API request (n choices, perhaps several
prompts), merged into one stream of choice updates. Closing it aborts what still runs and
hands a GenerationResult (tokens used, timings) to whoever accounts for it. While it runs,
it reports its usage so far when it starts and then every PROGRESS_SECONDS or
PROGRESS_TOKENS new tokens, whichever comes first, so that a process killed mid-stream
loses at most that much of its billing."""

import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from tome.engine.async_engine import AsyncEngine
from tome.engine.outputs import RequestOutput, TokenLogprob
from tome.engine.sampling_params import SamplingParams
from tome.errors import TomeError
from tome.server.errors import GenerationError
from tome.server.stream_merge import merge

PROGRESS_SECONDS = 2.0
PROGRESS_TOKENS = 64


@dataclass
class ChoiceRequest:
    index: int
    prompt_index: int
    prompt_ids: list[int]
    params: SamplingParams


@dataclass
class ChoiceUpdate:
    index: int
    delta_text: str
    logprobs: list[TokenLogprob]  # the new tokens' logprobs; empty when not asked for
    finish_reason: str | None


@dataclass
class TokenCounts:
    prompt: int = 0
    cached: int = 0
    completion: int = 0


@dataclass
class GenerationResult:
    request_id: str
    counts: TokenCounts
    status: str  # finished, aborted or error; running while it streams
    time_to_first_token: float | None
    time_per_output_token: list[float] = field(default_factory=list)  # one per choice
    # Engine queue time before the first prefill step, the longest of its choices'.
    queue_seconds: float | None = None


class Generation:
    def __init__(
        self,
        engine: AsyncEngine,
        request_id: str,
        choices: list[ChoiceRequest],
        priority: int,
        on_first_token: Callable[[], None],
        on_close: Callable[[GenerationResult], None],
        cached_prefix: int = 0,
        on_progress: Callable[[GenerationResult], None] = lambda _: None,
    ) -> None:
        self.engine = engine
        self.request_id = request_id
        self.choices = choices
        self.priority = priority
        self.cached_prefix = cached_prefix
        self._on_first_token = on_first_token
        self._on_close = on_close
        self._on_progress = on_progress
        self._reported_at = 0.0
        self._reported_tokens = 0
        self._started_at = time.perf_counter()
        self._outputs: dict[int, RequestOutput] = {}
        self._token_times: dict[int, list[float]] = {c.index: [] for c in choices}
        self._first_token_at: float | None = None
        self._updates: AsyncIterator[ChoiceUpdate] | None = None
        self._failed = False
        self._closed = False

    @property
    def counts(self) -> TokenCounts:
        return self._counts()

    def updates(self) -> AsyncIterator[ChoiceUpdate]:
        """The merged updates of every choice; call once."""
        self._updates = self._merged()
        return self._updates

    async def collect(self) -> list[RequestOutput]:
        """Run to the end; the final output of each choice, by index."""
        async for _ in self.updates():
            pass
        return [self._outputs[choice.index] for choice in self.choices]

    async def aclose(self) -> None:
        """Abort what still runs and account for the request; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        try:
            if self._updates is not None:
                await self._updates.aclose()
        finally:  # accounted for even when closing is cut short
            self._on_close(self._result())

    async def _merged(self) -> AsyncIterator[ChoiceUpdate]:
        self._report_progress()
        try:
            async for update in merge([self._choice(choice) for choice in self.choices]):
                yield update
        except TomeError:
            self._failed = True
            raise

    async def _choice(self, choice: ChoiceRequest) -> AsyncIterator[ChoiceUpdate]:
        engine_id = f"{self.request_id}-{choice.index}"
        sent = 0
        stream = self.engine.generate(choice.prompt_ids, choice.params, engine_id, self.priority)
        async for out in stream:
            if out.finish_reason == "error":
                raise GenerationError(out.error or "the engine could not finish the request")
            self._note(choice.index, out)
            logprobs = out.logprobs[sent:] if out.logprobs else []
            sent += len(logprobs)
            yield ChoiceUpdate(choice.index, out.delta_text, logprobs, out.finish_reason)

    def _note(self, index: int, out: RequestOutput) -> None:
        self._outputs[index] = out
        if not out.delta_token_ids:
            return
        now = time.perf_counter()
        self._token_times[index].append(now)
        if self._first_token_at is None:
            self._first_token_at = now
            self._on_first_token()
        tokens = sum(len(output.token_ids) for output in self._outputs.values())
        if (
            now - self._reported_at >= PROGRESS_SECONDS
            or tokens - self._reported_tokens >= PROGRESS_TOKENS
        ):
            self._report_progress()

    def _report_progress(self) -> None:
        """Usage so far, as `running`: the prompts not yet reached counted whole."""
        self._reported_at = time.perf_counter()
        counts = self._counts()
        self._reported_tokens = counts.completion
        reached = {c.prompt_index for c in self.choices if c.index in self._outputs}
        prompts = {c.prompt_index: len(c.prompt_ids) for c in self.choices}
        counts.prompt += sum(n for i, n in prompts.items() if i not in reached)
        self._on_progress(GenerationResult(self.request_id, counts, "running", None))

    def _result(self) -> GenerationResult:
        finished = all(
            index in self._outputs and self._outputs[index].finish_reason in ("stop", "length")
            for index in self._token_times
        )
        status = "error" if self._failed else "finished" if finished else "aborted"
        ttft = None if self._first_token_at is None else self._first_token_at - self._started_at
        tpot = [(t[-1] - t[0]) / (len(t) - 1) for t in self._token_times.values() if len(t) > 1]
        queued = [o.queue_seconds for o in self._outputs.values() if o.queue_seconds is not None]
        queue_seconds = max(queued) if queued else None
        return GenerationResult(self.request_id, self.counts, status, ttft, tpot, queue_seconds)

    def _counts(self) -> TokenCounts:
        """Prompt tokens once per prompt (as OpenAI counts n > 1), for prompts the engine
        reached; cached tokens the fewest any of its choices found."""
        counts = TokenCounts()
        by_prompt: dict[int, list[RequestOutput]] = {}
        for choice in self.choices:
            out = self._outputs.get(choice.index)
            if out is not None:
                by_prompt.setdefault(choice.prompt_index, []).append(out)
                counts.completion += len(out.token_ids)
        for outputs in by_prompt.values():
            counts.prompt += len(outputs[0].prompt_token_ids)
            found = min(out.num_cached_tokens for out in outputs)
            counts.cached += max(found, self.cached_prefix)
        return counts
