"""Dense scores beside BM25: an embedder protocol and reciprocal rank fusion.

Any `Embedder` can be passed to the index; `sentence_embedder.py` is the one Tome uses
(`--embedding-model`).
Reciprocal rank fusion (Cormack et al., 2009) adds 1 / (k + rank) over the rankings a
passage appears in: it needs no calibration between BM25's unbounded scores and cosine
similarities, and k = 60 is the constant of the paper and of most search engines since.
"""

from collections.abc import Sequence
from typing import Protocol

import numpy as np

from tome.errors import TomeError

RRF_K = 60


class Embedder(Protocol):
    """Turns texts into vectors; similar meanings give vectors at small angles."""

    def embed(self, texts: Sequence[str]) -> Sequence[Sequence[float]]: ...


def embed_normalized(embedder: Embedder, texts: Sequence[str]) -> np.ndarray:
    """Unit-length float32 rows, so a dot product is the cosine similarity."""
    vectors = np.asarray(embedder.embed(texts), dtype=np.float32)
    if vectors.ndim != 2 or len(vectors) != len(texts):
        raise TomeError(f"the embedder gave {vectors.shape} for {len(texts)} texts")
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


def reciprocal_rank_fusion(rankings: Sequence[Sequence[int]], size: int) -> np.ndarray:
    """Fused score of each of `size` items, from rankings of item indices (best first).
    An item missing from a ranking gets nothing from it."""
    fused = np.zeros(size, dtype=np.float64)
    for ranking in rankings:
        ranks = np.arange(1, len(ranking) + 1, dtype=np.float64)
        fused[np.asarray(ranking, dtype=np.int64)] += 1.0 / (RRF_K + ranks)
    return fused
