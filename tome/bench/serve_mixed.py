"""`tome bench serve --workload mixed`: does anyone wait behind a long prompt?

First a few short questions go out one at a time on an idle server (their time to first
token alone). Then the long prompts (a free tier's books, near the window) go out at once,
and while they are read, short questions of two tiers (free and pro, alternating) arrive as
Poisson arrivals. The report gives the short questions' time to first token per tier (p50,
p99) against the idle one, and the long requests' total time."""

import asyncio
import random
import statistics
import time
from dataclasses import dataclass

from tome.bench.serve_report import TableReport, percentile
from tome.bench.serve_targets import Trace
from tome.bench.serve_workload import ServeBenchConfig
from tome.eval.word_lists import ENGLISH_WORDS
from tome.server.tiers import DEFAULT_TIERS

# Tiers as tome serve builds them in: lower priority values are served first.
TIER_PRIORITIES = {name: DEFAULT_TIERS[name].priority for name in ("pro", "free")}
IDLE_QUESTIONS = 3


@dataclass(frozen=True)
class MixedRequest:
    prompt: str
    max_tokens: int
    tier: str
    long: bool


def make_mixed_workload(config: ServeBenchConfig) -> dict[str, list[MixedRequest]]:
    """The questions asked alone, the long requests and the questions asked during them,
    the same for a given seed."""
    rng = random.Random(config.seed)

    def request(tag: str, words: int, tier: str) -> MixedRequest:
        # A distinct opening word per request keeps prefix caching from sharing prompts.
        prompt = " ".join([f"{tag}:", *rng.choices(ENGLISH_WORDS, k=max(1, words - 1))])
        return MixedRequest(prompt, config.output_len, tier, long=tag.startswith("Book"))

    def questions(tag: str, count: int) -> list[MixedRequest]:
        return [
            request(f"{tag}{i}", config.prompt_len, ("pro", "free")[i % 2]) for i in range(count)
        ]

    return {
        "alone": questions("Alone", IDLE_QUESTIONS),
        "long": [
            request(f"Book{i}", config.long_prompt_len, "free")
            for i in range(config.num_long_prompts)
        ],
        "during": questions("Question", config.num_prompts),
    }


async def run_mixed(target, config: ServeBenchConfig) -> "MixedReport":
    workload = make_mixed_workload(config)
    idle = [await _send(target, request) for request in workload["alone"]]
    rng = random.Random(config.seed)
    started = time.perf_counter()
    tasks = [asyncio.create_task(_send(target, request)) for request in workload["long"]]
    await asyncio.sleep(config.short_delay_s)
    for request in workload["during"]:
        tasks.append(asyncio.create_task(_send(target, request)))
        await asyncio.sleep(rng.expovariate(config.request_rate or 1.0))
    traces = await asyncio.gather(*tasks)
    during = list(zip(workload["long"] + workload["during"], traces, strict=True))
    return MixedReport(config, idle, during, time.perf_counter() - started)


async def _send(target, request: MixedRequest) -> Trace:
    return await target.run(
        request.prompt, request.max_tokens, request.tier, TIER_PRIORITIES[request.tier]
    )


@dataclass
class MixedReport(TableReport):
    config: ServeBenchConfig
    idle: list[Trace]  # short questions alone, one at a time
    during: list[tuple[MixedRequest, Trace]]
    duration_s: float

    def _ttfts(self, traces: list[Trace]) -> list[float]:
        return [t.chunk_times[0] - t.sent_at for t in traces if t.error is None and t.chunk_times]

    def _shorts(self, tier: str | None = None) -> list[Trace]:
        return [t for r, t in self.during if not r.long and (tier is None or r.tier == tier)]

    def rows(self) -> list[tuple[str, str]]:
        failed = sum(1 for _, t in self.during if t.error is not None or not t.chunk_times)
        rows = [
            ("requests (long + short) / failed", f"{len(self.during)} / {failed}"),
            (
                "long prompt tokens",
                ", ".join(str(t.prompt_tokens) for r, t in self.during if r.long),
            ),
        ]
        idle = self._ttfts(self.idle)
        if idle:
            rows.append(("short TTFT alone, median (ms)", f"{statistics.median(idle) * 1e3:.0f}"))
        for label, tier in (("short", None), ("short pro", "pro"), ("short free", "free")):
            ttfts = self._ttfts(self._shorts(tier))
            if ttfts:
                ms = [v * 1e3 for v in ttfts]
                rows.append((f"{label} TTFT p50 (ms)", f"{percentile(ms, 50):.0f}"))
                rows.append((f"{label} TTFT p99 (ms)", f"{percentile(ms, 99):.0f}"))
        totals = [t.chunk_times[-1] - t.sent_at for r, t in self.during if r.long and t.chunk_times]
        if totals:
            rows.append(("long request total time, mean (s)", f"{statistics.fmean(totals):.2f}"))
            rows.append(("long request total time, max (s)", f"{max(totals):.2f}"))
        rows.append(("duration (s)", f"{self.duration_s:.2f}"))
        return rows

    def errors(self) -> list[str]:
        return sorted(
            {t.error for _, t in self.during if t.error} | {t.error for t in self.idle if t.error}
        )

    @property
    def title(self) -> str:
        c = self.config
        return (
            f"{c.target_name}: mixed, {c.num_long_prompts} long prompts of "
            f"{c.long_prompt_len} words (free tier), {c.num_prompts} questions of "
            f"{c.prompt_len} words (pro and free) "
            f"at {c.request_rate or 1.0}/s from {c.short_delay_s:g} s, output {c.output_len} tokens"
        )
