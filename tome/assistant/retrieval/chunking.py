"""Cutting sources into passages of at most `max_tokens` tokens, on sentence boundaries.

Consecutive passages of a section share their last/first `overlap_sentences` sentences, so
a fact told across a boundary is still whole in one of them. A sentence is cut only when it
alone exceeds the limit: at a comma or a space if it can be, else between characters.
"""

import re
from collections.abc import Iterable
from dataclasses import dataclass

from tome.assistant.retrieval.sentences import Sentence, join_sentences, split_sentences
from tome.assistant.retrieval.sources import Section, SourceText
from tome.assistant.retrieval.token_count import (
    TextEncoder,
    TokenCounter,
    encoder_token_counter,
    estimate_tokens,
)
from tome.errors import InvalidRequestError

# Pieces of an over-long sentence: runs ending after a comma or whitespace.
_CLAUSE = re.compile(r"[^\s，、,：:]+[\s，、,：:]*|[\s，、,：:]+")


@dataclass(frozen=True)
class ChunkingConfig:
    max_tokens: int = 256
    overlap_sentences: int = 1

    def __post_init__(self) -> None:
        if self.max_tokens < 1:
            raise InvalidRequestError(f"max_tokens must be at least 1, got {self.max_tokens}")
        if self.overlap_sentences < 0:
            raise InvalidRequestError(
                f"overlap_sentences must be 0 or more, got {self.overlap_sentences}"
            )


@dataclass(frozen=True)
class Passage:
    """A stretch of one section, small enough to put several of them in a prompt."""

    source_id: str
    source_title: str
    section_title: str | None
    page: int | None
    text: str
    token_count: int


def chunk_sources(
    sources: Iterable[SourceText],
    config: ChunkingConfig | None = None,
    encoder: TextEncoder | None = None,
) -> list[Passage]:
    """Passages of every section of every source, in order. Tokens are counted with
    `encoder` (the model's tokenizer) when given, else estimated from characters."""
    config = config or ChunkingConfig()
    count = encoder_token_counter(encoder) if encoder is not None else estimate_tokens
    return [
        Passage(source.source_id, source.title, section.title, section.page, text, tokens)
        for source in sources
        for section in source.sections
        for text, tokens in _chunk_section(section, config, count)
    ]


def _chunk_section(
    section: Section, config: ChunkingConfig, count: TokenCounter
) -> list[tuple[str, int]]:
    limit = config.max_tokens
    sentences = split_sentences(section.text)
    pieces = [piece for sentence in sentences for piece in _fit(sentence, count, limit)]
    sizes = [count(piece.separator + piece.text) for piece in pieces]
    chunks, start = [], 0
    while start < len(pieces):
        end, total = start + 1, sizes[start]
        while end < len(pieces) and total + sizes[end] <= limit:
            total += sizes[end]
            end += 1
        text = join_sentences(pieces[start:end])
        # The sum of the pieces' counts can miss by a token where they merge when joined.
        while end - start > 1 and count(text) > limit:
            end -= 1
            text = join_sentences(pieces[start:end])
        chunks.append((text, count(text)))
        if end == len(pieces):
            break
        start = _next_start(start, end, sizes, config)
    return chunks


def _next_start(start: int, end: int, sizes: list[int], config: ChunkingConfig) -> int:
    """Where the next passage begins: `overlap_sentences` back from `end`, fewer when the
    overlap would leave no room for the next new sentence."""
    next_start = max(end - config.overlap_sentences, start + 1)
    while next_start < end and sum(sizes[next_start : end + 1]) > config.max_tokens:
        next_start += 1
    return next_start


def _fit(sentence: Sentence, count: TokenCounter, limit: int) -> list[Sentence]:
    """The sentence itself, or pieces of it that each fit the limit."""
    if count(sentence.text) <= limit:
        return [sentence]
    texts: list[str] = []
    for clause in _CLAUSE.findall(sentence.text):
        for part in _cut_characters(clause, count, limit):
            if texts and count((texts[-1] + part).strip()) <= limit:
                texts[-1] += part
            else:
                texts.append(part)
    pieces, separator = [], sentence.separator
    for text in texts:
        if text.strip():
            pieces.append(Sentence(text.strip(), separator))
        # A piece that ended in a space is joined to the next one by a space, as it was.
        separator = " " if text[-1].isspace() else ""
    return pieces


def _cut_characters(text: str, count: TokenCounter, limit: int) -> list[str]:
    """Split text into the longest prefixes that fit the limit (binary search on length)."""
    parts = []
    while text:
        low, high = 1, len(text)
        while low < high:
            middle = (low + high + 1) // 2
            if count(text[:middle]) <= limit:
                low = middle
            else:
                high = middle - 1
        parts.append(text[:low])
        text = text[low:]
    return parts
