"""The measuring loop both sides share: warm up, then every prefill length and every decode
batch of the workload, one after another."""

from typing import Protocol

from tome.bench.results import SideResult
from tome.bench.workloads import WARMUP_TOKENS, Workload


class SideBench(Protocol):
    def prefill_tps(self, prompt: list[int]) -> float: ...

    def decode_tps(self, prompts: list[list[int]], max_tokens: int) -> float: ...


def measure(name: str, bench: SideBench, workload: Workload) -> SideResult:
    # A shape's first forward pays one-off costs (allocator growth, kernel selection).
    for batch in workload.decode_batches:
        bench.decode_tps([workload.warmup_prompt()] * batch, WARMUP_TOKENS)
    prefill = {n: bench.prefill_tps(workload.prefill_prompt(n)) for n in workload.prefill_lengths}
    decode = {
        b: bench.decode_tps(workload.decode_prompts(b), workload.decode_tokens)
        for b in workload.decode_batches
    }
    return SideResult(name, prefill, decode)
