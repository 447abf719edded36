"""Time to first token for a second question about the same document.

The first question pays the document's prefill; the second finds the document in the prefix
cache and pays only for its own tokens. A third run pins the document by name first
(`cache_context`) and times a question that refers to it. The target from the issue: the
second question's time to first token <= 10% of the first's."""

import time
import zlib
from dataclasses import dataclass

import torch
from rich.console import Console
from rich.table import Table

from tome import LLM, SamplingParams
from tome.engine.engine import Engine

QUESTION_TOKENS = 32
TARGET_RATIO = 0.10


@dataclass
class ContextReuseResult:
    document_tokens: int
    first_ttft: float  # seconds: document + question, nothing cached
    second_ttft: float  # another question on the same document, found in the prefix cache
    named_ttft: float  # a question referring to the document pinned by name
    second_cached_tokens: int

    @property
    def ratio(self) -> float:
        return self.second_ttft / self.first_ttft


def run_context_reuse(llm: LLM, document_tokens: int, seed: int = 0) -> ContextReuseResult:
    vocab = llm.engine.model_config.vocab_size
    document = _random_ids("document", document_tokens, vocab, seed)
    questions = [_random_ids(f"question/{i}", QUESTION_TOKENS, vocab, seed) for i in range(3)]
    _time_first_token(llm.engine, _random_ids("warmup", 64, vocab, seed))
    first, _ = _time_first_token(llm.engine, document + questions[0])
    second, cached = _time_first_token(llm.engine, document + questions[1])
    pinned_document = _random_ids("pinned", document_tokens, vocab, seed)
    llm.cache_context("bench-document", pinned_document, ttl_seconds=600)
    named, _ = _time_first_token(llm.engine, questions[2], context="bench-document")
    llm.delete_context("bench-document")
    return ContextReuseResult(document_tokens, first, second, named, cached)


def print_context_reuse(result: ContextReuseResult, console: Console) -> None:
    table = Table(title=f"a second question on a {result.document_tokens}-token document")
    for name in ("request", "time to first token (s)", "vs first question"):
        table.add_column(name, justify="left" if name == "request" else "right")
    table.add_row("first question (document prefilled)", f"{result.first_ttft:.3f}", "1.00x")
    table.add_row(
        f"second question (prefix cache: {result.second_cached_tokens} tokens cached)",
        f"{result.second_ttft:.3f}",
        f"{result.ratio:.3f}x",
    )
    table.add_row(
        "question on the document pinned by name",
        f"{result.named_ttft:.3f}",
        f"{result.named_ttft / result.first_ttft:.3f}x",
    )
    console.print(table)
    verdict = "met" if result.ratio <= TARGET_RATIO else "MISSED"
    console.print(f"target: second question <= {TARGET_RATIO:.0%} of the first: {verdict}")


def _time_first_token(
    engine: Engine, prompt: list[int], context: str | None = None
) -> tuple[float, int]:
    params = SamplingParams(temperature=0.0, max_tokens=1, ignore_eos=True)
    request_id = f"context-reuse-{time.monotonic_ns()}"
    start = time.perf_counter()
    engine.add_request(request_id, prompt, params, context=context)
    while True:
        for out in engine.step():
            if out.request_id == request_id and out.finished:
                return time.perf_counter() - start, out.num_cached_tokens


def _random_ids(name: str, length: int, vocab: int, seed: int) -> list[int]:
    generator = torch.Generator().manual_seed(zlib.crc32(f"{seed}/{name}".encode()))
    return torch.randint(0, vocab, (length,), generator=generator).tolist()
