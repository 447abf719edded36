"""What one side of the benchmark measured."""

from dataclasses import dataclass
from typing import Literal

# A throughput row: ("prefill", prompt length) or ("decode", batch size).
RowKey = tuple[Literal["prefill", "decode"], int]


@dataclass
class SideResult:
    name: str  # "tome" or "transformers"
    prefill_tps: dict[int, float]  # prompt length -> prompt tokens / time to first token
    decode_tps: dict[int, float]  # batch size -> generated tokens / decode time
    peak_rss_bytes: int = 0  # of the whole process: weights, KV cache, activations
    peak_gpu_bytes: int | None = None  # torch.cuda.max_memory_allocated; None on CPU

    def tokens_per_second(self, key: RowKey) -> float | None:
        kind, n = key
        return (self.prefill_tps if kind == "prefill" else self.decode_tps).get(n)


def row_label(key: RowKey) -> str:
    kind, n = key
    return f"prefill {n} tokens" if kind == "prefill" else f"decode batch {n}"
