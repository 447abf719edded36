"""Built passage indexes kept between questions, so a book is chunked, indexed and embedded
once per process rather than once per question.

Stored sources never change, so an index is found again by what it was built from: each
source's id, title and a SHA-256 of its sections (titles, pages, text), the chunking config,
the tokenizer that counted the passages' tokens and the cache's one embedder. Hashing a
two-million-character book takes milliseconds; chunking and indexing it take seconds.
The cache is bounded by the number of indexes and by their passages' characters together,
and drops the least recently used first.
"""

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

from tome.assistant.retrieval.chunking import ChunkingConfig, chunk_sources
from tome.assistant.retrieval.fusion import Embedder
from tome.assistant.retrieval.index import PassageIndex
from tome.assistant.retrieval.sources import SourceText
from tome.assistant.retrieval.token_count import TextEncoder
from tome.errors import InvalidRequestError


@dataclass(frozen=True)
class IndexCacheConfig:
    max_indexes: int = 32
    max_passage_chars: int = 64_000_000  # about thirty long books

    def __post_init__(self) -> None:
        if self.max_indexes < 1:
            raise InvalidRequestError(f"max_indexes must be at least 1, got {self.max_indexes}")
        if self.max_passage_chars < 1:
            raise InvalidRequestError(
                f"max_passage_chars must be at least 1, got {self.max_passage_chars}"
            )


@dataclass(frozen=True)
class IndexCacheStats:
    hits: int
    builds: int
    evictions: int
    indexes: int
    passage_chars: int


@dataclass(frozen=True)
class _Entry:
    index: PassageIndex
    passage_chars: int
    # Keeps the tokenizer alive while its id() is part of the key, so no other object can
    # take that id and be mistaken for it.
    encoder: TextEncoder | None


_Key = Hashable


def build_index(
    sources: Sequence[SourceText],
    config: ChunkingConfig,
    encoder: TextEncoder | None = None,
    embedder: Embedder | None = None,
) -> PassageIndex | None:
    """The sources' passages indexed, or None when they hold no text."""
    passages = chunk_sources(sources, config, encoder)
    return PassageIndex(passages, embedder) if passages else None


class IndexCache:
    """Passage indexes by sources, chunking and tokenizer; safe to share between threads.
    Two threads asking for the same index at once build it once."""

    def __init__(
        self, config: IndexCacheConfig | None = None, embedder: Embedder | None = None
    ) -> None:
        self.config = config or IndexCacheConfig()
        self.embedder = embedder
        self._entries: OrderedDict[_Key, _Entry] = OrderedDict()
        self._building: dict[_Key, threading.Lock] = {}
        self._lock = threading.Lock()
        self._hits = self._builds = self._evictions = 0

    def index_for(
        self,
        sources: Sequence[SourceText],
        config: ChunkingConfig,
        encoder: TextEncoder | None = None,
    ) -> PassageIndex | None:
        """The index of the sources' passages (the same object while it stays cached), or
        None when they hold no text."""
        key = _key(sources, config, encoder)
        with self._lock:
            entry = self._lookup(key)
            if entry is not None:
                return entry.index
            building = self._building.setdefault(key, threading.Lock())
        with building:
            try:
                with self._lock:
                    entry = self._lookup(key)  # built by the thread this one waited for
                if entry is not None:
                    return entry.index
                index = build_index(sources, config, encoder, self.embedder)
                with self._lock:
                    self._builds += 1
                    if index is not None:
                        self._store(key, _Entry(index, _passage_chars(index), encoder))
                return index
            finally:
                with self._lock:
                    self._building.pop(key, None)

    @property
    def stats(self) -> IndexCacheStats:
        with self._lock:
            chars = sum(entry.passage_chars for entry in self._entries.values())
            return IndexCacheStats(
                self._hits, self._builds, self._evictions, len(self._entries), chars
            )

    def _lookup(self, key: _Key) -> _Entry | None:
        entry = self._entries.get(key)
        if entry is not None:
            self._entries.move_to_end(key)
            self._hits += 1
        return entry

    def _store(self, key: _Key, entry: _Entry) -> None:
        """Keep the entry, then drop the least recently used until both bounds hold; an
        index larger than the whole character bound is used once and not kept."""
        if entry.passage_chars > self.config.max_passage_chars:
            return
        self._entries[key] = entry
        total = sum(kept.passage_chars for kept in self._entries.values())
        while len(self._entries) > self.config.max_indexes or total > self.config.max_passage_chars:
            _, dropped = self._entries.popitem(last=False)
            total -= dropped.passage_chars
            self._evictions += 1


def _key(
    sources: Sequence[SourceText], config: ChunkingConfig, encoder: TextEncoder | None
) -> _Key:
    contents = tuple((source.source_id, _content_hash(source)) for source in sources)
    return contents, config, None if encoder is None else id(encoder)


def _content_hash(source: SourceText) -> str:
    """SHA-256 of everything of a source that ends up in its passages; each part is
    length-prefixed, so no two different sources hash the same parts."""
    digest = hashlib.sha256()
    parts = [source.title]
    for section in source.sections:
        parts += [repr((section.title, section.page)), section.text]
    for part in parts:
        encoded = part.encode("utf-8", "surrogatepass")
        digest.update(len(encoded).to_bytes(8, "little"))
        digest.update(encoded)
    return digest.hexdigest()


def _passage_chars(index: PassageIndex) -> int:
    return sum(len(passage.text) for passage in index.passages)
