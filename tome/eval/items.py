"""What one evaluation item is: the spec it was generated from and the prompt it became."""

import hashlib
from dataclasses import dataclass
from typing import Protocol

LANGUAGES = ("en", "zh")


class TextEncoder(Protocol):
    """Anything that turns text into token ids: `tome.loader.Tokenizer`, a transformers
    tokenizer. Context lengths are measured in its tokens."""

    def encode(self, text: str) -> list[int]: ...


@dataclass(frozen=True)
class ItemSpec:
    """Where an item sits in the grid; with the seed it determines the item entirely."""

    task: str
    language: str
    context_length: int  # target length of the whole prompt, in tokens
    depth: float | None  # where the needle sits, 0.0 (start) to 1.0 (end); None: no needle
    sample: int
    seed: int


@dataclass(frozen=True)
class EvalItem:
    spec: ItemSpec
    prompt: str  # the user message: instructions, haystack and question
    answers: tuple[str, ...]  # every string a right answer contains
    prompt_tokens: int  # measured length of the prompt
    max_answer_tokens: int


def item_seed(
    base_seed: int, task: str, language: str, length: int, depth: float | None, sample: int
) -> int:
    """A seed per grid cell and sample, stable across runs and Python processes (unlike
    hash(), which is salted per process)."""
    key = f"{base_seed}|{task}|{language}|{length}|{depth}|{sample}".encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little")
