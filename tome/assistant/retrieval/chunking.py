"""Cutting sources into passages of at most `max_tokens` tokens, on sentence boundaries.

Consecutive passages of a section share their last/first `overlap_sentences` sentences, so
a fact told across a boundary is still whole in one of them. A sentence is cut only when it
alone exceeds the limit: at a comma or a space if it can be, else between characters.

Counting dominates the work (a 2-million-character book once took minutes, one tokenizer
call per piece), so a section's sentences are counted in one batch, then the passages
planned from those counts in another. The longest piece of an over-long sentence that fits
is searched for from a guess, assuming, as any such search must, that a text never has fewer
tokens than its own beginning.
"""

import re
from bisect import bisect_right
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from itertools import accumulate

from tome.assistant.retrieval.sentences import Sentence, join_sentences, split_sentences
from tome.assistant.retrieval.sources import Section, SourceText
from tome.assistant.retrieval.token_count import TextEncoder, TokenCounter, token_counter
from tome.errors import InvalidRequestError

# Pieces of an over-long sentence: runs ending after a comma or whitespace.
_CLAUSE = re.compile(r"[^\s，、,：:]+[\s，、,：:]*|[\s，、,：:]+")
# Passages counted in one batch; planning further ahead wastes the counts after a passage
# whose pieces merge into more tokens than their sum.
_PLANNED_PASSAGES = 64


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
    counter = token_counter(encoder)
    return [
        Passage(source.source_id, source.title, section.title, section.page, text, tokens)
        for source in sources
        for section in source.sections
        for text, tokens in _chunk_section(section, config, counter)
    ]


def _chunk_section(
    section: Section, config: ChunkingConfig, counter: TokenCounter
) -> list[tuple[str, int]]:
    limit = config.max_tokens
    sentences = split_sentences(section.text)
    # Alone, to know whether a sentence fits; with its separator, for its size in a passage.
    counter.count_many([s.text for s in sentences] + [s.separator + s.text for s in sentences])
    pieces = [piece for sentence in sentences for piece in _fit(sentence, counter, limit)]
    sizes = counter.count_many([piece.separator + piece.text for piece in pieces])
    chunks: list[tuple[str, int]] = []
    start = 0
    while start < len(pieces):
        spans = _planned_spans(start, sizes, config)
        texts = [join_sentences(pieces[first:end]) for first, end in spans]
        for (first, end), text, tokens in zip(spans, texts, counter.count_many(texts), strict=True):
            if tokens > limit and end - first > 1:
                # The sum of the pieces' counts can miss by a token where they merge when
                # joined: drop pieces until the passage fits, then plan again from there.
                end, text, tokens = _shrink(pieces, first, end, counter, limit)
                chunks.append((text, tokens))
                break
            chunks.append((text, tokens))
        start = _next_start(first, end, sizes, config) if end < len(pieces) else len(pieces)
    return chunks


def _planned_spans(start: int, sizes: list[int], config: ChunkingConfig) -> list[tuple[int, int]]:
    """(first, end) pieces of the next passages, each as long as the sum of its pieces'
    sizes allows, up to the section's end or `_PLANNED_PASSAGES` passages."""
    spans: list[tuple[int, int]] = []
    while len(spans) < _PLANNED_PASSAGES:
        end, total = start + 1, sizes[start]
        while end < len(sizes) and total + sizes[end] <= config.max_tokens:
            total += sizes[end]
            end += 1
        spans.append((start, end))
        if end == len(sizes):
            break
        start = _next_start(start, end, sizes, config)
    return spans


def _shrink(
    pieces: list[Sentence], first: int, end: int, counter: TokenCounter, limit: int
) -> tuple[int, str, int]:
    text = join_sentences(pieces[first:end])
    while end - first > 1 and counter(text) > limit:
        end -= 1
        text = join_sentences(pieces[first:end])
    return end, text, counter(text)


def _next_start(start: int, end: int, sizes: list[int], config: ChunkingConfig) -> int:
    """Where the next passage begins: `overlap_sentences` back from `end`, fewer when the
    overlap would leave no room for the next new sentence."""
    next_start = max(end - config.overlap_sentences, start + 1)
    while next_start < end and sum(sizes[next_start : end + 1]) > config.max_tokens:
        next_start += 1
    return next_start


def _fit(sentence: Sentence, counter: TokenCounter, limit: int) -> list[Sentence]:
    """The sentence itself, or pieces of it that each fit the limit."""
    if counter(sentence.text) <= limit:
        return [sentence]
    pieces, separator = [], sentence.separator
    for text in _clause_runs(sentence.text, counter, limit):
        if text.strip():
            pieces.append(Sentence(text.strip(), separator))
        # A piece that ended in a space is joined to the next one by a space, as it was.
        separator = " " if text[-1].isspace() else ""
    return pieces


def _clause_runs(text: str, counter: TokenCounter, limit: int) -> list[str]:
    """The text's clauses, each cut between characters when it alone is too long, joined
    into runs as long as fit the limit."""
    chars_per_token = len(text) / counter(text)
    # bounds[i]: where the i-th clause (or cut part of one) begins.
    bounds = [0, *accumulate(len(clause) for clause in _CLAUSE.findall(text))]
    runs: list[str] = []
    first = 0
    while first < len(bounds) - 1:
        start = bounds[first]
        clause = text[start : bounds[first + 1]]
        if counter(clause) > limit:
            cuts = _cut_characters(clause, counter, limit, chars_per_token)
            bounds[first + 1 : first + 1] = [start + cut for cut in accumulate(cuts[:-1])]
            head = text[start : bounds[first + 1]]
            if runs and counter((runs[-1] + head).strip()) <= limit:
                runs[-1] += head
                first += 1
                continue
        length = _longest_run(text, bounds, first, counter, limit, chars_per_token)
        runs.append(text[start : bounds[first + length]])
        first += length
    return runs


def _longest_run(
    text: str,
    bounds: list[int],
    first: int,
    counter: TokenCounter,
    limit: int,
    chars_per_token: float,
) -> int:
    """How many parts from the `first` fit the limit together (stripped), at least one."""
    start = bounds[first]

    def fits(parts: int) -> bool:
        return counter(text[start : bounds[first + parts]].strip()) <= limit

    reach = bisect_right(bounds, start + limit * chars_per_token) - 1 - first
    return _longest_fit(fits, 1, len(bounds) - 1 - first, reach)


def _cut_characters(
    text: str, counter: TokenCounter, limit: int, chars_per_token: float
) -> list[int]:
    """Lengths of the longest successive prefixes of text that fit the limit."""
    lengths = []
    while text:
        lengths.append(_longest_prefix(text, counter, limit, chars_per_token))
        text = text[lengths[-1] :]
    return lengths


def _longest_prefix(text: str, counter: TokenCounter, limit: int, chars_per_token: float) -> int:
    """Characters of the longest beginning of text that fits the limit, at least one."""

    def fits(chars: int) -> bool:
        return counter(text[:chars]) <= limit

    return _longest_fit(fits, 1, len(text), int(limit * chars_per_token))


def _longest_fit(fits: Callable[[int], bool], low: int, high: int, guess: int) -> int:
    """The largest n in [low, high] with fits(n), fits(low) taken as given and fits assumed
    to turn false at most once. Steps from `guess` double until the answer is bracketed,
    then halve, so a guess one off costs two probes."""
    if low >= high:
        return low
    fitting, failing = low, high + 1
    probe, step = min(max(guess, low + 1), high), 1
    if fits(probe):
        fitting = probe
        while fitting + step < failing and fits(fitting + step):
            fitting += step
            step *= 2
        failing = min(failing, fitting + step)
    else:
        failing = probe
        while failing - step > fitting and not fits(failing - step):
            failing -= step
            step *= 2
        fitting = max(fitting, failing - step)
    while failing - fitting > 1:
        middle = (fitting + failing) // 2
        if fits(middle):
            fitting = middle
        else:
            failing = middle
    return fitting
