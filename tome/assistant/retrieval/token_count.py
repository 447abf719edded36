"""Counting tokens of text pieces, with the model's tokenizer or a character estimate."""

import re
from typing import Protocol

_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff]")


class TextEncoder(Protocol):
    """Anything with `encode(str) -> list[int]`, such as tome.loader.Tokenizer."""

    def encode(self, text: str) -> list[int]: ...


class TokenCounter(Protocol):
    def __call__(self, text: str) -> int: ...


def estimate_tokens(text: str) -> int:
    """A tokenizer-free estimate that errs high: one token per CJK character (most
    tokenizers need 0.6 to 1) and one per four other characters (English averages ~4.5)."""
    cjk = len(_CJK.findall(text))
    return cjk + -(-(len(text) - cjk) // 4)


def encoder_token_counter(encoder: TextEncoder) -> TokenCounter:
    """Count with a real tokenizer, less the special tokens (BOS) it adds to any text."""
    overhead = len(encoder.encode(""))

    def count(text: str) -> int:
        return len(encoder.encode(text)) - overhead

    return count
