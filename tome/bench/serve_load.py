"""`tome bench serve`: a load generator in the style of vLLM's serving benchmark. Requests
go out all at once or as Poisson arrivals at --request-rate, at most --concurrency in
flight; each streams its answer and its timings are kept for the report."""

import asyncio
import random
import time

from rich.console import Console

from tome.bench.serve_report import ServeBenchReport
from tome.bench.serve_targets import EngineTarget, HttpTarget, Trace
from tome.bench.serve_workload import BenchRequest, ServeBenchConfig, make_workload
from tome.errors import TomeError


def run_serve_bench(config: ServeBenchConfig, console: Console) -> ServeBenchReport:
    workload = make_workload(config)
    where = config.base_url or f"our engine in process ({config.model or 'embedded model'})"
    console.print(
        f"[bold]tome bench serve[/]: {config.num_prompts} requests to {where}, concurrency "
        f"{config.concurrency or 'unbounded'}, rate {config.request_rate or 'all at once'}"
    )
    return asyncio.run(_run(config, workload))


async def _run(config: ServeBenchConfig, workload: list[BenchRequest]) -> ServeBenchReport:
    target = _target(config)
    try:
        warm_up = await target.run(workload[0].prompt, 2)  # not measured
        if warm_up.error is not None:
            raise TomeError(f"the warm-up request failed: {warm_up.error}")
        started = time.perf_counter()
        traces = await _send_all(target, workload, config)
        duration = time.perf_counter() - started
    finally:
        await target.close()
    return ServeBenchReport(config, traces, duration)


def _target(config: ServeBenchConfig) -> HttpTarget | EngineTarget:
    if config.base_url is not None:
        return HttpTarget(config.base_url, config.model, config.api_key)
    from tome.engine.async_engine import AsyncEngine
    from tome.engine.config import EngineConfig

    return EngineTarget(AsyncEngine(EngineConfig(model=config.model)))


async def _send_all(target, workload: list[BenchRequest], config: ServeBenchConfig) -> list[Trace]:
    limit = asyncio.Semaphore(config.concurrency or len(workload))
    rng = random.Random(config.seed)

    async def one(request: BenchRequest) -> Trace:
        async with limit:
            return await target.run(request.prompt, request.max_tokens)

    tasks = []
    for request in workload:
        tasks.append(asyncio.create_task(one(request)))
        if config.request_rate is not None:
            await asyncio.sleep(rng.expovariate(config.request_rate))
    return list(await asyncio.gather(*tasks))
