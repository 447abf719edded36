"""What one side of the benchmark measured."""

from dataclasses import dataclass


@dataclass
class SideResult:
    name: str  # "tome" or "transformers"
    prefill_tps: dict[int, float]  # prompt length -> prompt tokens / time to first token
    decode_tps: dict[int, float]  # batch size -> generated tokens / decode time
    peak_rss_bytes: int = 0  # of the whole process: weights, KV cache, activations
    peak_gpu_bytes: int | None = None  # torch.cuda.max_memory_allocated; None on CPU
