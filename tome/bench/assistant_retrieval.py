"""Retrieval over a long Chinese book: chunking, building the BM25 index, and answering
questions whose answer sentences were planted in the text.

A planted fact names two everyday nouns that the rest of the book also uses, each on its
own, so BM25 has to find the one passage where both meet the fact's own words."""

import random
import statistics
import time
from dataclasses import dataclass

import numpy as np

from tome.assistant.documents import Section
from tome.assistant.retrieval import ChunkingConfig, PassageIndex, SourceText, chunk_sources
from tome.assistant.retrieval.token_count import TextEncoder
from tome.bench.assistant_text import sentences
from tome.eval.word_lists import CHINESE_WORDS

TOP_K = 5
CHAPTER_CHARS = 20_000


@dataclass(frozen=True)
class PlantedFact:
    sentence: str
    question: str


@dataclass(frozen=True)
class RetrievalResult:
    chars: int
    passages: int
    chunk_seconds: float
    index_seconds: float
    query_seconds: list[float]
    recall_at_k: float  # share of questions whose planted passage is in the top TOP_K

    @property
    def median_query_ms(self) -> float:
        return statistics.median(self.query_seconds) * 1000

    @property
    def p95_query_ms(self) -> float:
        return float(np.percentile(self.query_seconds, 95)) * 1000


def run_retrieval(
    encoder: TextEncoder, chars: int, questions: int = 50, seed: int = 0
) -> RetrievalResult:
    """Chunk a `chars`-character book with `questions` planted facts as the assistant does
    (the model's tokenizer counts tokens), index it, and ask each fact's question once."""
    book, facts = chinese_book(chars, questions, seed)
    start = time.perf_counter()
    passages = chunk_sources([book], ChunkingConfig(), encoder)
    chunked = time.perf_counter()
    # jieba loads its dictionary on first use: once per process, not once per index.
    PassageIndex(passages[:1])
    indexing = time.perf_counter()
    index = PassageIndex(passages)
    indexed = time.perf_counter()
    query_seconds, found = [], 0
    for fact in facts:
        query_start = time.perf_counter()
        hits = index.search(fact.question, k=TOP_K)
        query_seconds.append(time.perf_counter() - query_start)
        found += any(fact.sentence in hit.passage.text for hit in hits)
    return RetrievalResult(
        chars=sum(len(section.text) for section in book.sections),
        passages=len(passages),
        chunk_seconds=chunked - start,
        index_seconds=indexed - indexing,
        query_seconds=query_seconds,
        recall_at_k=found / len(facts),
    )


def chinese_book(chars: int, facts: int, seed: int = 0) -> tuple[SourceText, list[PlantedFact]]:
    """About `chars` characters of Chinese in chapters, with `facts` facts planted at random
    sentence boundaries; the same seed gives the same book."""
    rng = random.Random(f"retrieval/{seed}")
    text: list[str] = []
    length = 0
    for sentence in sentences("zh", rng):
        if length >= chars:
            break
        text.append(sentence)
        length += len(sentence)
    planted = _facts(facts, rng)
    for position, fact in zip(
        sorted(rng.sample(range(len(text) + 1), facts)), planted, strict=True
    ):
        text.insert(position, fact.sentence)
    return SourceText(f"chinese-book-{seed}", "长篇测试书", _chapters(text)), planted


def _facts(count: int, rng: random.Random) -> list[PlantedFact]:
    keys: set[tuple[str, str]] = set()
    while len(keys) < count:
        keys.add(tuple(rng.sample(CHINESE_WORDS, 2)))
    return [
        PlantedFact(
            f"「{a}{b}」的秘密编号是{rng.randint(10**6, 10**7 - 1)}。",
            f"「{a}{b}」的秘密编号是多少？",
        )
        for a, b in sorted(keys)
    ]


def _chapters(text: list[str]) -> list[Section]:
    chapters: list[Section] = []
    current: list[str] = []
    length = 0
    for sentence in text:
        current.append(sentence)
        length += len(sentence)
        if length >= CHAPTER_CHARS:
            chapters.append(Section(f"第{len(chapters) + 1}章", "".join(current)))
            current, length = [], 0
    if current:
        chapters.append(Section(f"第{len(chapters) + 1}章", "".join(current)))
    return chapters
