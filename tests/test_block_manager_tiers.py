"""BlockManager bookkeeping for the lower KV tiers (host memory, disk), on hand-built
Sequences: which evictions are saved, which prefix blocks are restored and into which
blocks, what is refused, a hybrid model's state checkpoints going down with their blocks,
and the scheduler sending sequences of failed restores back.

The lower tier here is a plain set of hashes: the block manager only asks it what it
holds; the copies themselves are tested in test_kv_tiers.py. Block size 4 throughout."""

from tests.test_block_manager import BS, admitted, computed, make_seq
from tome.engine.block_manager import BlockManager
from tome.engine.scheduler import Scheduler
from tome.engine.sequence import SequenceStatus
from tome.engine.state_checkpoints import StateCheckpoints

A = list(range(100, 113))  # 13 tokens: three full blocks and one token


def tiered(num_blocks: int) -> tuple[BlockManager, set[bytes]]:
    bm = BlockManager(num_blocks, BS, enable_prefix_caching=True)
    lower: set[bytes] = set()
    bm.lower_tiers = lower
    return bm, lower


def save_evicted(bm: BlockManager, lower: set[bytes]) -> list[tuple[int, bytes]]:
    """What the engine does with the step's swaps: evicted blocks land in the lower tier."""
    swaps = bm.take_swaps()
    lower.update(block_hash for _, block_hash in swaps.outs)
    return swaps.outs


def evict_all(bm: BlockManager, lower: set[bytes]) -> list[tuple[int, bytes]]:
    """Fill the whole pool with unrelated tokens, then release it."""
    filler = admitted(bm, [7] * (bm.num_blocks * BS))
    bm.free(filler)
    return save_evicted(bm, lower)


def test_without_lower_tiers_nothing_is_saved_or_restored():
    bm = BlockManager(4, BS, enable_prefix_caching=True)
    bm.free(computed(bm, admitted(bm, A)))
    bm.free(admitted(bm, [7] * 16))  # evicts A's three named blocks
    assert not bm.take_swaps()
    assert admitted(bm, A).num_computed_tokens == 0


def test_evicting_a_named_block_records_its_save_and_unnamed_reuse_does_not():
    bm, _ = tiered(4)
    a = computed(bm, admitted(bm, A))
    named = {bm.blocks[b].block_hash: b for b in a.block_table[:3]}
    bm.free(a)
    admitted(bm, [7] * 4)  # the LRU free block: A's unnamed tail
    assert not bm.take_swaps()
    admitted(bm, [8] * 12)  # three more: A's named blocks, which must be saved first
    outs = bm.take_swaps().outs
    assert sorted(outs) == sorted((b, h) for h, b in named.items())
    assert bm.cached_blocks == {}
    assert not bm.take_swaps()  # taken once


def test_a_prefix_in_the_lower_tier_is_restored_into_fresh_blocks():
    bm, lower = tiered(5)
    a = computed(bm, admitted(bm, A))
    hashes = list(a.block_hashes[:3])
    bm.free(a)
    evict_all(bm, lower)
    assert set(hashes) <= lower
    again = admitted(bm, A)
    assert again.num_computed_tokens == 12
    assert again.num_cached_tokens == 12
    assert bm.device_hit_tokens == 0
    ins = bm.take_swaps().ins
    assert ins == list(zip(hashes, again.block_table[:3], strict=True))
    # Named at once: a second request in the same step shares the restored blocks.
    twin = admitted(bm, A[:9])
    assert twin.block_table[:2] == again.block_table[:2]
    assert bm.blocks[again.block_table[0]].ref_count == 2
    assert bm.device_hit_tokens == 8
    assert not bm.take_swaps().ins  # shared, not restored twice


def test_a_prefix_may_begin_on_the_device_and_continue_below():
    bm, lower = tiered(5)
    a = computed(bm, admitted(bm, A))
    table, hashes = list(a.block_table), a.block_hashes
    bm.free(a)  # free list, oldest first: the unused block, then A's blocks tail first
    takers = [admitted(bm, [t] * 4) for t in range(1, 5)]  # all but A's head
    assert save_evicted(bm, lower) == [(table[2], hashes[2]), (table[1], hashes[1])]
    for seq in takers:
        bm.free(seq)
    again = admitted(bm, A)
    assert again.num_computed_tokens == 12
    assert again.block_table[0] == table[0]
    assert bm.device_hit_tokens == 4
    ins = bm.take_swaps().ins
    assert ins == [(hashes[1], again.block_table[1]), (hashes[2], again.block_table[2])]


def test_the_prefix_stops_at_the_first_block_no_tier_holds():
    bm, lower = tiered(4)
    a = computed(bm, admitted(bm, A))
    first, second, third = a.block_hashes[:3]
    bm.free(a)
    evict_all(bm, lower)
    lower.discard(second)
    again = admitted(bm, A)
    assert again.num_computed_tokens == 4
    assert [h for h, _ in bm.take_swaps().ins] == [first]
    assert third in lower


def test_an_evicted_blocks_checkpoint_goes_down_with_it_unless_pinned():
    bm, lower = tiered(4)
    bm.state_checkpoints = checkpoints = StateCheckpoints(range(10, 13))
    lower_states: set[bytes] = set()
    bm.lower_states = lower_states
    a = computed(bm, admitted(bm, A))
    _, second, third = a.block_hashes[:3]
    slots = {}
    for block_hash in (second, third):
        slots[block_hash] = checkpoints.reserve(a)
        checkpoints.commit(slots[block_hash], block_hash, a)
    checkpoints.pin(second)  # a named context's: it stays in memory
    bm.free(a)
    bm.free(admitted(bm, [7] * 16))  # evicts A's blocks
    swaps = bm.take_swaps()
    assert swaps.state_outs == [(slots[third], third)]
    assert (second in checkpoints, third in checkpoints, checkpoints.num_free) == (True, False, 2)
    lower.update(block_hash for _, block_hash in swaps.outs)
    lower_states.add(third)
    # The hit may end where only a lower tier holds the state.
    assert admitted(bm, A).num_computed_tokens == 12


def test_restores_need_free_blocks_and_a_refusal_changes_nothing():
    bm, lower = tiered(4)
    bm.free(computed(bm, admitted(bm, A)))
    evict_all(bm, lower)
    hog = admitted(bm, [9] * 4)  # 3 blocks left; A needs 4 (3 restored, 1 new)
    assert not bm.allocate(make_seq(A))
    assert not bm.take_swaps()
    assert bm.num_free_blocks == 3
    bm.free(hog)
    assert admitted(bm, A).num_computed_tokens == 12


def test_a_block_restored_and_evicted_again_in_one_step_is_neither_restored_nor_saved():
    bm, lower = tiered(4)
    bm.free(computed(bm, admitted(bm, A)))
    evict_all(bm, lower)
    again = admitted(bm, A)
    restored = again.block_table[:3]
    bm.free(again)  # a preemption in the same step, before any copy was made
    admitted(bm, [5] * 16)  # evicts the restored blocks, which hold nothing yet
    swaps = bm.take_swaps()
    assert swaps.ins == []
    assert not set(restored) & {b for b, _ in swaps.outs}
    assert not set(again.block_hashes) & set(bm.cached_blocks)


def test_sequences_holding_a_failed_restore_go_back_to_waiting():
    bm, lower = tiered(8)
    bm.free(computed(bm, admitted(bm, A)))
    evict_all(bm, lower)
    sched = Scheduler(bm, max_num_batched_tokens=64, max_num_seqs=4)
    restoring, other = make_seq(A), make_seq([9] * 6)
    sched.add(restoring)
    sched.add(other)
    batch = sched.schedule()
    assert batch.seqs == [restoring, other]
    damaged_hash, damaged_block = bm.take_swaps().ins[1]
    kept = sched.recompute_lost(batch, {damaged_block})
    assert (kept.seqs, kept.num_new_tokens) == ([other], [6])
    assert restoring.status is SequenceStatus.WAITING
    assert restoring.block_table == []
    assert bm.blocks[damaged_block].block_hash is None
    assert damaged_hash not in bm.cached_blocks
    # Retried, it keeps the block restored before the damaged one and computes the rest.
    lower.discard(damaged_hash)  # the tier forgets a file it could not read
    retry = sched.schedule()
    assert restoring in retry.seqs
    assert restoring.num_computed_tokens == 4
