"""Named context cache: a pinned prefix serves later requests without its prefill, outputs
stay equal to transformers', pinned blocks survive pressure on the pool and count against
it, and listing, refresh, deletion and expiry behave, with clear errors for bad names."""

import asyncio
import random

import pytest

from tests.reference import load_reference, reference_greedy
from tome import LLM, AsyncEngine, EngineConfig, SamplingParams
from tome.errors import ContextCacheNotFoundError, InvalidRequestError, KVCacheCapacityError

BLOCK = 16
BOOK_TOKENS = 200  # 12 full blocks and a partial one
POOL_BLOCKS = 40


def random_ids(n: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(3, 49152) for _ in range(n)]


BOOK = random_ids(BOOK_TOKENS, seed=1)
QUESTION = random_ids(9, seed=2)


def greedy(max_tokens: int = 6) -> SamplingParams:
    return SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)


@pytest.fixture
def llm(tiny_llama):
    llm = LLM(str(tiny_llama), kv_cache_memory=POOL_BLOCKS * BLOCK * kv_bytes_per_token())
    assert llm.engine.block_manager.num_blocks == POOL_BLOCKS
    return llm


def kv_bytes_per_token() -> int:
    # Tiny Llama of tests/conftest.py: 2 layers, 2 KV heads of 16, K and V in float32.
    return 2 * 2 * 2 * 16 * 4


@pytest.fixture(scope="module")
def expected(tiny_llama):
    return reference_greedy(load_reference(tiny_llama), BOOK + QUESTION, 6)[0]


def test_named_context_serves_requests_without_its_prefill(llm, expected):
    info = llm.cache_context("book", BOOK, ttl_seconds=60)
    assert info.num_tokens == BOOK_TOKENS
    assert info.num_pinned_tokens == BOOK_TOKENS // BLOCK * BLOCK

    by_name = llm.generate(QUESTION, greedy(), context="book")[0]
    by_tokens = llm.generate(BOOK + QUESTION, greedy())[0]

    for out in (by_name, by_tokens):
        assert out.prompt_token_ids == BOOK + QUESTION
        assert out.token_ids == expected
    assert by_name.num_cached_tokens == info.num_pinned_tokens
    # The first request also left its next full block in the (unpinned) prefix cache.
    assert by_tokens.num_cached_tokens == info.num_pinned_tokens + BLOCK


def test_pinned_blocks_survive_pressure_that_evicts_ordinary_cache(llm, expected):
    llm.cache_context("book", BOOK, ttl_seconds=60)
    # Unpinned prompts that together need every unpinned block, several times over: any
    # block not pinned is evicted and reused meanwhile.
    for seed in range(3, 9):
        llm.generate(random_ids(300, seed), greedy(2))
    out = llm.generate(QUESTION, greedy(), context="book")[0]
    assert out.token_ids == expected
    assert out.num_cached_tokens == BOOK_TOKENS // BLOCK * BLOCK


def test_pinned_blocks_count_against_the_pool(llm):
    free_before = llm.engine.block_manager.num_free_blocks
    llm.cache_context("book", BOOK, ttl_seconds=60)
    pinned_blocks = BOOK_TOKENS // BLOCK
    assert llm.engine.block_manager.num_free_blocks == free_before - pinned_blocks

    fits_alone = random_ids((POOL_BLOCKS - 2) * BLOCK, seed=3)
    with pytest.raises(KVCacheCapacityError, match="cached contexts"):
        llm.generate(fits_alone, greedy(1))
    # Other requests are unaffected, and the context's own continuation still fits.
    assert len(llm.generate(QUESTION, greedy(), context="book")[0].token_ids) == 6

    llm.delete_context("book")
    assert llm.engine.block_manager.num_free_blocks == free_before
    assert llm.generate(fits_alone, greedy(1))[0].finish_reason == "length"


def test_list_refresh_delete(llm):
    llm.cache_context("a", BOOK, ttl_seconds=60)
    llm.cache_context("b", BOOK[:100], ttl_seconds=60)
    assert sorted(c.name for c in llm.list_contexts()) == ["a", "b"]

    before = llm.engine.contexts.get("a").expires_at
    refreshed = llm.refresh_context("a", ttl_seconds=600)
    assert refreshed.expires_at > before + 500

    llm.delete_context("a")
    assert [c.name for c in llm.list_contexts()] == ["b"]
    with pytest.raises(ContextCacheNotFoundError, match="no cached context is named 'a'"):
        llm.generate(QUESTION, greedy(), context="a")
    with pytest.raises(ContextCacheNotFoundError):
        llm.delete_context("a")


def test_expired_context_releases_blocks_and_says_so(llm):
    now = [1000.0]
    llm.engine.contexts.clock = lambda: now[0]
    free_before = llm.engine.block_manager.num_free_blocks
    llm.cache_context("book", BOOK, ttl_seconds=5)
    now[0] += 4
    assert [c.name for c in llm.list_contexts()] == ["book"]
    now[0] += 2
    with pytest.raises(ContextCacheNotFoundError, match="'book' has expired"):
        llm.generate(QUESTION, greedy(), context="book")
    assert llm.list_contexts() == []
    assert llm.engine.block_manager.num_free_blocks == free_before
    # The name can be used again.
    assert llm.cache_context("book", BOOK, ttl_seconds=5).num_tokens == BOOK_TOKENS


def test_bad_context_requests_fail_alone(llm):
    llm.cache_context("book", BOOK, ttl_seconds=60)
    with pytest.raises(InvalidRequestError, match="exists already"):
        llm.cache_context("book", BOOK, ttl_seconds=60)
    with pytest.raises(InvalidRequestError, match="non-empty string"):
        llm.cache_context("", BOOK)
    with pytest.raises(InvalidRequestError, match="ttl_seconds"):
        llm.cache_context("other", BOOK, ttl_seconds=0)
    with pytest.raises(KVCacheCapacityError):
        llm.cache_context("huge", random_ids(POOL_BLOCKS * BLOCK, seed=4))
    assert [c.name for c in llm.list_contexts()] == ["book"]
    assert llm.generate(QUESTION, greedy(), context="book")[0].num_cached_tokens > 0


def test_async_engine_caches_and_uses_a_context(tiny_llama, expected):
    engine = AsyncEngine(EngineConfig(model=str(tiny_llama), kv_cache_memory=8 << 20))

    async def scenario():
        info = await engine.cache_context("book", BOOK, 60, request_id="pin")
        outputs = [o async for o in engine.generate(QUESTION, greedy(), "q", context="book")]
        names = await engine.call(lambda e: [c.name for c in e.contexts.all()])
        with pytest.raises(ContextCacheNotFoundError):
            await engine.call(lambda e: e.contexts.delete("missing"))
        return info, outputs[-1], names

    try:
        info, last, names = asyncio.run(asyncio.wait_for(scenario(), 120))
    finally:
        engine.shutdown()
    assert info.num_pinned_tokens == BOOK_TOKENS // BLOCK * BLOCK
    assert last.token_ids == expected
    assert last.num_cached_tokens == info.num_pinned_tokens
    assert names == ["book"]


def test_request_queued_before_a_pin_took_its_room_ends_with_an_error(llm):
    engine = llm.engine
    engine.cache_context("pin", "big", random_ids(30 * BLOCK, seed=5), ttl_seconds=60)
    engine.add_request("late", random_ids(20 * BLOCK, seed=6), greedy(1))
    engine.add_request("small", QUESTION, greedy(2))
    finished = {}
    for _ in range(100):
        for out in engine.step():
            if out.finished:
                finished[out.request_id] = out
        if not engine.has_unfinished():
            break
    assert finished["late"].finish_reason == "error"
    assert "cached contexts" in finished["late"].error
    assert finished["small"].finish_reason == "length"
    assert [c.name for c in llm.list_contexts()] == ["big"]
