"""Searching passages: BM25 over jieba/English terms, optionally fused with dense vectors.

BM25 comes from bm25s rather than rank-bm25: both install here, but bm25s scores from a
sparse matrix built once (numpy only), which answers a query over thousands of passages in
milliseconds where rank-bm25 loops over every document in Python, and bm25s is maintained
(rank-bm25's last release is from 2022). Passages and, with an embedder, their unit vectors
stay in memory: an index over one conversation's sources is small.
"""

import logging
from collections.abc import Iterable, Sequence

import bm25s
import numpy as np

from tome.assistant.retrieval.chunking import ChunkingConfig, Passage, chunk_sources
from tome.assistant.retrieval.citations import Hit
from tome.assistant.retrieval.fusion import Embedder, embed_normalized, reciprocal_rank_fusion
from tome.assistant.retrieval.sources import SourceText
from tome.assistant.retrieval.terms import search_terms
from tome.assistant.retrieval.token_count import TextEncoder
from tome.errors import InvalidRequestError

# bm25s sets its own logger to DEBUG, which would print a line for every index built.
logging.getLogger("bm25s").setLevel(logging.WARNING)


class PassageIndex:
    """Passages and what finds them again. Build once per set of sources; search often."""

    def __init__(self, passages: Sequence[Passage], embedder: Embedder | None = None) -> None:
        if not passages:
            raise InvalidRequestError("nothing to search: the sources hold no text")
        self.passages = list(passages)
        self._bm25 = bm25s.BM25()
        self._bm25.index([search_terms(p.text) for p in self.passages], show_progress=False)
        self._embedder = embedder
        self._vectors = (
            embed_normalized(embedder, [p.text for p in self.passages]) if embedder else None
        )

    @classmethod
    def from_sources(
        cls,
        sources: Iterable[SourceText],
        config: ChunkingConfig | None = None,
        encoder: TextEncoder | None = None,
        embedder: Embedder | None = None,
    ) -> "PassageIndex":
        return cls(chunk_sources(sources, config, encoder), embedder)

    def search(self, query: str, k: int = 5) -> list[Hit]:
        """The best `k` passages, best first, numbered for citation from 1. Scores are
        BM25's, or with an embedder the fused reciprocal-rank scores. Without an embedder,
        passages sharing no term with the query are never returned."""
        if not query.strip():
            raise InvalidRequestError("the search query is empty")
        if k < 1:
            raise InvalidRequestError(f"k must be at least 1, got {k}")
        lexical = self._bm25_scores(query)
        lexical_ranking = [i for i in _best_first(lexical) if lexical[i] > 0]
        if self._vectors is None:
            ranking, scores = lexical_ranking, lexical
        else:
            query_vector = embed_normalized(self._embedder, [query])[0]
            dense_ranking = _best_first(self._vectors @ query_vector)
            scores = reciprocal_rank_fusion([lexical_ranking, dense_ranking], len(self.passages))
            ranking = _best_first(scores)
        return [
            Hit(self.passages[i], float(scores[i]), number)
            for number, i in enumerate(ranking[:k], start=1)
        ]

    def _bm25_scores(self, query: str) -> np.ndarray:
        term_ids = self._bm25.get_tokens_ids(search_terms(query))
        if not term_ids:
            return np.zeros(len(self.passages), dtype=np.float32)
        return self._bm25.get_scores_from_ids(term_ids)


def _best_first(scores: np.ndarray) -> list[int]:
    """Indices by descending score; ties keep document order."""
    return np.argsort(-scores, kind="stable").tolist()
