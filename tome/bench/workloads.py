"""What one benchmark run measures, and its prompts: random token ids drawn from a seed, so
both sides (and every run) see the same prompts without needing a tokenizer."""

import zlib
from dataclasses import dataclass

import torch

from tome.bench.results import RowKey, decode_row, prefill_row

WARMUP_PROMPT_LEN = 16
WARMUP_TOKENS = 2


@dataclass(frozen=True)
class Workload:
    prefill_lengths: tuple[int, ...]
    decode_batches: tuple[int, ...]
    decode_prompt_lens: tuple[int, ...]
    decode_tokens: int  # per sequence, the first (from the prefill) included
    vocab_size: int
    seed: int = 0
    prefill_repeats: int = 1  # a prefill row is the median of this many runs

    @property
    def max_batch(self) -> int:
        return max(self.decode_batches)

    def rows(self) -> list[RowKey]:
        """Every throughput row, in the order they are measured."""
        rows = [prefill_row(n) for n in self.prefill_lengths]
        return rows + [
            decode_row(b, n) for n in self.decode_prompt_lens for b in self.decode_batches
        ]

    def prefill_prompt(self, length: int) -> list[int]:
        return self._prompt(f"prefill/{length}", length)

    def decode_prompts(self, batch: int, length: int) -> list[list[int]]:
        """`batch` distinct prompts, so no side can share work between them."""
        return [self._prompt(f"decode/{batch}/{length}/{i}", length) for i in range(batch)]

    def warmup_prompt(self) -> list[int]:
        return self._prompt("warmup", WARMUP_PROMPT_LEN)

    def _prompt(self, name: str, length: int) -> list[int]:
        generator = torch.Generator().manual_seed(zlib.crc32(f"{self.seed}/{name}".encode()))
        return torch.randint(0, self.vocab_size, (length,), generator=generator).tolist()
