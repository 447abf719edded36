"""What the serving benchmark measures: any OpenAI-compatible server over HTTP (streamed
completions), or our AsyncEngine in process (the bare engine, to see what HTTP adds).
Both yield (time, tokens) for each piece of the answer, and the usage counts."""

import json
import time
from dataclasses import dataclass, field

import httpx

from tome.engine.async_engine import AsyncEngine
from tome.engine.sampling_params import SamplingParams
from tome.errors import TomeError
from tome.loader.error_text import one_line


@dataclass
class Trace:
    """One request's timings: when it was sent and when each piece of answer came."""

    sent_at: float
    chunk_times: list[float] = field(default_factory=list)
    prompt_tokens: int = 0
    output_tokens: int = 0
    error: str | None = None


class HttpTarget:
    """Tiers reach the server two ways: as the API key of the tier (tome serve finds the
    tier's priority by key) and as vLLM's `priority` field (its --scheduling-policy
    priority reads it; tome ignores it)."""

    def __init__(self, base_url: str, model: str, keys: dict[str, str]) -> None:
        self.model = model
        self.keys = keys  # tier -> API key; "free" is also the key of untiered requests
        self.client = httpx.AsyncClient(
            base_url=base_url.rstrip("/"),
            timeout=httpx.Timeout(600.0),
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=None),
        )

    async def run(
        self, prompt: str, max_tokens: int, tier: str = "free", priority: int = 0
    ) -> Trace:
        body = {
            "model": self.model,
            "prompt": prompt,
            "max_tokens": max_tokens,
            "temperature": 0.0,
            "stream": True,
            "stream_options": {"include_usage": True},
            "ignore_eos": True,  # vLLM's extension, ours too: every answer has its length
            "priority": priority,
        }
        headers = {"Authorization": f"Bearer {self.keys.get(tier, self.keys['free'])}"}
        trace = Trace(time.perf_counter())
        try:
            async with self.client.stream(
                "POST", "/completions", json=body, headers=headers
            ) as reply:
                if reply.status_code != 200:
                    trace.error = f"HTTP {reply.status_code}: {(await reply.aread())[:200]!r}"
                    return trace
                async for line in reply.aiter_lines():
                    self._read_event(line, trace)
        except httpx.HTTPError as exc:
            trace.error = one_line(exc)
        return trace

    @staticmethod
    def _read_event(line: str, trace: Trace) -> None:
        if not line.startswith("data: ") or line == "data: [DONE]":
            return
        event = json.loads(line[len("data: ") :])
        if event.get("choices") and event["choices"][0].get("text"):
            trace.chunk_times.append(time.perf_counter())
        if event.get("usage"):
            trace.prompt_tokens = event["usage"]["prompt_tokens"]
            trace.output_tokens = event["usage"]["completion_tokens"]

    async def close(self) -> None:
        await self.client.aclose()


class EngineTarget:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._count = 0

    async def run(
        self, prompt: str, max_tokens: int, tier: str = "free", priority: int = 0
    ) -> Trace:
        self._count += 1
        params = SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)
        trace = Trace(time.perf_counter())
        request_id = f"bench-{self._count}"
        try:
            async for out in self.engine.generate(prompt, params, request_id, priority):
                if out.delta_token_ids:
                    trace.chunk_times.append(time.perf_counter())
                trace.prompt_tokens = len(out.prompt_token_ids)
                trace.output_tokens = len(out.token_ids)
        except TomeError as exc:
            trace.error = exc.message
        return trace

    async def close(self) -> None:
        self.engine.shutdown()
