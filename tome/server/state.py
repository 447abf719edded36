"""ServerState: what the routes share (engine, settings, keys, limits, ledger, metrics),
and the wiring of one generation into the limits, the queue estimate, the metrics and
the ledger."""

import asyncio
import itertools
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TypeVar

from fastapi import Request

from tome.assistant.retrieval.index_cache import IndexCache
from tome.assistant.web import SearchProvider
from tome.engine.async_engine import AsyncEngine
from tome.loader.tokenizer import Tokenizer
from tome.server.cache_registry import CacheRegistry
from tome.server.format_logprobs import TokenTexts
from tome.server.generation import Generation, GenerationResult, TokenCounts
from tome.server.ledger import UsageLedger
from tome.server.limits import Admission, Caller, Limiter
from tome.server.metrics import ServerMetrics
from tome.server.overload import QueueWaitEstimator
from tome.server.prompts import Plan
from tome.server.tag_registry import TagRegistry
from tome.server.tiers import ServerSettings
from tome.store import Database, KeyStore, UsageEntry, UsageStore

T = TypeVar("T")


@dataclass
class ServerState:
    engine: AsyncEngine
    settings: ServerSettings
    database: Database
    model_name: str
    max_model_len: int
    open_mode: bool  # no keys: one local user, no limits
    quantization: str | None = None  # Engine.weight_quantization, shown by /v1/models
    search: SearchProvider | None = None  # web search for the assistant; None: off
    # Built passage indexes (and their vectors, with an embedder) from one question to the
    # next, so a long book is chunked and indexed once per process.
    index_cache: IndexCache = field(default_factory=IndexCache)
    keys: KeyStore = field(init=False)
    usage: UsageStore = field(init=False)
    ledger: UsageLedger = field(init=False)
    token_texts: TokenTexts = field(init=False)
    limiter: Limiter = field(default_factory=Limiter)
    queue: QueueWaitEstimator = field(default_factory=QueueWaitEstimator)
    metrics: ServerMetrics = field(default_factory=ServerMetrics)
    caches: CacheRegistry = field(default_factory=CacheRegistry)  # /v1/caching, by id
    tags: TagRegistry = field(default_factory=TagRegistry)  # /v1/caching/refs/tags, by key
    created: int = field(default_factory=lambda: int(time.time()))
    # One thread tokenizes: long prompts stay off the event loop, and the tokenizer is
    # never entered by two server threads at once.
    _tokenizing: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(1, thread_name_prefix="tome-tokenize")
    )
    _ids: itertools.count = field(default_factory=itertools.count)

    def __post_init__(self) -> None:
        self.token_texts = TokenTexts(self.engine.tokenizer)
        self.keys = KeyStore(self.database)
        self.usage = UsageStore(self.database)
        self.ledger = UsageLedger(self.usage)

    @property
    def tokenizer(self) -> Tokenizer:
        return self.engine.tokenizer

    async def tokenize(self, fn: Callable[..., T], *args) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._tokenizing, fn, *args)

    def new_request_id(self, prefix: str) -> str:
        return f"{prefix}-{uuid.uuid4().hex[:16]}{next(self._ids)}"

    def start_generation(
        self, admission: Admission, endpoint: str, request_id: str, plan: Plan
    ) -> Generation:
        """Charge the prompt to the caller's limits (429 when over), then a generation
        whose end releases the caller's slot, counts its tokens and writes its usage; its
        first token tells the queue estimate it started."""
        caller = admission.caller
        self.limiter.charge_prompt(caller, plan.prompt_tokens)
        admission.handed_over = True
        priority = caller.tier.priority
        self.queue.enqueue(priority)

        def on_close(result: GenerationResult) -> None:
            if result.time_to_first_token is None:
                self.queue.drop(priority)
            admission.release()
            self._account(caller, endpoint, result)

        return Generation(
            self.engine,
            request_id,
            plan.choices,
            priority,
            cached_prefix=plan.cached_prefix,
            on_first_token=lambda: self.queue.start(priority),
            on_close=on_close,
            on_progress=lambda result: self.ledger.record(
                self._usage_entry(caller, endpoint, result.request_id, result.counts, "running")
            ),
        )

    def _account(self, caller: Caller, endpoint: str, result: GenerationResult) -> None:
        self.limiter.charge_completion(caller, result.counts.completion)
        self.metrics.observe_latency(caller.tier.name, result)
        self.record_usage(caller, endpoint, result.request_id, result.counts, result.status)

    def record_usage(
        self,
        caller: Caller,
        endpoint: str,
        request_id: str,
        counts: TokenCounts,
        status: str = "finished",
    ) -> None:
        """Count a request's tokens in the metrics and write them to the usage ledger."""
        self.metrics.count_tokens(counts.prompt, counts.cached, counts.completion)
        self.ledger.record(self._usage_entry(caller, endpoint, request_id, counts, status))

    def _usage_entry(
        self, caller: Caller, endpoint: str, request_id: str, counts: TokenCounts, status: str
    ) -> UsageEntry:
        return UsageEntry(
            key_id=caller.key_id,
            request_id=request_id,
            model=self.model_name,
            endpoint=endpoint,
            status=status,
            prompt_tokens=counts.prompt,
            cached_tokens=counts.cached,
            completion_tokens=counts.completion,
        )

    def close(self) -> None:
        self.ledger.close()
        self._tokenizing.shutdown(wait=False)
        self.engine.shutdown()
        self.database.close()


def server_state(request: Request) -> ServerState:
    return request.app.state.tome
