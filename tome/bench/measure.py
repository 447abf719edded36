"""The measuring loop both sides share: warm up, then every row of the workload, one after
another, each printed as it is measured so that a run cut short still leaves its numbers.
A row the side knows it has no room for is skipped.

A row that runs out of device memory is recorded as such, and the side stops there: what
the failed step left allocated is not worth trusting the next rows to."""

import statistics
from typing import Protocol

import torch

from tome.bench.results import RowKey, SideResult, row_label
from tome.bench.workloads import WARMUP_TOKENS, Workload


class SideBench(Protocol):
    def prefill_tps(self, prompt: list[int]) -> float: ...

    def decode_tps(self, prompts: list[list[int]], max_tokens: int) -> float: ...

    def has_room(self, key: RowKey) -> bool: ...


def measure(name: str, bench: SideBench, workload: Workload) -> SideResult:
    result = SideResult(name, {}, {})
    # A shape's first forward pays one-off costs (allocator growth, kernel selection).
    for batch in workload.decode_batches:
        bench.decode_tps([workload.warmup_prompt()] * batch, WARMUP_TOKENS)
    for key in workload.rows():
        if not bench.has_room(key):
            result.no_room.append(key)
            _say(f"{name}: {row_label(key)}: no room for its KV cache on this device; skipped")
            continue
        try:
            tps = _measure_row(bench, workload, key)
        except torch.OutOfMemoryError:
            result.out_of_memory.append(key)
            _say(f"{name}: {row_label(key)}: out of memory; the rows after it are not run")
            return result
        _say(f"{name}: {row_label(key)}: {tps:,.1f} tok/s")
        result.record(key, tps)
    return result


def _measure_row(bench: SideBench, workload: Workload, key: RowKey) -> float:
    kind, batch, context = key
    if kind == "prefill":
        prompt = workload.prefill_prompt(context)
        return statistics.median(bench.prefill_tps(prompt) for _ in range(workload.prefill_repeats))
    return bench.decode_tps(workload.decode_prompts(batch, context), workload.decode_tokens)


def _say(line: str) -> None:
    # Flushed: a worker's stdout is a pipe or file, and a run killed by a timeout keeps
    # only what was written.
    print(line, flush=True)
