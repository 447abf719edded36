"""The passage index cache: the second question over the same sources reuses the built index
(counted by the cache and by a spy on the index's constructor), other sources or other text
build anew, both bounds evict the least recently used, and prompts and hits are the same
with and without the cache, whose results are checked against transformers' own chat
template."""

import random
import threading
import time

import pytest

import tome.assistant.retrieval.index_cache as index_cache_module
from tome.assistant.assembly import assemble
from tome.assistant.documents import Section
from tome.assistant.retrieval import ChunkingConfig, PassageIndex, SourceText
from tome.assistant.retrieval.index_cache import IndexCache, IndexCacheConfig
from tome.errors import InvalidRequestError
from tome.loader.tokenizer import Tokenizer

WINDOW = 1024  # the tiny models' max_position_embeddings
ANSWER_BUDGET = 64
PLACES = ["harbour", "market", "bridge", "station", "library", "orchard", "mill", "school"]
CHUNKING = ChunkingConfig(max_tokens=64)


@pytest.fixture(scope="module")
def tokenizer(hf_tokenizer) -> Tokenizer:
    return Tokenizer(hf_tokenizer, frozenset())


def logbook(source_id: str, seed: int, needle: str = "The launch code is 4417.") -> SourceText:
    """Thirty pages of look-alike entries, too long for the window; page 17 holds `needle`."""
    rng = random.Random(seed)
    sections = []
    for page in range(1, 31):
        text = " ".join(
            f"On day {rng.randrange(1, 400)} the keeper counted {rng.randrange(2, 90)} boats "
            f"near the {rng.choice(PLACES)}."
            for _ in range(6)
        )
        if page == 17:
            text += f" {needle}"
        sections.append(Section(f"Chapter {1 + page // 10}", text, page))
    return SourceText(source_id, f"Logbook {source_id}", sections)


@pytest.fixture
def index_builds(monkeypatch) -> list[PassageIndex]:
    """Every PassageIndex the cache module builds, whatever the cache reports."""
    built: list[PassageIndex] = []

    class SpiedIndex(PassageIndex):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            built.append(self)

    monkeypatch.setattr(index_cache_module, "PassageIndex", SpiedIndex)
    return built


def ask(sources, question, tokenizer, cache=None, conversation=()):
    return assemble(
        sources, list(conversation), question, tokenizer, WINDOW, ANSWER_BUDGET, 128, cache
    )


def test_the_second_question_over_the_same_sources_reuses_the_index(tokenizer, index_builds):
    cache = IndexCache()
    book = logbook("log.pdf", seed=1)

    first = ask([book], "What is the launch code?", tokenizer, cache)
    conversation = [
        {"role": "user", "content": "What is the launch code?"},
        {"role": "assistant", "content": "4417 [1]."},
    ]
    # An equal copy of the source, as the server reads it back from storage per question.
    copy = SourceText(book.source_id, book.title, list(book.sections))
    second = ask([copy], "How many boats near the mill?", tokenizer, cache, conversation)

    assert first.mode == second.mode == "retrieval"
    assert len(index_builds) == 1
    stats = cache.stats
    assert (stats.builds, stats.hits, stats.indexes) == (1, 1, 1)
    assert stats.passage_chars == sum(len(p.text) for p in index_builds[0].passages)
    assert cache.index_for([copy], ChunkingConfig(128), tokenizer) is index_builds[0]


def test_other_sources_text_chunking_or_tokenizer_build_a_new_index(
    tokenizer, hf_tokenizer, index_builds
):
    cache = IndexCache()
    book, other = logbook("log.pdf", seed=1), logbook("other.pdf", seed=2)
    edited = logbook("log.pdf", seed=1, needle="The launch code is 9021.")
    second_tokenizer = Tokenizer(hf_tokenizer, frozenset())

    cache.index_for([book], CHUNKING, tokenizer)
    for sources, chunking, encoder in [
        ([other], CHUNKING, tokenizer),
        ([book, other], CHUNKING, tokenizer),
        ([other, book], CHUNKING, tokenizer),
        ([edited], CHUNKING, tokenizer),
        ([book], ChunkingConfig(max_tokens=32), tokenizer),
        ([book], CHUNKING, second_tokenizer),
        ([book], CHUNKING, None),
    ]:
        builds = len(index_builds)
        cache.index_for(sources, chunking, encoder)
        assert len(index_builds) == builds + 1
    assert cache.stats.builds == 8
    assert cache.stats.hits == 0


def test_eviction_keeps_the_most_recently_used_within_the_count(tokenizer, index_builds):
    cache = IndexCache(IndexCacheConfig(max_indexes=2))
    books = [logbook(f"log{n}.pdf", seed=n) for n in range(3)]

    cache.index_for([books[0]], CHUNKING, tokenizer)
    cache.index_for([books[1]], CHUNKING, tokenizer)
    cache.index_for([books[0]], CHUNKING, tokenizer)  # now the most recently used
    cache.index_for([books[2]], CHUNKING, tokenizer)  # evicts books[1]
    assert (cache.stats.indexes, cache.stats.evictions) == (2, 1)

    builds = len(index_builds)
    cache.index_for([books[0]], CHUNKING, tokenizer)
    assert len(index_builds) == builds
    cache.index_for([books[1]], CHUNKING, tokenizer)
    assert len(index_builds) == builds + 1


def test_eviction_keeps_the_passage_characters_within_the_bound(tokenizer, index_builds):
    books = [logbook(f"log{n}.pdf", seed=n) for n in range(3)]
    sizes = [
        sum(len(p.text) for p in PassageIndex.from_sources([b], CHUNKING, tokenizer).passages)
        for b in books
    ]
    cache = IndexCache(IndexCacheConfig(max_passage_chars=sizes[1] + sizes[2]))

    for book in books:
        cache.index_for([book], CHUNKING, tokenizer)

    stats = cache.stats
    assert (stats.indexes, stats.evictions) == (2, 1)
    assert stats.passage_chars == sizes[1] + sizes[2]

    small = IndexCache(IndexCacheConfig(max_passage_chars=min(sizes) - 1))
    index = small.index_for([books[0]], CHUNKING, tokenizer)
    assert index is not None
    assert small.stats.indexes == 0


@pytest.mark.parametrize(
    "question", ["What is the launch code?", "How many boats near the harbour on day 12?"]
)
def test_prompts_and_hits_are_the_same_with_and_without_the_cache(
    tokenizer, hf_tokenizer, question
):
    sources = [logbook("a.pdf", seed=1), logbook("b.pdf", seed=2)]
    cache = IndexCache()

    uncached = ask(sources, question, tokenizer)
    cached = [ask(sources, question, tokenizer, cache) for _ in range(2)]

    for prompt in cached:
        assert prompt.messages == uncached.messages
        assert prompt.prompt_token_ids == uncached.prompt_token_ids
        assert prompt.citations == uncached.citations
    reference = hf_tokenizer.apply_chat_template(
        uncached.messages, add_generation_prompt=True, return_dict=False
    )
    assert uncached.prompt_token_ids == reference
    index = cache.index_for(sources, ChunkingConfig(128), tokenizer)
    fresh = PassageIndex.from_sources(sources, ChunkingConfig(128), tokenizer)
    assert index.search(question, k=10) == fresh.search(question, k=10)


def test_sources_without_text_give_no_index_and_full_mode_skips_the_cache(tokenizer):
    cache = IndexCache()
    empty = SourceText("empty.txt", "Empty", [Section(None, "   ", None)])

    assert cache.index_for([empty], CHUNKING, tokenizer) is None
    prompt = ask(
        [SourceText("n.txt", "Note", [Section(None, "Tea at four.")])], "When?", tokenizer, cache
    )

    assert prompt.mode == "full"
    assert cache.stats.indexes == 0


def test_threads_asking_for_the_same_index_at_once_share_one_build(tokenizer, index_builds):
    class SlowEmbedder:
        """Keeps the first build going while the other threads ask."""

        def embed(self, texts):
            time.sleep(0.2)
            return [[1.0, float(len(text))] for text in texts]

    cache = IndexCache(embedder=SlowEmbedder())
    book = logbook("log.pdf", seed=1)
    start = threading.Barrier(4)
    found = []

    def ask_for_index() -> None:
        start.wait()
        found.append(cache.index_for([book], CHUNKING, tokenizer))

    threads = [threading.Thread(target=ask_for_index) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len(index_builds) == 1
    assert all(index is index_builds[0] for index in found)
    assert (cache.stats.builds, cache.stats.hits) == (1, 3)


def test_bounds_must_be_positive():
    with pytest.raises(InvalidRequestError, match="max_indexes"):
        IndexCacheConfig(max_indexes=0)
    with pytest.raises(InvalidRequestError, match="max_passage_chars"):
        IndexCacheConfig(max_passage_chars=0)
