"""`tome bench`: our engine and Hugging Face transformers side by side on the same model and
prompts: prefill and decode tokens/s and peak memory, each side in its own process."""

from tome.bench.config import BenchConfig
from tome.bench.main import run_bench

__all__ = ["BenchConfig", "run_bench"]
