"""BlockManager on Sequence objects built by hand: reference counts, prefix-cache hits and
misses, the last prompt token, LRU eviction of cached free blocks and consecutive blocks.

Block size 4 throughout, so every expectation can be counted on fingers."""

import itertools

from tome.engine.block_manager import BlockManager
from tome.engine.detokenizer import IncrementalDetokenizer
from tome.engine.sampling_params import SamplingParams
from tome.engine.sequence import Sequence

BS = 4
_ids = itertools.count()


class StubTokenizer:
    """The detokenizer is not under test here; it only needs something to call."""

    def decode(self, ids, skip_special_tokens=True) -> str:
        return ""


def make_seq(tokens: list[int], priority: int = 0) -> Sequence:
    params = SamplingParams()
    detokenizer = IncrementalDetokenizer(StubTokenizer(), list(tokens), params)
    return Sequence(f"r{next(_ids)}", list(tokens), params, detokenizer, priority=priority)


def computed(bm: BlockManager, seq: Sequence, num_tokens: int | None = None) -> Sequence:
    """What the engine does after a forward pass: mark tokens computed, name full blocks."""
    seq.num_computed_tokens = seq.num_tokens if num_tokens is None else num_tokens
    bm.register_computed(seq)
    return seq


def admitted(bm: BlockManager, tokens: list[int]) -> Sequence:
    seq = make_seq(tokens)
    assert bm.allocate(seq)
    return seq


A = list(range(100, 110))  # 10 tokens: two full blocks and a partial one


def test_allocate_gives_distinct_blocks_and_free_returns_them():
    bm = BlockManager(8, BS, enable_prefix_caching=True)
    seq = admitted(bm, A)
    assert len(seq.block_table) == 3  # ceil(10 / 4)
    assert len(set(seq.block_table)) == 3
    assert all(bm.blocks[b].ref_count == 1 for b in seq.block_table)
    assert bm.num_free_blocks == 5
    assert seq.num_computed_tokens == 0
    bm.free(seq)
    assert bm.num_free_blocks == 8
    assert seq.block_table == []
    assert all(block.ref_count == 0 for block in bm.blocks)


def test_allocate_refuses_without_changing_anything():
    bm = BlockManager(2, BS, enable_prefix_caching=True)
    seq = make_seq(list(range(9)))  # needs 3 blocks
    assert not bm.allocate(seq)
    assert seq.block_table == []
    assert bm.num_free_blocks == 2
    assert all(block.ref_count == 0 for block in bm.blocks)


def test_append_slot_adds_a_block_only_at_a_block_boundary():
    bm = BlockManager(3, BS, enable_prefix_caching=True)
    seq = admitted(bm, list(range(7)))  # 2 blocks, room for 8 tokens
    seq.append_token(7)  # 8 tokens: still fits
    assert bm.append_slot(seq)
    assert len(seq.block_table) == 2
    seq.append_token(8)  # 9 tokens: a third block
    assert bm.append_slot(seq)
    assert len(seq.block_table) == 3
    assert bm.num_free_blocks == 0
    for t in range(9, 13):
        seq.append_token(t)
    assert not bm.append_slot(seq)  # 13 tokens need a 4th block and none is free
    assert len(seq.block_table) == 3


def test_equal_prefix_shares_computed_blocks_with_reference_counts():
    bm = BlockManager(16, BS, enable_prefix_caching=True)
    a = computed(bm, admitted(bm, A))
    b = admitted(bm, [*A[:8], 7, 7, 7])
    assert b.block_table[:2] == a.block_table[:2]
    assert b.block_table[2] not in a.block_table
    assert [bm.blocks[i].ref_count for i in a.block_table] == [2, 2, 1]
    assert b.num_computed_tokens == 8
    assert b.num_cached_tokens == 8
    free_before = bm.num_free_blocks
    bm.free(a)  # the shared blocks stay with b
    assert bm.num_free_blocks == free_before + 1
    assert [bm.blocks[i].ref_count for i in b.block_table] == [1, 1, 1]
    bm.free(b)
    assert bm.num_free_blocks == 16


def test_different_prefix_gets_no_hit_and_hashes_chain():
    bm = BlockManager(16, BS, enable_prefix_caching=True)
    computed(bm, admitted(bm, A))
    first_differs = admitted(bm, [1, *A[1:]])
    assert first_differs.num_computed_tokens == 0
    second_differs = admitted(bm, [*A[:4], 1, 2, 3, 4, *A[8:]])
    assert second_differs.num_computed_tokens == 4
    # A's second block at the front: same tokens, different parent, so no hit.
    moved = admitted(bm, A[4:8] + A[4:8] + [5])
    assert moved.num_computed_tokens == 0
    assert moved.num_cached_tokens == 0


def test_last_prompt_token_is_never_served_from_cache():
    bm = BlockManager(16, BS, enable_prefix_caching=True)
    computed(bm, admitted(bm, A))
    # Exactly two full cached blocks: the second holds the last token, so only one hit.
    exact = admitted(bm, A[:8])
    assert exact.num_computed_tokens == 4
    one_more = admitted(bm, [*A[:8], 999])
    assert one_more.num_computed_tokens == 8


def test_only_computed_full_blocks_are_shared():
    bm = BlockManager(16, BS, enable_prefix_caching=True)
    a = admitted(bm, A)
    assert admitted(bm, A).num_computed_tokens == 0  # allocated, not computed yet
    computed(bm, a, num_tokens=6)  # one full block computed
    assert admitted(bm, A).num_computed_tokens == 4
    computed(bm, a)
    assert admitted(bm, A).num_computed_tokens == 8


def test_no_sharing_when_prefix_caching_is_off():
    bm = BlockManager(16, BS, enable_prefix_caching=False)
    a = computed(bm, admitted(bm, A))
    b = admitted(bm, A)
    assert b.num_computed_tokens == 0
    assert not set(a.block_table) & set(b.block_table)


def test_freed_cached_blocks_are_reused_from_the_free_list():
    bm = BlockManager(4, BS, enable_prefix_caching=True)
    a = computed(bm, admitted(bm, A))
    cached = a.block_table[:2]
    bm.free(a)
    assert bm.num_free_blocks == 4  # cached blocks are still free blocks
    b = admitted(bm, A)
    assert b.block_table[:2] == cached
    assert b.num_computed_tokens == 8
    assert bm.num_free_blocks == 1
    # A pool that can hold the prompt only by counting its cached blocks as free:
    # 3 blocks needed, 2 of them hits that are themselves in the free list.
    bm.free(b)
    full = make_seq([*A, 1, 2, 3, 4, 5, 6, 7])  # 17 tokens, 5 blocks: does not fit
    assert not bm.allocate(full)
    assert bm.num_free_blocks == 4


def test_lru_eviction_takes_the_least_recently_freed_cached_block():
    bm = BlockManager(4, BS, enable_prefix_caching=True)
    a, b = list(range(10, 14)), list(range(20, 24))
    for tokens in (a, b):  # a freed first, then b
        bm.free(computed(bm, admitted(bm, tokens)))
    held = [admitted(bm, [t] * 4) for t in (1, 2)]  # take the two never-used blocks
    assert bm.num_free_blocks == 2
    assert len(bm.cached_blocks) == 2
    evicting = admitted(bm, [3] * 4)  # one block: a's, the least recently freed
    assert len(bm.cached_blocks) == 1
    for seq in (*held, evicting):
        bm.free(seq)
    assert admitted(bm, [*b, 0]).num_computed_tokens == 4  # b's block survived
    assert admitted(bm, [*a, 0]).num_computed_tokens == 0  # a's hash is gone


def test_eviction_removes_the_hash_from_the_evicted_block():
    bm = BlockManager(1, BS, enable_prefix_caching=True)
    a = computed(bm, admitted(bm, [1, 2, 3, 4]))
    block = a.block_table[0]
    assert bm.blocks[block].block_hash is not None
    bm.free(a)
    other = admitted(bm, [5, 6, 7, 8])
    assert other.block_table == [block]
    assert bm.blocks[block].block_hash is None
    assert bm.cached_blocks == {}


def test_a_sequence_tail_is_evicted_before_its_head():
    bm = BlockManager(3, BS, enable_prefix_caching=True)
    a = computed(bm, admitted(bm, list(range(12))))  # 3 full blocks, all named
    head, tail = a.block_table[:2], a.block_table[2]
    bm.free(a)
    other = admitted(bm, [7] * 4)
    assert other.block_table == [tail]
    bm.free(other)
    again = admitted(bm, list(range(9)))
    assert again.block_table[:2] == head
    assert again.num_computed_tokens == 8


def test_blocks_are_taken_consecutively_when_the_next_one_is_free():
    bm = BlockManager(8, BS, enable_prefix_caching=True)
    a = admitted(bm, [1] * 4)
    admitted(bm, [2] * 4)
    c = admitted(bm, [3] * 16)
    d = admitted(bm, [4] * 8)
    assert (a.block_table, c.block_table, d.block_table) == ([0], [2, 3, 4, 5], [6, 7])
    for seq in (c, a, d):
        bm.free(seq)  # LRU order of the free list: 5, 4, 3, 2, 0, 7, 6
    assert list(bm.free_blocks) == [5, 4, 3, 2, 0, 7, 6]
    assert admitted(bm, [5] * 8).block_table == [5, 6]  # 6 follows 5, though 4 is older
    assert admitted(bm, [6] * 8).block_table == [4, 3]  # 5 is taken: back to LRU order


def test_a_free_neighbour_holding_a_cached_prefix_is_not_taken_out_of_lru_order():
    """A new request must not evict a recently freed prefix (say a book's first block,
    which would make the whole cached book useless) while older free blocks exist."""
    bm = BlockManager(7, BS, enable_prefix_caching=True)
    p = admitted(bm, [1] * 4)
    book = admitted(bm, [2] * 4)
    admitted(bm, [3] * 16)
    u = admitted(bm, [4] * 4)
    assert (p.block_table, book.block_table, u.block_table) == ([0], [1], [6])
    bm.free(p)
    bm.free(u)
    bm.free(computed(bm, book))  # free list, oldest first: 0, 6, 1 (cached)
    other = admitted(bm, [5] * 8)
    assert other.block_table == [0, 6]
    bm.free(other)
    assert admitted(bm, [2] * 4 + [9]).num_computed_tokens == 4  # the book still hits
