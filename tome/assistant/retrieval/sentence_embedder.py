"""Dense vectors for retrieval from a sentence-transformers model (all-MiniLM-L6-v2, bge,
e5, ...), so a question worded unlike the passage that answers it is still found.

sentence-transformers is an optional dependency (the `embeddings` extra). It is imported
when the embedder is made, so a missing install fails at start with one clear error; the
model itself loads on the first texts to embed, so a server or chat that never needs
retrieval never pays for it.
"""

import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from tome.errors import ModelLoadError

INSTALL_HINT = 'pip install -e ".[embeddings]"'
BATCH_SIZE = 64


class EmbeddingModelError(ModelLoadError):
    """sentence-transformers is missing, or the embedding model cannot be loaded."""


class SentenceEmbedder:
    """An `Embedder`: unit-length float32 vectors from a sentence-transformers model, given
    by a local folder or a Hub id; `device` None lets sentence-transformers pick (a GPU
    when there is one)."""

    def __init__(self, name_or_path: str, device: str | None = None) -> None:
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError as exc:
            raise EmbeddingModelError(
                f"embeddings need sentence-transformers, which is not installed: {INSTALL_HINT}"
            ) from exc
        self.name_or_path = name_or_path
        self.device = device
        self._model_class = SentenceTransformer
        self._model: Any = None
        self._loading = threading.Lock()

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """One row per text, in order."""
        vectors = self._loaded().encode(
            list(texts),
            batch_size=BATCH_SIZE,
            show_progress_bar=False,
            convert_to_numpy=True,
            normalize_embeddings=True,
        )
        return np.asarray(vectors, dtype=np.float32)

    def _loaded(self) -> Any:
        with self._loading:
            if self._model is None:
                self._model = self._load()
            return self._model

    def _load(self) -> Any:
        try:
            return self._model_class(self.name_or_path, device=self.device)
        except (OSError, ValueError, RuntimeError) as exc:
            raise EmbeddingModelError(
                f"cannot load the embedding model {self.name_or_path!r}: {exc}"
            ) from exc
