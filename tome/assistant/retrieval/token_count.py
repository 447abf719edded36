"""Counting tokens of text pieces, with the model's tokenizer or a character estimate.

Chunking a book asks for the counts of hundreds of thousands of pieces. One tokenizer call
costs tens of microseconds before any text is read, so pieces are counted in batches when
the encoder can (`count_tokens`), and every count is remembered for the rest of the job."""

import re
from collections.abc import Callable, Sequence
from typing import Protocol

_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff]")


class TextEncoder(Protocol):
    """Anything with `encode(str) -> list[int]`, such as tome.loader.Tokenizer. An encoder
    that also has `count_tokens(texts) -> [len(encode(text)) for text in texts]` (Tokenizer
    does) is asked for many counts at once."""

    def encode(self, text: str) -> list[int]: ...


class TokenCounter:
    """Token counts of text pieces, cached: `count_many` measures only the texts it has not
    seen, all in one call."""

    def __init__(self, measure: Callable[[list[str]], list[int]]) -> None:
        self._measure = measure
        self._counts: dict[str, int] = {}

    def __call__(self, text: str) -> int:
        return self.count_many([text])[0]

    def count_many(self, texts: Sequence[str]) -> list[int]:
        new = list(dict.fromkeys(text for text in texts if text not in self._counts))
        if new:
            self._counts.update(zip(new, self._measure(new), strict=True))
        return [self._counts[text] for text in texts]


def token_counter(encoder: TextEncoder | None) -> TokenCounter:
    """Counts with `encoder`, less the special tokens (BOS) it adds to any text; with no
    encoder, the character estimate."""
    if encoder is None:
        return TokenCounter(lambda texts: [estimate_tokens(text) for text in texts])
    overhead = len(encoder.encode(""))
    count_tokens = getattr(encoder, "count_tokens", None)
    if count_tokens is None:
        return TokenCounter(lambda texts: [len(encoder.encode(text)) - overhead for text in texts])
    return TokenCounter(lambda texts: [tokens - overhead for tokens in count_tokens(texts)])


def estimate_tokens(text: str) -> int:
    """A tokenizer-free estimate that errs high: one token per CJK character (most
    tokenizers need 0.6 to 1) and one per four other characters (English averages ~4.5)."""
    cjk = len(_CJK.findall(text))
    return cjk + -(-(len(text) - cjk) // 4)
