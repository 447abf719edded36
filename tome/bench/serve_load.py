"""`tome bench serve`: a load generator in the style of vLLM's serving benchmark. Requests
go out all at once or as Poisson arrivals at --request-rate, at most --concurrency in
flight; each streams its answer and its timings are kept for the report."""

import asyncio
import random
import time

from rich.console import Console

from tome.bench.serve_mixed import MixedReport, run_mixed
from tome.bench.serve_report import ServeBenchReport
from tome.bench.serve_targets import EngineTarget, HttpTarget, Trace
from tome.bench.serve_workload import BenchRequest, ServeBenchConfig, make_workload
from tome.errors import TomeError


def run_serve_bench(config: ServeBenchConfig, console: Console) -> ServeBenchReport | MixedReport:
    where = config.base_url or f"our engine in process ({config.model or 'embedded model'})"
    if config.workload == "mixed":
        console.print(f"[bold]tome bench serve[/]: the mixed workload to {where}")
        return asyncio.run(_run_mixed(config))
    workload = make_workload(config)
    console.print(
        f"[bold]tome bench serve[/]: {config.num_prompts} requests to {where}, concurrency "
        f"{config.concurrency or 'unbounded'}, rate {config.request_rate or 'all at once'}"
    )
    return asyncio.run(_run(config, workload))


async def _run_mixed(config: ServeBenchConfig) -> MixedReport:
    target = _target(config)
    try:
        await _warm_up(target, "warm up")
        return await run_mixed(target, config)
    finally:
        await target.close()


async def _warm_up(target, prompt: str) -> None:
    """One request, not measured: kernels built, caches touched."""
    trace = await target.run(prompt, 2)
    if trace.error is not None:
        raise TomeError(f"the warm-up request failed: {trace.error}")


async def _run(config: ServeBenchConfig, workload: list[BenchRequest]) -> ServeBenchReport:
    target = _target(config)
    try:
        await _warm_up(target, workload[0].prompt)
        started = time.perf_counter()
        traces = await _send_all(target, workload, config)
        duration = time.perf_counter() - started
    finally:
        await target.close()
    return ServeBenchReport(config, traces, duration)


def _target(config: ServeBenchConfig) -> HttpTarget | EngineTarget:
    if config.base_url is not None:
        keys = {"free": config.api_key, "pro": config.pro_api_key or config.api_key}
        return HttpTarget(config.base_url, config.model, keys)
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
