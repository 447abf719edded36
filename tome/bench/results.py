"""What one side of the benchmark measured."""

from dataclasses import dataclass, field
from typing import Literal

from tome.bench.device_peak import DevicePeak

# A throughput row: (kind, batch, context). A prefill is one prompt of `context` tokens
# (batch 1); a decode is `batch` sequences generating after `context`-token prompts.
RowKey = tuple[Literal["prefill", "decode"], int, int]


@dataclass
class SideResult:
    name: str  # "tome" or "transformers"
    prefill_tps: dict[int, float]  # prompt length -> prompt tokens / time to first token
    decode_tps: dict[tuple[int, int], float]  # (batch, prompt length) -> generated tokens / time
    peak_rss_bytes: int = 0  # of the whole process: weights, KV cache, activations
    peak_gpu_bytes: int | None = None  # torch.cuda.max_memory_allocated; None on CPU
    out_of_memory: list[RowKey] = field(default_factory=list)  # rows that ran out of memory
    no_room: list[RowKey] = field(default_factory=list)  # rows skipped: their KV would not fit
    device_peak: DevicePeak | None = None  # measured before the model loaded, when asked

    def record(self, key: RowKey, tps: float) -> None:
        kind, batch, context = key
        if kind == "prefill":
            self.prefill_tps[context] = tps
        else:
            self.decode_tps[(batch, context)] = tps

    def tokens_per_second(self, key: RowKey) -> float | None:
        kind, batch, context = key
        if kind == "prefill":
            return self.prefill_tps.get(context)
        return self.decode_tps.get((batch, context))


def prefill_row(length: int) -> RowKey:
    return ("prefill", 1, length)


def decode_row(batch: int, prompt_len: int) -> RowKey:
    return ("decode", batch, prompt_len)


def row_label(key: RowKey) -> str:
    kind, batch, context = key
    if kind == "prefill":
        return f"prefill {context} tokens"
    return f"decode batch {batch} after {context}"
