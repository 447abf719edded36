"""Retrieval for sources too long for the window: sentence-aware chunking, BM25 search
(jieba for Chinese) with optional dense fusion, and numbered citations that map back to a
source's section and page."""

from tome.assistant.retrieval.chunking import ChunkingConfig, Passage, chunk_sources
from tome.assistant.retrieval.citations import (
    Citation,
    CitedContext,
    Hit,
    cited_numbers,
    format_context,
)
from tome.assistant.retrieval.fusion import Embedder, reciprocal_rank_fusion
from tome.assistant.retrieval.index import PassageIndex
from tome.assistant.retrieval.sentences import Sentence, split_sentences
from tome.assistant.retrieval.sources import Section, SourceText

__all__ = [
    "ChunkingConfig",
    "Citation",
    "CitedContext",
    "Embedder",
    "Hit",
    "Passage",
    "PassageIndex",
    "Section",
    "Sentence",
    "SourceText",
    "chunk_sources",
    "cited_numbers",
    "format_context",
    "reciprocal_rank_fusion",
    "split_sentences",
]
