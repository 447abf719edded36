"""Prometheus metrics, in a registry of this server's own (so several apps in one process,
as in tests, never collide). Engine gauges are read from the engine's counters when
scraped; the server never looks further into the engine than that."""

from dataclasses import asdict, dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.registry import Collector

from tome.engine.engine import Engine
from tome.engine.kv_tiers import KVTierStats
from tome.server.generation import GenerationResult

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
TOKEN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.15, 0.3, 0.6, 1.2, 2.5, 5)
PREFILL_BUCKETS = (0, 1, 2, 4, 8, 16)


@dataclass
class EngineSnapshot:
    running: int
    waiting: int
    num_blocks: int
    free_blocks: int
    prefix_queries: int
    prefix_hits: int
    preemptions: int
    kv_tiers: KVTierStats
    steps_by_prefills: dict[int, int] = field(default_factory=dict)

    @property
    def kv_usage(self) -> float:
        return 1.0 - self.free_blocks / self.num_blocks

    @property
    def prefix_hit_rate(self) -> float:
        return self.prefix_hits / self.prefix_queries if self.prefix_queries else 0.0


def read_snapshot(engine: Engine) -> EngineSnapshot:
    """Runs on the engine thread, between steps."""
    blocks, scheduler = engine.block_manager, engine.scheduler
    return EngineSnapshot(
        running=len(scheduler.running),
        waiting=len(scheduler.waiting),
        num_blocks=blocks.num_blocks,
        free_blocks=blocks.num_free_blocks,
        prefix_queries=blocks.prefix_queries,
        prefix_hits=blocks.prefix_hits,
        preemptions=scheduler.num_preemptions,
        kv_tiers=engine.kv_tier_stats(),
        steps_by_prefills=dict(scheduler.steps_by_prefills),
    )


class PrefillsPerStep(Collector):
    """A histogram of how many prompts were prefilled in each engine step, built at
    scrape time from the scheduler's counts (the server observes no step itself)."""

    def __init__(self) -> None:
        self.steps_by_prefills: dict[int, int] = {}

    def collect(self):
        counts = self.steps_by_prefills
        buckets = [
            (str(bound), sum(n for k, n in counts.items() if k <= bound))
            for bound in PREFILL_BUCKETS
        ]
        buckets.append(("+Inf", sum(counts.values())))
        family = HistogramMetricFamily(
            "tome_prefills_per_step", "Prompts prefilled (whole or in part) per engine step."
        )
        family.add_metric([], buckets, sum(k * n for k, n in counts.items()))
        yield family


class ServerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "tome_requests",
            "HTTP requests by endpoint and status.",
            ["endpoint", "status"],
            registry=r,
        )
        self.ttft = Histogram(
            "tome_time_to_first_token_seconds",
            "Time to first token, by the caller's tier.",
            ["tier"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_time = Histogram(
            "tome_queue_time_seconds",
            "Time a request waited in the engine before its prefill first ran, by tier.",
            ["tier"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.prefills_per_step = PrefillsPerStep()
        r.register(self.prefills_per_step)
        self.tpot = Histogram(
            "tome_time_per_output_token_seconds",
            "Time per output token after the first.",
            buckets=TOKEN_BUCKETS,
            registry=r,
        )
        self.tokens = Counter("tome_tokens", "Tokens by kind.", ["kind"], registry=r)
        self.running = Gauge("tome_running_requests", "Requests being computed.", registry=r)
        self.waiting = Gauge("tome_waiting_requests", "Requests queued.", registry=r)
        self.kv_usage = Gauge(
            "tome_kv_cache_usage_ratio",
            "Share of KV blocks in use (cached ones count free).",
            registry=r,
        )
        self.prefix_hit_rate = Gauge(
            "tome_prefix_cache_hit_rate", "Prompt tokens found in the prefix cache.", registry=r
        )
        self.preemptions = Gauge("tome_preemptions", "Requests preempted since start.", registry=r)
        self.kv_tiers = Gauge(
            "tome_kv_tier",
            "Prefix-cache traffic per KV tier since start: hit tokens (device, host, disk) "
            "and bytes copied to and from the host and disk tiers.",
            ["counter"],
            registry=r,
        )

    def count_request(self, endpoint: str, status: int) -> None:
        self.requests.labels(endpoint, str(status)).inc()

    def observe_latency(self, tier: str, result: GenerationResult) -> None:
        if result.time_to_first_token is not None:
            self.ttft.labels(tier).observe(result.time_to_first_token)
        if result.queue_seconds is not None:
            self.queue_time.labels(tier).observe(result.queue_seconds)
        for seconds in result.time_per_output_token:
            self.tpot.observe(seconds)

    def count_tokens(self, prompt: int, cached: int, completion: int) -> None:
        self.tokens.labels("prompt").inc(prompt)
        self.tokens.labels("cached_prompt").inc(cached)
        self.tokens.labels("completion").inc(completion)

    def render(self, snapshot: EngineSnapshot) -> bytes:
        self.running.set(snapshot.running)
        self.waiting.set(snapshot.waiting)
        self.kv_usage.set(snapshot.kv_usage)
        self.prefix_hit_rate.set(snapshot.prefix_hit_rate)
        self.preemptions.set(snapshot.preemptions)
        self.prefills_per_step.steps_by_prefills = snapshot.steps_by_prefills
        for name, value in asdict(snapshot.kv_tiers).items():
            self.kv_tiers.labels(name).set(value)
        return generate_latest(self.registry)
